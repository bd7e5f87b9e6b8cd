"""The `metareid` console command."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from metareid.cli import build_parser, main


def test_train_then_evaluate_from_the_command_line(tiny_bench, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = {
        "data_dir": str(tiny_bench),
        "sources": ["synthetic:0", "synthetic:1"],
        "target": "synthetic:2",
        "arch": "resnet18",
        "pretrained": "none",
        "height": 32,
        "width": 16,
        "num_identities": 2,
        "num_instances": 2,
        "iters_per_epoch": 2,
        "warmup_epochs": 0,
        "milestones": [],
        "eval_every": 0,
        "workers": 0,
        "output_dir": str(out),
        "progress": False,
        "plots": False,
    }
    path = tmp_path / "run.json"
    path.write_text(json.dumps(cfg))
    assert main(["train", "--config", str(path), "--epochs", "1", "--method", "baseline"]) == 0
    printed = capsys.readouterr().out
    assert "| baseline -> synthetic:2 |" in printed
    stored = json.loads((out / "config.json").read_text())
    assert stored["epochs"] == 1 and stored["method"] == "baseline"  # flag beat the file

    assert main(["evaluate", "--checkpoint", str(out / "last.pt")]) == 0
    table = capsys.readouterr().out
    assert "| checkpoint | target | mAP |" in table and "(epoch 1) | synthetic:2 |" in table


def test_dump_config_and_bad_flags(capsys):
    assert main(["train", "--dump-config", "--epochs", "5", "--no-triplet"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["epochs"] == 5 and cfg["triplet"] is False
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--method", "maml"])
    with pytest.raises(ValueError, match="epochs must be an int >= 1"):
        main(["train", "--dump-config", "--epochs", "0"])


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("metareid")
    assert script.exists() or shutil.which("metareid"), "pip install . installs `metareid`"
    exe = str(script) if script.exists() else "metareid"
    res = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True)
    assert "train" in res.stdout and "evaluate" in res.stdout


def test_module_entry_point_help():
    res = subprocess.run(
        [sys.executable, "-m", "metareid.cli", "train", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--memory-update-timing" in res.stdout and "--sample-scale" in res.stdout
