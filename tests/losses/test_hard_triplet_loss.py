"""Tests for metareid.losses.HardTripletLoss."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from metareid.functional import hard_triplet_loss
from metareid.losses import HardTripletLoss


def _inputs() -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(8, 4, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    return features, labels


@pytest.mark.parametrize("margin", [0.3, None])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_functional(margin: float | None, normalize: bool, reduction: str) -> None:
    features, labels = _inputs()
    loss = HardTripletLoss(margin, normalize, reduction)(features, labels)
    torch.testing.assert_close(
        loss, hard_triplet_loss(features, labels, margin, normalize, reduction)
    )


def test_loop_reference_per_anchor() -> None:
    features, labels = _inputs()
    expected = []
    for a in range(8):
        d = [float((features[a] - features[j]).norm()) for j in range(8)]
        d_p = max(d[j] for j in range(8) if j != a and labels[j] == labels[a])
        d_n = min(d[j] for j in range(8) if labels[j] != labels[a])
        expected.append(max(d_p - d_n + 0.3, 0.0))
    torch.testing.assert_close(
        HardTripletLoss()(features, labels), torch.tensor(expected, dtype=torch.float64).mean()
    )


def test_gradcheck() -> None:
    features, labels = _inputs()
    features.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f: HardTripletLoss(margin=1.0)(f, labels), (features,))


def test_defaults_and_repr() -> None:
    loss = HardTripletLoss()
    assert loss.margin == 0.3 and loss.normalize is False and loss.reduction == "mean"
    assert "margin=0.3" in repr(loss)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"margin": -1.0}, ValueError),
        ({"margin": True}, TypeError),
        ({"normalize": "yes"}, TypeError),
        ({"reduction": "max"}, ValueError),
    ],
)
def test_bad_constructor_arguments(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error, match=next(iter(kwargs))):
        HardTripletLoss(**kwargs)
