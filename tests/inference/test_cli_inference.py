"""`metareid extract / search / export / evaluate` on a tiny trained checkpoint."""

from __future__ import annotations

import csv
import json
import shutil
import warnings

import numpy as np
import pytest
import torch

from metareid.cli import main
from metareid.engine import Trainer, load_checkpoint, save_checkpoint
from metareid.inference import load_embeddings, topk_search

from .conftest import tiny_config


@pytest.fixture
def no_downloads(monkeypatch):
    from metareid.models import _weights

    def refuse(*args, **kwargs):
        raise AssertionError("pretrained weights were requested")

    monkeypatch.setattr(_weights, "fetch_state_dict", refuse)
    monkeypatch.setattr(_weights, "_download", refuse)


@pytest.fixture
def folders(tiny_run, tmp_path):
    query, gallery = tmp_path / "query", tmp_path / "gallery"
    for folder, records in ((query, tiny_run.target.query), (gallery, tiny_run.target.gallery)):
        folder.mkdir()
        for rec in records:
            shutil.copy(rec.path, folder / rec.path.split("/")[-1])
    return query, gallery


def test_extract_search_export_round_trip(checkpoint, folders, tmp_path, capsys, no_downloads):
    query, gallery = folders
    ckpt = str(checkpoint)
    assert (
        main(
            [
                "extract",
                "--checkpoint",
                ckpt,
                "--images",
                str(gallery),
                "--out",
                str(tmp_path / "g.npz"),
                "--batch-size",
                "4",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "embeddings of dimension 512" in capsys.readouterr().out
    emb = load_embeddings(tmp_path / "g.npz")
    assert emb.names == sorted(p.name for p in gallery.iterdir())
    assert emb.features.shape == (len(emb.names), 512) and emb.root == str(gallery)
    assert emb.metadata["input"]["height"] == 32

    out_csv = tmp_path / "ranks.csv"
    assert (
        main(
            [
                "search",
                "--checkpoint",
                ckpt,
                "--query",
                str(query),
                "--gallery",
                str(gallery),
                "--topk",
                "3",
                "--out",
                str(out_csv),
                "--device",
                "cpu",
                "--grid",
                str(tmp_path / "grid.png"),
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(out_csv.open()))
    q_emb_names = sorted(p.name for p in query.iterdir())
    assert len(rows) == 3 * len(q_emb_names)
    assert (tmp_path / "grid.png").is_file()

    # the same lists from the saved embeddings, and topk_search's order
    assert (
        main(
            [
                "extract",
                "--checkpoint",
                ckpt,
                "--images",
                str(query),
                "--out",
                str(tmp_path / "q.npz"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    out_json = tmp_path / "ranks.json"
    assert (
        main(
            [
                "search",
                "--query",
                str(tmp_path / "q.npz"),
                "--gallery",
                str(tmp_path / "g.npz"),
                "--topk",
                "3",
                "--out",
                str(out_json),
            ]
        )
        == 0
    )
    results = json.loads(out_json.read_text())
    q_emb = load_embeddings(tmp_path / "q.npz")
    expected = topk_search(torch.from_numpy(q_emb.features), torch.from_numpy(emb.features), 3)
    for q, entry in enumerate(results):
        assert entry["query"] == q_emb.names[q]
        assert [r["gallery"] for r in entry["results"]] == [
            emb.names[i] for i in expected.indices[q].tolist()
        ]
        assert [r["gallery"] for r in entry["results"]] == [
            r["gallery"] for r in rows[3 * q : 3 * q + 3]
        ]

    assert (
        main(
            [
                "export",
                "--checkpoint",
                ckpt,
                "--format",
                "torchscript",
                "--out",
                str(tmp_path / "m.torchscript"),
            ]
        )
        == 0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        net = torch.jit.load(str(tmp_path / "m.torchscript"))
    assert json.loads((tmp_path / "m.torchscript.json").read_text())["output"]["dim"] == 512
    assert net(torch.zeros(2, 3, 32, 16)).shape == (2, 512)


def test_cli_bad_inputs(checkpoint, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no image file"):
        main(
            [
                "extract",
                "--checkpoint",
                str(checkpoint),
                "--images",
                str(tmp_path / "empty"),
                "--out",
                str(tmp_path / "x.npz"),
                "--device",
                "cpu",
            ]
        )
    assert not (tmp_path / "x.npz").exists()
    with pytest.raises(ValueError, match="--checkpoint is needed"):
        main(
            [
                "search",
                "--query",
                str(tmp_path / "empty"),
                "--gallery",
                str(tmp_path / "empty"),
                "--out",
                str(tmp_path / "r.csv"),
            ]
        )
    with pytest.raises(FileNotFoundError, match=r"neither a folder nor a \.npz"):
        main(
            [
                "search",
                "--checkpoint",
                str(checkpoint),
                "--query",
                str(tmp_path / "nope"),
                "--gallery",
                str(tmp_path / "empty"),
                "--out",
                str(tmp_path / "r.csv"),
            ]
        )
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.ones(1)}}, foreign)
    with pytest.raises(ValueError, match="not a metareid checkpoint"):
        main(["export", "--checkpoint", str(foreign), "--out", str(tmp_path / "m.pt")])


def test_evaluate_needs_only_the_checkpoint_and_the_target(
    tiny_run, tiny_bench, checkpoint, tmp_path, capsys, no_downloads
):
    """Issue 9: sources that do not exist, ImageNet weights asked for, no download."""
    state = load_checkpoint(checkpoint)
    state["config"] = {
        **state["config"],
        "sources": ["market1501", "dukemtmc"],
        "pretrained": "imagenet",
        "data_dir": str(tmp_path / "no-data-here"),
        "some_future_key": 1,
    }
    moved = save_checkpoint(state, tmp_path / "moved.pt")
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(moved),
                "--data-dir",
                str(tiny_bench),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    table = capsys.readouterr().out

    trainer = Trainer(tiny_config(tiny_bench, tmp_path / "ref"), log=lambda _: None)
    trainer.model.load_state_dict(load_checkpoint(checkpoint)["model"])
    trainer.epoch = 1
    ref = trainer.evaluate()
    assert (
        f"| {moved} (epoch 1) | synthetic:2 | {ref.mAP:.1f} | {ref.rank1:.1f} | "
        f"{ref.rank5:.1f} | {ref.rank10:.1f} | {ref.mINP:.1f} |"
    ) in table

    from metareid.inference import evaluate_checkpoint

    for flip, rerank in ((False, False), (True, True)):
        trainer.cfg.flip_eval, trainer.cfg.rerank = flip, rerank
        got, spec = evaluate_checkpoint(
            moved, "synthetic:2", tiny_bench, device="cpu", flip=flip, rerank=rerank
        )
        assert spec == "synthetic:2" and got == trainer.evaluate()
    with pytest.raises(FileNotFoundError):
        evaluate_checkpoint(moved, device="cpu")  # the config's data_dir does not exist
    assert np.isfinite(ref.mAP)
