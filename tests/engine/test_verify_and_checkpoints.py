"""``verify_data``: bad images stop the run before training; ``save_checkpoints=False``:
a run that leaves no ``last.pt``."""

from __future__ import annotations

import shutil

import pytest

from metareid.data import BadImageError
from metareid.engine import Trainer
from metareid.engine.callbacks import Checkpointing


def _bench_copy(tiny_bench, tmp_path):
    """A private copy of the tiny benchmark, to spoil."""
    return shutil.copytree(tiny_bench, tmp_path / "bench")


def test_verify_data_stops_before_training_and_names_every_bad_file(
    tiny_bench, tiny_config, tmp_path
):
    root = _bench_copy(tiny_bench, tmp_path)
    out = tmp_path / "run"
    clean = tiny_config(root, out, verify_data=True)
    lines: list[str] = []
    trainer = Trainer(clean, log=lines.append)
    count = len(trainer.sources.datasets[0].train) + len(trainer.sources.datasets[1].train)
    count += len(trainer.target.query) + len(trainer.target.gallery)
    assert lines[0].startswith(f"verify_data: decoded the {count} images of the sources and")
    assert lines[0].endswith(": all decode")

    corrupt = trainer.sources.datasets[1].train[3].path  # a source's training image
    empty = trainer.target.gallery[0].path  # the target's gallery
    with open(corrupt, "wb") as f:
        f.write(b"garbage" * 20)
    open(empty, "wb").close()
    with pytest.raises(BadImageError) as info:
        Trainer(clean, log=lines.append)
    message = str(info.value)
    assert f"2 of {count} images cannot be decoded" in message
    assert f"  {corrupt}: cannot identify image file" in message
    assert f"  {empty}: empty file (0 bytes)" in message
    assert "training has not started" in message and info.value.path in (corrupt, empty)
    assert lines[-1].endswith(": 2 cannot be decoded")
    assert not out.exists()  # no log, no config, no checkpoint
    Trainer(tiny_config(root, out), log=lines.append)  # the check is off by default


def test_no_checkpoints_leaves_logs_and_results_only(tiny_bench, tiny_config, tmp_path):
    out = tmp_path / "run"
    lines: list[str] = []
    cfg = tiny_config(tiny_bench, out, save_checkpoints=False)
    result = Trainer(cfg, log=lines.append).fit(resume=True)
    assert f"no checkpoint at {out / 'last.pt'}: starting from scratch" in lines
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "log.jsonl"]
    assert result.final.epoch == cfg.epochs

    (out / "last.pt").write_bytes(b"an earlier run's")  # left alone, and said so
    lines.clear()
    trainer = Trainer(cfg, log=lines.append)
    (checkpointing,) = [cb for cb in trainer.callbacks if isinstance(cb, Checkpointing)]
    checkpointing.on_fit_start(trainer, False)
    checkpointing.on_epoch_complete(trainer)
    assert (out / "last.pt").read_bytes() == b"an earlier run's"
    assert f"save_checkpoints is off: {out / 'last.pt'} is from an earlier run, left as it is" in (
        lines
    )


def test_both_switches_are_flags_and_may_change_on_resume(tiny_bench, tiny_config, tmp_path):
    from metareid.cli import build_parser
    from metareid.engine import TrainConfig

    args = build_parser().parse_args(["train", "--verify-data", "--no-save-checkpoints"])
    cfg = TrainConfig.from_args(args)
    assert cfg.verify_data is True and cfg.save_checkpoints is False
    assert TrainConfig().verify_data is False and TrainConfig().save_checkpoints is True
    with pytest.raises(ValueError, match="save_checkpoints must be a bool, got 'no'"):
        TrainConfig(save_checkpoints="no")  # type: ignore[arg-type]

    out = tmp_path / "run"
    Trainer(tiny_config(tiny_bench, out), log=lambda s: None).fit()
    lines: list[str] = []
    later = tiny_config(tiny_bench, out, save_checkpoints=False, verify_data=True)
    Trainer(later, log=lines.append).fit(resume=True)
    assert any(line.startswith("resumed from") for line in lines)


def test_verify_data_reads_every_split_of_the_final_targets(tiny_bench, tiny_config, tmp_path):
    import fake_trees as ft

    root = _bench_copy(tiny_bench, tmp_path)
    ft.prid(root / "prid", num_paired=200, cam_a=385, cam_b=749, images=True)
    # ids 201-749 of cam_b are in the gallery of every split
    bad = root / "prid" / "prid_2011" / "single_shot" / "cam_b" / "person_0700.png"
    bad.write_bytes(b"")
    cfg = tiny_config(root, tmp_path / "run", verify_data=True, final_targets=("prid",))
    with pytest.raises(BadImageError, match=f"  {bad}: empty file"):
        Trainer(cfg, log=lambda s: None)
