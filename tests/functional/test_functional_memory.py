"""Tests for metareid.functional.memory against per-sample Python loops."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from reference_loops import loop_mean_update as _loop_mean_update
from reference_loops import loop_memory_init as _loop_init
from reference_loops import loop_sequential_update as _loop_sequential_update
from torch import Tensor

from metareid.functional import memory_init, memory_logits, memory_update


def _batch(
    num_ids: int = 6, batch: int = 14, dim: int = 5, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    memory = F.normalize(torch.randn(num_ids, dim, generator=gen, dtype=torch.float64), dim=1)
    features = F.normalize(torch.randn(batch, dim, generator=gen, dtype=torch.float64), dim=1)
    # uneven multiplicities, shuffled order, some ids absent
    labels = torch.tensor([3, 1, 3, 0, 3, 1, 5, 3, 0, 1, 3, 5, 1, 3])[:batch]
    return memory, features, labels


def test_memory_init_matches_loop() -> None:
    features = torch.randn(20, 4, dtype=torch.float64)
    labels = torch.arange(20) % 5
    expected = _loop_init(features, labels, 5)
    torch.testing.assert_close(memory_init(features, labels, 5), expected)


def test_memory_init_detaches_and_keeps_dtype() -> None:
    features = torch.randn(6, 3, requires_grad=True)
    out = memory_init(features, torch.tensor([0, 1, 2, 0, 1, 2]), 3)
    assert out.grad_fn is None and not out.requires_grad
    assert out.dtype == torch.float32


def test_memory_init_lists_missing_ids() -> None:
    with pytest.raises(ValueError, match=r"no sample for ids \[1, 4\]"):
        memory_init(torch.randn(3, 2), torch.tensor([0, 2, 3]), 5)


def test_memory_init_truncates_long_missing_list() -> None:
    with pytest.raises(ValueError, match=r"\(99 in total\)"):
        memory_init(torch.randn(1, 2), torch.tensor([0]), 100)


@pytest.mark.parametrize("momentum", [0.0, 0.2, 0.7, 1.0])
def test_mean_update_matches_loop(momentum: float) -> None:
    memory, features, labels = _batch()
    expected = _loop_mean_update(memory, features, labels, momentum)
    out = memory_update(memory, features, labels, momentum=momentum, update_rule="mean")
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("momentum", [0.0, 0.2, 0.7, 1.0])
def test_sequential_update_matches_loop(momentum: float) -> None:
    memory, features, labels = _batch()
    expected = _loop_sequential_update(memory, features, labels, momentum)
    out = memory_update(memory, features, labels, momentum=momentum, update_rule="sequential")
    torch.testing.assert_close(out, expected)


def test_sequential_update_p_by_k_batch() -> None:
    gen = torch.Generator().manual_seed(3)
    memory = F.normalize(torch.randn(10, 8, generator=gen), dim=1)
    labels = torch.arange(4).repeat_interleave(4)[torch.randperm(16, generator=gen)] + 3
    features = torch.randn(16, 8, generator=gen)
    expected = _loop_sequential_update(memory, features, labels, 0.2)
    torch.testing.assert_close(memory_update(memory, features, labels, 0.2, "sequential"), expected)


def test_modes_agree_when_every_id_appears_once() -> None:
    memory, features, _ = _batch(batch=4)
    labels = torch.tensor([4, 0, 2, 5])
    mean = memory_update(memory, features, labels, 0.2, "mean")
    sequential = memory_update(memory, features, labels, 0.2, "sequential")
    torch.testing.assert_close(mean, sequential)


def test_modes_differ_with_repeated_ids() -> None:
    memory, features, labels = _batch()
    mean = memory_update(memory, features, labels, 0.2, "mean")
    sequential = memory_update(memory, features, labels, 0.2, "sequential")
    assert not torch.allclose(mean[3], sequential[3])


def test_update_is_pure_and_records_no_graph() -> None:
    memory, features, labels = _batch()
    before = memory.clone()
    features.requires_grad_(True)
    for mode in ("mean", "sequential"):
        out = memory_update(memory, features, labels, update_rule=mode)
        assert out.grad_fn is None and not out.requires_grad
    torch.testing.assert_close(memory, before, rtol=0, atol=0)


def test_untouched_rows_are_copied() -> None:
    memory, features, labels = _batch()
    out = memory_update(memory, features, labels)
    absent = [k for k in range(memory.shape[0]) if k not in labels.tolist()]
    torch.testing.assert_close(out[absent], memory[absent], rtol=0, atol=0)


def test_update_casts_features_to_memory_dtype() -> None:
    memory = torch.eye(3)
    out = memory_update(memory, torch.ones(2, 3, dtype=torch.float64), torch.tensor([0, 1]))
    assert out.dtype == torch.float32


def test_zero_row_does_not_give_nan() -> None:
    memory = torch.zeros(2, 3)
    out = memory_update(memory, torch.zeros(1, 3), torch.tensor([0]), momentum=0.5)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"labels": torch.tensor([0, 6, 7, 1])},
            ValueError,
            r"labels must lie in \[0, 6\).*\[6, 7\]",
        ),
        ({"labels": torch.tensor([0, -1, 2, 1])}, ValueError, r"out-of-range values \[-1\]"),
        ({"labels": torch.tensor([0.0, 1.0, 2.0, 1.0])}, TypeError, "labels must be an integer"),
        ({"labels": torch.tensor([0, 1, 2])}, ValueError, r"labels must have shape \(4,\)"),
        ({"features": torch.randn(4, 3, dtype=torch.float64)}, ValueError, r"shape \(B, 5\)"),
        (
            {
                "features": torch.empty(0, 5, dtype=torch.float64),
                "labels": torch.empty(0, dtype=torch.long),
            },
            ValueError,
            "at least one sample",
        ),
        (
            {"features": torch.full((4, 5), float("nan"), dtype=torch.float64)},
            ValueError,
            "features must be finite",
        ),
        ({"momentum": 1.5}, ValueError, r"momentum must be a real number in \[0, 1\], got 1.5"),
        ({"momentum": -0.1}, ValueError, "momentum"),
        ({"momentum": float("nan")}, ValueError, "momentum"),
        ({"momentum": True}, TypeError, "momentum"),
        (
            {"update_rule": "median"},
            ValueError,
            r"update_rule must be one of \['mean', 'sequential'\], got 'median'",
        ),
        (
            {"memory": torch.zeros(6, 5, dtype=torch.long)},
            TypeError,
            "memory must be a floating-point",
        ),
        (
            {"memory": torch.zeros(6, 5, 1, dtype=torch.float64)},
            ValueError,
            r"memory must have shape \(C, D\)",
        ),
    ],
)
def test_update_errors_leave_memory_unchanged(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    memory, features, labels = _batch(batch=4)
    args = {"memory": memory, "features": features, "labels": labels} | kwargs
    before = args["memory"].clone()
    with pytest.raises(error, match=match):
        memory_update(**args)
    torch.testing.assert_close(args["memory"], before, rtol=0, atol=0, equal_nan=True)


def test_logits_match_matmul_and_reach_features_only() -> None:
    memory, features, _ = _batch()
    features.requires_grad_(True)
    logits = memory_logits(features, memory)
    torch.testing.assert_close(logits, features.detach() @ memory.T)
    logits.sum().backward()
    assert features.grad is not None and memory.grad is None


def test_logits_reject_wrong_dim() -> None:
    with pytest.raises(ValueError, match=r"features must have shape \(B, 3\)"):
        memory_logits(torch.randn(2, 4), torch.randn(5, 3))


@pytest.mark.parametrize(
    ("features", "labels", "error"),
    [
        (torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), torch.tensor([0, 1]), ValueError),
        (torch.randn(2, 2), torch.tensor([0, 2]), ValueError),
        (torch.randn(2, 2), torch.tensor([0.0, 1.0]), TypeError),
        (torch.randn(2), torch.tensor([0, 1]), ValueError),
    ],
)
def test_memory_init_errors(features: Tensor, labels: Tensor, error: type[Exception]) -> None:
    with pytest.raises(error):
        memory_init(features, labels, 2)
