"""Config agreement at start-up and state agreement when debugging, on 2 gloo ranks."""

from __future__ import annotations

import pytest
import torch

from metareid.distributed import check_config_consistency, check_same_across_ranks

pytestmark = pytest.mark.distributed


def _checks(ctx, out):
    r = ctx.rank
    config = {"lr": 3.5e-4, "sources": ["a", "b"], "seed": 1}
    check_config_consistency(config)
    check_config_consistency(dict(reversed(config.items())))  # key order does not matter

    differing = {**config, "lr": 3.5e-4 * (r + 1), **({"extra": True} if r else {})}
    with pytest.raises(ValueError) as info:
        check_config_consistency(differing)
    message = str(info.value)
    assert (
        "differing keys: extra (rank 0: <missing>, rank 1: true); lr (rank 0: 0.00035, rank 1: 0.0007)"
        in message
    )
    assert "seed" not in message and "sources" not in message

    with pytest.raises(TypeError, match="rank 1: config must be JSON-serialisable"):
        check_config_consistency({"device": object() if r else "cpu"})

    banks = {"memory.0": torch.eye(3), "memory.1": torch.ones(2, 2, dtype=torch.float64)}
    check_same_across_ranks(banks)
    drifted = {
        "memory.0": torch.eye(3),
        "memory.1": torch.ones(2, 2, dtype=torch.float64) + 1e-3 * r,
    }
    with pytest.raises(
        ValueError, match=r"'memory\.1' \(max \|difference\| to rank 0: 0\.001 on rank 1\)"
    ):
        check_same_across_ranks(drifted)
    check_same_across_ranks(drifted, atol=1e-2)
    nan = torch.tensor([float("nan"), 1.0])
    check_same_across_ranks({"nan": nan})
    with pytest.raises(ValueError, match="same names, shapes and dtypes on every rank"):
        check_same_across_ranks({"memory.0": torch.eye(3 + r)})


def test_configs_and_tensors_that_differ_raise_on_every_rank(run_ranks):
    run_ranks(_checks)
