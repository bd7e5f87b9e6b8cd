"""``tensorboard=True``: event files that hold what ``log.jsonl`` holds, rank 0 only."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from tiny_setup import one_thread, tiny_train_config  # noqa: F401  (autouse fixture)

from metareid.engine import TensorBoardLog, TrainConfig, Trainer, load_checkpoint
from metareid.engine.results import EvalResult, TrainResult

EventAccumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator"
).EventAccumulator


def _events(run: Path):
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _scalars(acc, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _records(run: Path, kind: str) -> list[dict]:
    lines = (run / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_scalars_are_those_of_the_log(tiny_bench, tmp_path):
    run = tmp_path / "run"
    cfg = tiny_train_config(tiny_bench, run, epochs=2, eval_every=1, tensorboard=True)
    result = Trainer(cfg, log=lambda s: None).fit()
    acc = _events(run)
    iters = _records(run, "iter")
    assert [r["iter"] for r in iters] == [1, 2, 3, 4]
    for name in ("loss", "meta_train_loss", "meta_test_loss", "meta_test_domain", "lr"):
        expected = [(r["iter"], pytest.approx(r[name], rel=1e-6)) for r in iters]
        assert _scalars(acc, f"train/{name}") == expected, name
    assert {v for _, v in _scalars(acc, "train/meta_test_domain")} <= {0.0, 1.0}
    epochs = _records(run, "epoch")
    for name in ("loss", "meta_train_loss", "iters_per_second", "seconds", "lr"):
        expected = [(r["epoch"] + 1, pytest.approx(r[name], rel=1e-6)) for r in epochs]
        assert _scalars(acc, f"epoch/{name}") == expected, name
    assert "epoch/meta_test_domain" not in acc.Tags()["scalars"]
    for name in ("mAP", "rank1", "rank5", "rank10", "mINP"):
        expected = [
            (e.epoch, pytest.approx(getattr(e, name), rel=1e-6)) for e in result.evaluations
        ]
        assert _scalars(acc, f"eval/{name}") == expected, name
    assert [e.epoch for e in result.evaluations] == [1, 2]
    assert "config/text_summary" in acc.Tags()["tensors"]
    assert acc.Tags()["images"] == []  # plots=False: no pictures


def test_a_resumed_run_supersedes_what_the_killed_run_wrote(tiny_bench, tmp_path, monkeypatch):
    run = tmp_path / "run"
    cfg = tiny_train_config(tiny_bench, run, epochs=2, tensorboard=True)
    calls = {"n": 0}
    original = Trainer._iteration

    def dies_after_iteration_three(self, batches):
        calls["n"] += 1
        if calls["n"] == 4:  # iteration 3 (the first of epoch 2) was logged: stale
            raise KeyboardInterrupt
        return original(self, batches)

    monkeypatch.setattr(Trainer, "_iteration", dies_after_iteration_three)
    killed = Trainer(cfg, log=lambda s: None)
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    killed.callbacks[-1].writer.flush()  # what a process killed later would have written
    monkeypatch.setattr(Trainer, "_iteration", original)
    assert load_checkpoint(run / "last.pt")["iteration"] == 2
    Trainer(cfg, log=lambda s: None).fit(resume=True)
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2
    losses = _scalars(_events(run), "train/loss")
    expected = [(r["iter"], pytest.approx(r["loss"], rel=1e-6)) for r in _records(run, "iter")]
    assert losses == expected and [s for s, _ in losses] == [1, 2, 3, 4]


def _view(tmp_path: Path, is_main: bool = True, **cfg) -> SimpleNamespace:
    config = TrainConfig(
        sources=("synthetic:0", "synthetic:1"), target="synthetic:2", iters_per_epoch=2, **cfg
    )
    return SimpleNamespace(
        cfg=config, is_main=is_main, output_dir=tmp_path, iteration=0, epoch=0, epoch_lr=0.1
    )


def _png(path: Path, color: tuple[int, int, int]) -> np.ndarray:
    from PIL import Image

    pixels = np.zeros((6, 10, 3), dtype=np.uint8) + np.array(color, dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def test_pictures_drawn_by_this_run_become_images(tmp_path):
    (tmp_path / "tsne.png").write_bytes(b"an earlier run's picture, not rewritten")
    view = _view(tmp_path)
    cb = TensorBoardLog()
    cb.on_fit_start(view, resumed=False)
    curves = _png(tmp_path / "curves.png", (255, 0, 0))  # drawn by this run
    retrieval = _png(tmp_path / "retrieval.png", (0, 0, 255))
    view.epoch = 3
    cb.on_fit_end(view, TrainResult(*(EvalResult(3, 1.0, 2.0, 3.0, 4.0, 0.5),) * 2, [], tmp_path))
    assert cb.writer is None  # closed
    acc = _events(tmp_path)
    assert sorted(acc.Tags()["images"]) == ["pictures/curves", "pictures/retrieval"]
    from io import BytesIO

    from PIL import Image

    for tag, pixels in (("pictures/curves", curves), ("pictures/retrieval", retrieval)):
        (event,) = acc.Images(tag)
        assert (event.step, event.width, event.height) == (3, 10, 6)
        decoded = np.asarray(Image.open(BytesIO(event.encoded_image_string)).convert("RGB"))
        np.testing.assert_array_equal(decoded, pixels)


def test_a_fresh_run_removes_earlier_event_files_and_a_resumed_one_keeps_them(tmp_path):
    folder = tmp_path / "tensorboard"
    folder.mkdir()
    old = folder / "events.out.tfevents.1.old"
    other = folder / "notes.txt"
    old.write_bytes(b"")
    other.write_text("not an event file")
    cb = TensorBoardLog()
    cb.on_fit_start(_view(tmp_path), resumed=True)
    cb._close()
    assert old.is_file()
    cb.on_fit_start(_view(tmp_path), resumed=False)
    cb._close()
    assert not old.exists() and other.is_file()
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1


def test_only_rank_0_writes(tmp_path):
    view = _view(tmp_path, is_main=False, log_every=1)
    _png(tmp_path / "curves.png", (0, 255, 0))
    cb = TensorBoardLog()
    cb.on_fit_start(view, resumed=False)
    cb.on_epoch_start(view)
    cb.on_iteration_end(view, 0, {"loss": 1.0})
    cb.on_epoch_end(view, {"kind": "epoch", "epoch": 0, "loss": 1.0})
    cb.on_epoch_complete(view)
    res = EvalResult(1, 1.0, 2.0, 3.0, 4.0, 0.5)
    cb.on_evaluation(view, res)
    cb.on_fit_end(view, TrainResult(res, res, [res], tmp_path))
    assert cb.writer is None and not (tmp_path / "tensorboard").exists()


def test_iterations_are_written_at_the_cadence_of_the_log(tmp_path):
    view = _view(tmp_path, log_every=2, epochs=1)
    view.cfg.iters_per_epoch = 5
    cb = TensorBoardLog()
    cb.on_fit_start(view, resumed=False)
    for i in range(5):
        view.iteration = i + 1
        cb.on_iteration_end(view, i, {"loss": float(i)})
    cb._close()
    assert _scalars(_events(tmp_path), "train/loss") == [(2, 1.0), (4, 3.0), (5, 4.0)]


def test_a_missing_tensorboard_fails_before_anything_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    # The data folder does not exist: the error comes before the datasets are read.
    cfg = tiny_train_config(tmp_path / "no-data", tmp_path / "run", tensorboard=True)
    with pytest.raises(ImportError, match=r'pip install "metareid\[tensorboard\]"'):
        Trainer(cfg, log=lambda s: None)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ImportError, match=r"tensorboard=True \(--tensorboard\)"):
        TensorBoardLog()


def test_folder_must_be_a_name():
    with pytest.raises(ValueError, match="folder must be a non-empty folder name, got ''"):
        TensorBoardLog("")


def test_tensorboard_flag_and_config_key(tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    TrainConfig.add_arguments(parser)
    base = _view(tmp_path).cfg
    assert base.tensorboard is False
    assert TrainConfig.from_args(parser.parse_args(["--tensorboard"]), base).tensorboard is True
    with pytest.raises(ValueError, match="tensorboard must be a bool, got 'yes'"):
        TrainConfig.from_dict({**base.to_dict(), "tensorboard": "yes"})


@pytest.mark.slow
def test_the_pictures_of_a_run_with_plots_are_images(tiny_bench, tmp_path):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    cfg = tiny_train_config(tiny_bench, run, plots=True, tensorboard=True)
    Trainer(cfg, log=lambda s: None).fit()
    images = _events(run).Tags()["images"]
    assert sorted(images) == ["pictures/curves", "pictures/retrieval", "pictures/tsne"]
