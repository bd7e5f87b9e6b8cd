"""Tests for metareid.losses.MemoryIDLoss."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from metareid.functional import memory_id_loss
from metareid.losses import MemoryIDLoss
from metareid.memory import MemoryBank


def _setup() -> tuple[MemoryBank, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    bank = MemoryBank(4, 6)
    bank.init_from(F.normalize(torch.randn(12, 6, generator=gen), dim=1), torch.arange(12) % 4)
    features = F.normalize(torch.randn(5, 6, generator=gen), dim=1).requires_grad_(True)
    labels = torch.tensor([3, 0, 1, 1, 2])
    return bank, features, labels


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_functional(reduction: str) -> None:
    bank, features, labels = _setup()
    loss = MemoryIDLoss(temperature=0.1, reduction=reduction)(features, labels, bank)
    expected = memory_id_loss(features, labels, bank.features, 0.1, reduction)
    torch.testing.assert_close(loss, expected)


def test_matches_cross_entropy_of_bank_logits() -> None:
    bank, features, labels = _setup()
    expected = F.cross_entropy(bank(features) / 0.05, labels)
    torch.testing.assert_close(MemoryIDLoss()(features, labels, bank), expected)


def test_gradient_reaches_features_not_bank() -> None:
    bank, features, labels = _setup()
    before = bank.features.clone()
    loss = MemoryIDLoss()(features, labels, bank)
    bank.update(features, labels)  # allowed before backward
    loss.backward()
    assert features.grad is not None and torch.isfinite(features.grad).all()
    assert bank.features.grad is None and not bank.features.requires_grad
    expected = torch.autograd.grad(memory_id_loss(features, labels, before), features)[0]
    torch.testing.assert_close(features.grad, expected)


def test_gradcheck() -> None:
    bank, features, labels = _setup()
    bank.double()
    features = features.detach().double().requires_grad_(True)
    loss = MemoryIDLoss(temperature=0.5)
    assert torch.autograd.gradcheck(lambda f: loss(f, labels, bank), (features,))


def test_memory_must_be_a_bank() -> None:
    bank, features, labels = _setup()
    with pytest.raises(TypeError, match=r"memory must be a metareid\.MemoryBank, got Tensor"):
        MemoryIDLoss()(features, labels, bank.features)


def test_bad_labels_name_the_values() -> None:
    bank, features, _ = _setup()
    with pytest.raises(ValueError, match=r"\[0, 4\).*\[4\]"):
        MemoryIDLoss()(features, torch.tensor([0, 1, 2, 3, 4]), bank)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"temperature": 0}, ValueError),
        ({"temperature": float("inf")}, ValueError),
        ({"temperature": None}, TypeError),
        ({"reduction": "batchmean"}, ValueError),
    ],
)
def test_bad_constructor_arguments(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error, match=next(iter(kwargs))):
        MemoryIDLoss(**kwargs)


def test_defaults_and_repr() -> None:
    loss = MemoryIDLoss()
    assert loss.temperature == 0.05 and loss.reduction == "mean"
    assert "temperature=0.05" in repr(loss)
