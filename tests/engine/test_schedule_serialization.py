from __future__ import annotations

import pytest
import torch

from metareid import serialization as ckpt_mod
from metareid.engine import (
    load_checkpoint,
    save_checkpoint,
    warmup_multistep_factor,
    warmup_multistep_scheduler,
)


def test_schedule_matches_the_paper():
    # 3.5e-4 * 0.01 at epoch 0, linear to 3.5e-4 at epoch 10, x0.1 at 30 and 50.
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=3.5e-4)
    sched = warmup_multistep_scheduler(opt)
    lrs = []
    for _ in range(60):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(3.5e-6)
    assert lrs[5] == pytest.approx(3.5e-6 + 0.5 * (3.5e-4 - 3.5e-6))
    assert lrs[10] == pytest.approx(3.5e-4) and lrs[29] == pytest.approx(3.5e-4)
    assert lrs[30] == pytest.approx(3.5e-5) and lrs[50] == pytest.approx(3.5e-6)
    assert warmup_multistep_factor(59) == pytest.approx(0.01)


def test_checkpoint_round_trip_weights_only(tmp_path):
    state = {"w": torch.arange(3.0), "epoch": 2, "rng": torch.get_rng_state(), "t": (1, "a")}
    path = save_checkpoint(state, tmp_path / "sub" / "last.pt")
    back = load_checkpoint(path)
    assert torch.equal(back["w"], state["w"]) and back["epoch"] == 2 and back["t"] == (1, "a")


def test_crash_while_writing_leaves_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1}, path)

    def crashing_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epoch": 2}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        load_checkpoint(tmp_path / "nope.pt")
