"""Tests for metareid.functional.hard_triplet_loss against a per-anchor loop."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from metareid.functional import hard_triplet_loss, pairwise_euclidean_distance, triplet_anchor_mask


def _loop_losses(
    features: Tensor, labels: Tensor, margin: float | None, normalize: bool = False
) -> tuple[Tensor, Tensor]:
    """Per-anchor losses and qualification flags, one anchor at a time."""
    if normalize:
        features = features / features.norm(dim=1, keepdim=True)
    ids = labels.tolist()
    losses: list[float] = []
    valid: list[bool] = []
    for a in range(len(ids)):
        positives = [
            (features[a] - features[p]).norm()
            for p in range(len(ids))
            if p != a and ids[p] == ids[a]
        ]
        negatives = [
            (features[a] - features[n]).norm() for n in range(len(ids)) if ids[n] != ids[a]
        ]
        if not positives or not negatives:
            losses.append(0.0)
            valid.append(False)
            continue
        gap = float(max(positives) - min(negatives))
        losses.append(math.log1p(math.exp(gap)) if margin is None else max(gap + margin, 0.0))
        valid.append(True)
    return torch.tensor(losses, dtype=features.dtype), torch.tensor(valid)


def _inputs(seed: int = 0) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(10, 5, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2, 1, 4])  # ids 3 and 4 have no positive
    return features, labels


@pytest.mark.parametrize("margin", [0.3, 0.0, 2.0, None])
@pytest.mark.parametrize("normalize", [False, True])
def test_matches_loop(margin: float | None, normalize: bool) -> None:
    features, labels = _inputs()
    expected, valid = _loop_losses(features, labels, margin, normalize)
    none = hard_triplet_loss(features, labels, margin, normalize, reduction="none")
    torch.testing.assert_close(none, expected)
    torch.testing.assert_close(
        hard_triplet_loss(features, labels, margin, normalize), expected[valid].mean()
    )
    torch.testing.assert_close(
        hard_triplet_loss(features, labels, margin, normalize, "sum"), expected[valid].sum()
    )
    assert torch.equal(triplet_anchor_mask(labels), valid)


def test_default_margin_is_03_and_no_normalisation() -> None:
    features, labels = _inputs()
    features = features * 3  # normalisation would change the result
    expected, valid = _loop_losses(features, labels, 0.3)
    torch.testing.assert_close(hard_triplet_loss(features, labels), expected[valid].mean())


def test_gradcheck_distinct_features() -> None:
    features, labels = _inputs()
    features = features[:7, :3].clone().requires_grad_(True)  # small: gradcheck is O(numel)
    labels = labels[:7]
    assert torch.autograd.gradcheck(lambda f: hard_triplet_loss(f, labels, margin=1.0), (features,))
    assert torch.autograd.gradcheck(lambda f: hard_triplet_loss(f, labels, None, True), (features,))


def test_identical_features_give_finite_gradient() -> None:
    features = torch.ones(4, 3, requires_grad=True)
    loss = hard_triplet_loss(features, torch.tensor([0, 0, 1, 1]))
    loss.backward()
    assert features.grad is not None
    assert torch.isfinite(loss) and torch.isfinite(features.grad).all()
    torch.testing.assert_close(loss, torch.tensor(0.3))


def test_partly_identical_features_give_finite_gradient() -> None:
    features = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 1.0]], requires_grad=True)
    hard_triplet_loss(features, torch.tensor([0, 0, 1, 1]), margin=5.0).backward()
    assert features.grad is not None
    assert torch.isfinite(features.grad).all()


@pytest.mark.parametrize("labels", [[0, 1, 2, 3], [7, 7, 7, 7], [5]])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_no_qualifying_anchor_gives_connected_zero(labels: list[int], reduction: str) -> None:
    features = torch.randn(len(labels), 3, requires_grad=True)
    loss = hard_triplet_loss(features, torch.tensor(labels), reduction=reduction)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    torch.testing.assert_close(features.grad, torch.zeros_like(features))


def test_none_reduction_marks_non_qualifying_anchors_with_zero() -> None:
    features, labels = _inputs()
    losses = hard_triplet_loss(features, labels, margin=10.0, reduction="none")
    mask = triplet_anchor_mask(labels)
    assert torch.all(losses[~mask] == 0) and torch.all(losses[mask] > 0)


def test_negative_labels_are_fine() -> None:
    features, labels = _inputs()
    torch.testing.assert_close(
        hard_triplet_loss(features, labels - 3), hard_triplet_loss(features, labels)
    )


def test_pairwise_distance_matches_cdist() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(pairwise_euclidean_distance(x, y), torch.cdist(x, y))
    self_dist = pairwise_euclidean_distance(x)
    torch.testing.assert_close(self_dist.diagonal(), torch.full((4,), 1e-6, dtype=torch.float64))


def test_pairwise_distance_errors() -> None:
    with pytest.raises(ValueError, match=r"y must have shape \(B, 3\)"):
        pairwise_euclidean_distance(torch.randn(2, 3), torch.randn(2, 4))
    with pytest.raises(ValueError, match="eps must be a finite real number > 0"):
        pairwise_euclidean_distance(torch.randn(2, 3), eps=0.0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"margin": -0.1},
            ValueError,
            "margin must be a finite real number >= 0 or None, got -0.1",
        ),
        ({"margin": float("inf")}, ValueError, "margin"),
        ({"margin": float("nan")}, ValueError, "margin"),
        ({"margin": "0.3"}, TypeError, "margin"),
        ({"normalize": 1}, TypeError, "normalize must be a bool"),
        ({"reduction": "mean "}, ValueError, "reduction"),
        ({"labels": torch.tensor([0.0, 1.0])}, TypeError, "integer"),
        ({"labels": torch.tensor([0, 1, 1])}, ValueError, r"labels must have shape \(10,\)"),
        ({"features": torch.randn(10)}, ValueError, r"features must have shape \(B, D\)"),
        ({"features": torch.zeros(10, 2, dtype=torch.long)}, TypeError, "floating-point"),
    ],
)
def test_errors(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    features, labels = _inputs()
    args = {"features": features, "labels": labels} | kwargs
    with pytest.raises(error, match=match):
        hard_triplet_loss(**args)


def test_anchor_mask_errors() -> None:
    with pytest.raises(ValueError, match=r"labels must have shape \(B,\)"):
        triplet_anchor_mask(torch.zeros(2, 2, dtype=torch.long))


def test_normalize_matches_prenormalised_input() -> None:
    features, labels = _inputs()
    torch.testing.assert_close(
        hard_triplet_loss(features, labels, normalize=True),
        hard_triplet_loss(F.normalize(features, dim=1), labels),
    )
