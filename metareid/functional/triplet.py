"""Batch-hard triplet loss (Eq. 4 of the M3L paper) and the Euclidean distance it uses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from metareid._validation import (
    check_choice,
    check_features,
    check_labels,
    check_optional_nonnegative,
    check_positive_finite,
)
from metareid.functional.memory_id import REDUCTIONS

__all__ = ["hard_triplet_loss", "pairwise_euclidean_distance", "triplet_anchor_mask"]


def pairwise_euclidean_distance(x: Tensor, y: Tensor | None = None, eps: float = 1e-12) -> Tensor:
    """Euclidean distances between the rows of ``x`` and ``y``, safe to differentiate at zero.

    Computes ``sqrt(clamp(|x_i|^2 + |y_j|^2 - 2 x_i . y_j, min=eps))``. The clamp keeps the
    square root away from zero, so identical rows give a distance of ``sqrt(eps)`` (1e-6 by
    default) and a finite gradient instead of NaN. Inputs are not normalised.

    Args:
        x: shape (Q, D).
        y: shape (G, D); ``None`` (default) means ``x`` itself.
        eps: lower bound of the squared distance, > 0. Default 1e-12.

    Returns:
        Distances of shape (Q, G).

    Example:
        >>> import torch
        >>> from metareid.functional import pairwise_euclidean_distance
        >>> pairwise_euclidean_distance(torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
        tensor([[1.0000e-06, 5.0000e+00],
                [5.0000e+00, 1.0000e-06]])
    """
    check_features("x", x)
    if y is None:
        y = x
    else:
        check_features("y", y, dim=x.shape[1])
    check_positive_finite("eps", eps)
    squared = x.pow(2).sum(dim=1, keepdim=True) + y.pow(2).sum(dim=1).unsqueeze(0) - 2.0 * (x @ y.T)
    return squared.clamp(min=eps).sqrt()


def triplet_anchor_mask(labels: Tensor) -> Tensor:
    """Which samples can serve as anchors of a triplet: they have a positive and a negative.

    A sample qualifies when at least one OTHER sample shares its label and at least one
    sample has a different label. :func:`hard_triplet_loss` averages over these anchors only
    and reports 0 for the others when ``reduction="none"``.

    Args:
        labels: integer labels, shape (B,).

    Returns:
        Boolean mask, shape (B,).

    Example:
        >>> import torch
        >>> from metareid.functional import triplet_anchor_mask
        >>> triplet_anchor_mask(torch.tensor([0, 0, 1, 2]))
        tensor([ True,  True, False, False])
    """
    check_labels("labels", labels, batch_size=None)
    return _anchor_mask(labels.unsqueeze(0) == labels.unsqueeze(1))


def _anchor_mask(same: Tensor) -> Tensor:
    """Anchors with another positive and a negative, from the (B, B) same-label matrix."""
    num_same = same.sum(dim=1)  # counts the anchor itself
    return (num_same > 1) & (num_same < same.shape[1])


def hard_triplet_loss(
    features: Tensor,
    labels: Tensor,
    margin: float | None = 0.3,
    normalize: bool = False,
    reduction: str = "mean",
) -> Tensor:
    """Batch-hard triplet loss (Eq. 4 of the M3L paper; Hermans et al., 2017).

    For every anchor, ``d_p`` is the largest Euclidean distance to another sample with the
    same label and ``d_n`` the smallest distance to a sample with a different label (see
    :func:`pairwise_euclidean_distance`). The per-anchor loss is
    ``max(d_p - d_n + margin, 0)``, or the soft-margin ``softplus(d_p - d_n)`` when
    ``margin`` is ``None``. The published code applies it, with margin 0.3, to the raw pooled
    features before the BNNeck.

    Anchors without another positive or without a negative (see :func:`triplet_anchor_mask`)
    are left out. If no anchor qualifies, the ``"mean"`` and ``"sum"`` results are a zero
    that is still connected to the graph (backward works and gives a zero gradient).

    Args:
        features: shape (B, D). Not normalised unless ``normalize=True``.
        labels: integer labels, shape (B,).
        margin: delta, finite and >= 0, or ``None`` for the soft margin. Default 0.3 (paper
            and published code).
        normalize: L2-normalise the features before measuring distances. Default ``False``
            (paper and published code).
        reduction: ``"mean"`` (default, over qualifying anchors), ``"sum"`` (over qualifying
            anchors) or ``"none"``: per-anchor losses of shape (B,), 0 for anchors that do not
            qualify.

    Returns:
        A scalar, or shape (B,) for ``reduction="none"``.

    Raises:
        ValueError: for a bad shape, a negative or non-finite margin or an unknown reduction.
        TypeError: for non-tensor inputs, non-integer labels or a non-bool ``normalize``.

    Example:
        >>> import torch
        >>> from metareid.functional import hard_triplet_loss
        >>> features = torch.tensor([[0.0, 0.0], [0.0, 1.0], [2.0, 0.0], [2.0, 1.0]])
        >>> hard_triplet_loss(features, torch.tensor([0, 0, 1, 1]), margin=0.3)
        tensor(0.)
        >>> hard_triplet_loss(features, torch.tensor([0, 1, 0, 1]), margin=0.3)
        tensor(1.3000)
    """
    margin = check_optional_nonnegative("margin", margin)
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be a bool, got {normalize!r}")
    check_choice("reduction", reduction, REDUCTIONS)
    check_features("features", features)
    check_labels("labels", labels, features.shape[0])
    labels = labels.to(features.device)

    if normalize:
        features = F.normalize(features, dim=1)
    dist = pairwise_euclidean_distance(features)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    positive = same & ~torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
    # Masked entries become -inf / +inf so that they are never picked; an anchor left
    # without candidates gets an infinite d_p or d_n and is dropped by `valid` below.
    d_p = dist.masked_fill(~positive, float("-inf")).max(dim=1).values
    d_n = dist.masked_fill(same, float("inf")).min(dim=1).values
    gap = d_p - d_n
    per_anchor = F.softplus(gap) if margin is None else F.relu(gap + margin)
    valid = _anchor_mask(same)
    per_anchor = torch.where(valid, per_anchor, torch.zeros_like(per_anchor))

    if reduction == "none":
        return per_anchor
    total = per_anchor.sum()
    if reduction == "sum":
        return total
    return total / valid.sum().clamp(min=1)
