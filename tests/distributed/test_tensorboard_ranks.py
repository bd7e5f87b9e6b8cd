"""``--tensorboard`` under torchrun: rank 0 writes the event file, the other ranks nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.distributed


def _train_on_ranks(ctx, out: Path, root: str) -> None:
    import torch.utils.tensorboard as tensorboard
    from tiny_setup import tiny_train_config

    from metareid.engine import Trainer

    made = []

    class Counting(tensorboard.SummaryWriter):
        def __init__(self, *args, **kwargs):
            made.append(kwargs.get("log_dir"))
            super().__init__(*args, **kwargs)

    tensorboard.SummaryWriter = Counting  # what the callback looks up when built
    cfg = tiny_train_config(root, out / "run", tensorboard=True, epochs=1, iters_per_epoch=2)
    Trainer(cfg, log=lambda _line: None).fit()
    (out / f"rank{ctx.rank}.json").write_text(json.dumps({"writers": made}))


def test_only_rank_0_writes_tensorboard_events(run_ranks, tmp_path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tiny_setup import make_tiny_bench

    root = make_tiny_bench(tmp_path / "bench")
    out = run_ranks(_train_on_ranks, timeout=180, root=str(root))
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks[0]["writers"]) == 1 and ranks[1]["writers"] == []
    events = sorted((out / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2]
    assert [e.step for e in acc.Scalars("eval/mAP")] == [1]
