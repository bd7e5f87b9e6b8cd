"""Every protocol end to end on tiny fake trees: p1 through the example (10-split table),
m3l, p2 and p3 through `metareid train --protocol`."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import fake_trees as ft
import pytest
from tiny_setup import one_thread  # noqa: F401 (autouse fixture)

from metareid.cli import main
from metareid.data import PRID
from metareid.data.datasets import registry

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "reproduce_m3l.py"
TINY = [
    "--arch", "resnet10", "--pretrained", "none", "--height", "32", "--width", "16",
    "--num-identities", "2", "--num-instances", "2", "--epochs", "1", "--iters-per-epoch", "1",
    "--workers", "0", "--eval-batch-size", "32", "--warmup-epochs", "0", "--milestones", "5",
    "--no-plots", "--no-progress",
]  # fmt: skip


class SmallPRID(PRID):
    """PRID with 6 paired ids instead of 200, for a tree of a few images."""

    def __init__(self, root, split_id=0, **kwargs):
        super().__init__(root, split_id, num_paired=6, **kwargs)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dg_data")
    ft.market1501(root / "market1501", images=True)
    ft.dukemtmc(root / "dukemtmc", images=True)
    ft.cuhk03_old(root / "cuhk03", images=True)
    ft.cuhk03np(root / "cuhk03np", images=True)
    ft.msmt17(root / "msmt17", images=True)
    ft.cuhksysu(root / "cuhksysu", images=True)
    ft.cuhk02(root / "cuhk02", images_per_camera=1, images=True)
    ft.prid(root / "prid", num_paired=6, cam_a=8, cam_b=12, images=True)
    ft.grid(root / "grid", paired=6, distractors=4, train_per_split=3, images=True)
    ft.viper(root / "viper", ids=tuple(range(0, 12, 2)), images=True)
    ft.ilids(root / "ilids", num_ids=6, images=True)
    return root


def load_example():
    spec = importlib.util.spec_from_file_location("reproduce_m3l", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_protocol_1_end_to_end_with_ten_split_averages(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, "prid", SmallPRID)
    import metareid.engine.protocol as protocol

    calls: list[int] = []
    extract = protocol.extract_features

    def counting(*args, **kwargs):
        calls.append(1)
        return extract(*args, **kwargs)

    monkeypatch.setattr(protocol, "extract_features", counting)
    out = tmp_path / "results.json"
    summary = load_example().main(
        ["--data-dir", str(data), "--protocol", "p1", "--methods", "baseline",
         "--output-dir", str(tmp_path / "runs"), "--json", str(out), "--", *TINY]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert "protocol p1 (Protocol-1" in printed
    assert "source cuhk02:use=all: train 11 ids / 22 images / 10 cameras" in printed
    head = (
        "| method | prid mAP / R1 (10 splits) | grid mAP / R1 (10 splits) | "
        "viper mAP / R1 (10 splits) | ilids mAP / R1 (10 splits) | average mAP | average R1 |"
    )
    assert head in printed
    row = next(line for line in printed.splitlines() if line.startswith("| Baseline | "))
    assert row.count("±") == 8
    assert len(calls) == 4  # one feature extraction per target, reused by its 10 splits
    splits = summary["splits"][0]["Baseline"]  # seed 0
    assert list(splits) == ["prid", "grid", "viper", "ilids"]
    assert all(s["num_splits"] == 10 and len(s["splits"]) == 10 for s in splits.values())
    average = sum(s["mean"]["mAP"] for s in splits.values()) / 4
    assert f"| {average:.1f} |" in row
    assert json.loads(out.read_text())["splits"] == summary["splits"]
    stored = json.loads(
        (tmp_path / "runs" / "seed0" / "p1" / "baseline" / "config.json").read_text()
    )
    assert stored["protocol"] == "p1" and stored["final_targets"] == list(splits)
    assert (tmp_path / "runs" / "seed0" / "p1" / "baseline" / "final_targets.json").is_file()


@pytest.mark.parametrize(
    ("protocol", "target", "sources", "target_spec"),
    [
        ("m3l", "market1501", ["msmt17:V2", "dukemtmc", "cuhk03"], "market1501"),
        ("p2", "msmt17", ["market1501", "cuhksysu", "cuhk03np:detected"], "msmt17:V2"),
        (
            "p3",
            "cuhk03",
            ["market1501:use=all", "msmt17:V2,use=all", "cuhksysu"],
            "cuhk03np:detected",
        ),
    ],
)
def test_leave_one_out_protocols_end_to_end(
    data, tmp_path, capsys, protocol, target, sources, target_spec
):
    out = tmp_path / "run"
    args = ["train", "--protocol", protocol, "--target", target, "--data-dir", str(data)]
    assert main([*args, "--method", "baseline", "--output-dir", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert f"protocol {protocol} (" in printed
    assert f"| baseline -> {target_spec} |" in printed
    for spec in sources:
        assert f"source {spec}: train" in printed
    stored = json.loads((out / "config.json").read_text())
    assert stored["sources"] == sources and stored["target"] == target_spec
