"""Protocol presets on the command line and the `metareid datasets` statistics check."""

from __future__ import annotations

import json
from pathlib import Path

import fake_trees as ft
import pytest

from metareid.cli import main
from metareid.engine import EvalResult, TrainConfig
from metareid.engine.protocol import (
    SplitResults,
    apply_protocol,
    format_split_table,
    protocol_table,
    target_splits,
)


def test_apply_protocol_sets_and_says_what_it_chose() -> None:
    said: list[str] = []
    cfg = apply_protocol(TrainConfig(epochs=3), "p1", log=said.append)
    assert cfg.protocol == "p1" and cfg.epochs == 3
    assert cfg.sources[0] == "market1501:use=all" and cfg.target == "prid"
    assert cfg.final_targets == ("prid", "grid", "viper", "ilids")
    assert said == [
        "protocol p1 (Protocol-1: M + C2 + C3 (train + test) + CS (train) -> PRID, GRID, "
        "VIPeR, iLIDS): market1501:use=all + cuhk02:use=all + cuhk03np:detected,use=all + "
        "cuhksysu -> prid, grid, viper, ilids (each over all its splits)"
    ]
    m3l = apply_protocol(TrainConfig(), "m3l", "market1501", log=said.append)
    assert (m3l.sources, m3l.target) == (TrainConfig().sources, "market1501")
    assert apply_protocol(m3l, "custom") is m3l


def test_train_protocol_flag_dumps_the_chosen_config(capsys) -> None:
    assert main(["train", "--protocol", "p2", "--target", "msmt17", "--dump-config"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("protocol p2 (Protocol-2")
    cfg = json.loads(out[out.index("{") :])
    assert cfg["sources"] == ["market1501", "cuhksysu", "cuhk03np:detected"]
    assert cfg["target"] == "msmt17:V2" and cfg["protocol"] == "p2"
    with pytest.raises(ValueError, match="do not also give --sources"):
        main(["train", "--protocol", "p2", "--target", "msmt17", "--sources", "a", "b"])
    with pytest.raises(ValueError, match="target for protocol 'p3' must be one of"):
        main(["train", "--protocol", "p3", "--target", "dukemtmc", "--dump-config"])


def test_default_config_reads_msmt17_v2() -> None:
    assert TrainConfig().sources[0] == "msmt17:V2"


def test_target_splits_and_tables() -> None:
    assert len(target_splits("ilids")) == 10 and target_splits("grid:2") == ["grid:2"]
    assert target_splits("viper:query_camera=b")[3] == "viper:query_camera=b,split_id=3"
    a = SplitResults("prid", tuple(EvalResult(1, m, m, m, m, m) for m in (10.0, 20.0, 30.0)))
    b = SplitResults("grid", (EvalResult(1, 50.0, 60.0, 70.0, 80.0, 1.0),))
    table = format_split_table({"prid": a, "grid": b})
    assert "| prid | 3 | 20.0 ± 10.0 |" in table
    assert "| average of 2 targets | | 35.0 | 40.0 |" in table
    rows = protocol_table({"M3L": {"prid": a, "grid": b}})
    assert (
        rows.splitlines()[-1]
        == "| M3L | 20.0 ± 10.0 / 20.0 ± 10.0 | 50.0 ± 0.0 / 60.0 ± 0.0 | 35.0 | 40.0 |"
    )
    with pytest.raises(ValueError, match="metric must be one of"):
        a.mean("rank2")


def test_datasets_command_flags_a_wrong_count(tmp_path: Path, capsys) -> None:
    ft.prid(tmp_path / "prid", num_paired=200, cam_a=385, cam_b=749)
    ft.viper(tmp_path / "viper", ids=tuple(range(632)))
    assert main(["datasets", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "All counts agree with the reference numbers." in out and "MISMATCH" not in out
    assert "Not found:" in out and "market1501" in out
    for name in ("001_45.bmp", "001_90.bmp"):  # one person fewer in both cameras
        (tmp_path / "viper" / "VIPeR" / ("cam_a" if "45" in name else "cam_b") / name).unlink()
    (tmp_path / "viper" / "metareid_splits.json").unlink()
    assert main(["datasets", "--data-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "**MISMATCH** ids 315 vs 316" in out
    assert "viper: likely cause: missing files" in out
