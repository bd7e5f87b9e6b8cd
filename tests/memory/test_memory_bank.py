"""Tests for metareid.memory.MemoryBank."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from reference_loops import loop_mean_update as _loop_mean_update
from reference_loops import loop_sequential_update as _loop_sequential_update
from torch import Tensor

from metareid.memory import MemoryBank

NUM_IDS, DIM = 5, 4


@pytest.fixture
def bank() -> MemoryBank:
    bank = MemoryBank(NUM_IDS, DIM)
    gen = torch.Generator().manual_seed(0)
    bank.init_from(F.normalize(torch.randn(15, DIM, generator=gen), dim=1), torch.arange(15) % 5)
    return bank


def _batch(seed: int = 1) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    features = F.normalize(torch.randn(8, DIM, generator=gen), dim=1)
    labels = torch.tensor([2, 0, 2, 2, 4, 0, 1, 2])
    return features, labels


def test_buffer_and_defaults() -> None:
    bank = MemoryBank(3, 2)
    assert list(dict(bank.named_buffers())) == ["features"]
    assert list(bank.parameters()) == []
    assert bank.momentum == 0.2 and bank.update_rule == "mean"
    torch.testing.assert_close(bank.features, torch.zeros(3, 2))


def test_init_from_sets_normalised_centroids(bank: MemoryBank) -> None:
    gen = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn(15, DIM, generator=gen), dim=1)
    expected = torch.stack([F.normalize(features[k::5].mean(0), dim=0) for k in range(5)])
    torch.testing.assert_close(bank.features, expected)


def test_init_from_lists_missing_ids_and_keeps_bank(bank: MemoryBank) -> None:
    before = bank.features.clone()
    with pytest.raises(ValueError, match=r"no sample for ids \[1, 3\]"):
        bank.init_from(torch.randn(3, DIM), torch.tensor([0, 2, 4]))
    torch.testing.assert_close(bank.features, before, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("mode", "reference"), [("mean", _loop_mean_update), ("sequential", _loop_sequential_update)]
)
def test_update_matches_loop(bank: MemoryBank, mode: str, reference: Callable[..., Tensor]) -> None:
    bank.update_rule = mode
    bank.momentum = 0.3
    features, labels = _batch()
    expected = reference(bank.features, features, labels, 0.3)
    bank.update(features, labels)
    torch.testing.assert_close(bank.features, expected)


def test_constructor_update_rule() -> None:
    assert MemoryBank(2, 2, update_rule="sequential").update_rule == "sequential"


def test_update_records_no_graph(bank: MemoryBank) -> None:
    features, labels = _batch()
    features = features.clone().requires_grad_(True)
    bank.update(features * 2, labels)
    assert not bank.features.requires_grad and bank.features.grad_fn is None


def test_forward_gradient_reaches_features_only(bank: MemoryBank) -> None:
    features, _ = _batch()
    features = features.clone().requires_grad_(True)
    logits = bank(features)
    assert logits.shape == (8, NUM_IDS)
    torch.testing.assert_close(logits, features.detach() @ bank.features.T)
    logits.sum().backward()
    torch.testing.assert_close(features.grad, bank.features.sum(0).expand(8, DIM))
    assert bank.features.grad is None


def test_update_between_forward_and_backward(bank: MemoryBank) -> None:
    features, labels = _batch()
    features = features.clone().requires_grad_(True)
    before = bank.features.clone()
    logits = bank(features)
    bank.update(features, labels)
    logits.sum().backward()  # the graph holds a snapshot: no in-place error
    torch.testing.assert_close(features.grad, before.sum(0).expand(8, DIM))


def test_state_dict_round_trip(bank: MemoryBank) -> None:
    other = MemoryBank(NUM_IDS, DIM)
    other.load_state_dict(bank.state_dict())
    torch.testing.assert_close(other.features, bank.features, rtol=0, atol=0)
    assert list(bank.state_dict()) == ["features"]


def test_to_dtype(bank: MemoryBank) -> None:
    bank.to(torch.float64)
    assert bank.features.dtype == torch.float64
    features, labels = _batch()
    bank.update(features, labels)  # float32 features are cast to the bank's dtype
    assert bank.features.dtype == torch.float64
    assert bank(features.double()).dtype == torch.float64
    assert bank(features).dtype == torch.float32


def test_device_and_dtype_arguments() -> None:
    bank = MemoryBank(2, 3, device="cpu", dtype=torch.float64)
    assert bank.features.dtype == torch.float64 and bank.features.device.type == "cpu"
    with pytest.raises(TypeError, match="dtype must be a floating-point"):
        MemoryBank(2, 3, dtype=torch.long)


@pytest.mark.parametrize(
    ("features", "labels", "error", "match"),
    [
        (torch.randn(3, DIM), torch.tensor([0, 5, 9]), ValueError, r"\[0, 5\).*\[5, 9\]"),
        (torch.randn(3, DIM + 1), torch.tensor([0, 1, 2]), ValueError, rf"\(B, {DIM}\)"),
        (torch.randn(3, DIM), torch.tensor([0, 1]), ValueError, r"shape \(3,\)"),
        (torch.randn(0, DIM), torch.empty(0, dtype=torch.long), ValueError, "at least one"),
        (torch.randn(2, DIM), torch.tensor([0.0, 1.0]), TypeError, "integer"),
        (torch.randn(2, DIM), torch.tensor([True, False]), TypeError, "integer"),
        (
            torch.tensor([[float("nan")] * DIM, [0.0] * DIM]),
            torch.tensor([0, 1]),
            ValueError,
            "finite",
        ),
        ([[0.0] * DIM], torch.tensor([0]), TypeError, "features must be a torch.Tensor"),
    ],
)
def test_bad_input_leaves_bank_unchanged(
    bank: MemoryBank, features: Any, labels: Tensor, error: type[Exception], match: str
) -> None:
    before = bank.features.clone()
    with pytest.raises(error, match=match):
        bank.update(features, labels)
    with pytest.raises(error):
        bank.init_from(features, labels)
    torch.testing.assert_close(bank.features, before, rtol=0, atol=0)


@pytest.mark.parametrize("momentum", [-0.1, 1.01, float("nan"), "0.2", None])
def test_bad_momentum(bank: MemoryBank, momentum: Any) -> None:
    with pytest.raises((ValueError, TypeError), match="momentum"):
        MemoryBank(2, 2, momentum=momentum)
    before = bank.features.clone()
    with pytest.raises((ValueError, TypeError), match="momentum"):
        bank.momentum = momentum
    assert bank.momentum == 0.2
    bank.update(*_batch())  # still usable; the failed assignment changed nothing
    assert not torch.equal(bank.features, before)


def test_bad_update_rule(bank: MemoryBank) -> None:
    with pytest.raises(ValueError, match=r"update_rule must be one of \['mean', 'sequential'\]"):
        MemoryBank(2, 2, update_rule="ema")
    before = bank.features.clone()
    with pytest.raises(ValueError, match="'ema'"):
        bank.update_rule = "ema"
    assert bank.update_rule == "mean"
    torch.testing.assert_close(bank.features, before, rtol=0, atol=0)


@pytest.mark.parametrize(("num_classes", "dim"), [(0, 2), (2, 0), (2.0, 2), (True, 2)])
def test_bad_sizes(num_classes: Any, dim: Any) -> None:
    with pytest.raises((ValueError, TypeError), match=r"num_classes|dim"):
        MemoryBank(num_classes, dim)


def test_forward_rejects_wrong_dim(bank: MemoryBank) -> None:
    with pytest.raises(ValueError, match=rf"\(B, {DIM}\)"):
        bank(torch.randn(2, DIM + 1))


def test_snapshot_is_a_copy(bank: MemoryBank) -> None:
    snap = bank.snapshot()
    snap.zero_()
    assert bank.features.abs().sum() > 0
    assert bank.snapshot(torch.float64).dtype == torch.float64


def test_repr() -> None:
    assert "update_rule='sequential'" in repr(MemoryBank(2, 3, update_rule="sequential"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["mean", "sequential"])
def test_cuda_bank_with_cpu_labels(mode: str) -> None:
    bank = MemoryBank(3, DIM, update_rule=mode, device="cuda")
    bank.init_from(torch.randn(6, DIM, device="cuda"), torch.arange(6) % 3)
    before = bank.features.cpu()
    features, labels = _batch()
    bank.update(features.cuda(), labels.remainder(3))
    reference = _loop_mean_update if mode == "mean" else _loop_sequential_update
    expected = reference(before, features, labels.remainder(3), bank.momentum)
    torch.testing.assert_close(bank.features.cpu(), expected)
