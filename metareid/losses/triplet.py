"""Batch-hard triplet loss (Eq. 4 of the M3L paper) as a module."""

from __future__ import annotations

from torch import Tensor, nn

from metareid._validation import check_choice, check_optional_nonnegative
from metareid.functional.memory_id import REDUCTIONS
from metareid.functional.triplet import hard_triplet_loss

__all__ = ["HardTripletLoss"]


class HardTripletLoss(nn.Module):
    """Batch-hard triplet loss on Euclidean distances (Eq. 4; Hermans et al., 2017).

    Module twin of :func:`metareid.functional.hard_triplet_loss`: for each anchor, the
    farthest other sample of its identity against the closest sample of another identity,
    ``max(d_p - d_n + margin, 0)``. Anchors without a positive or a negative are left out;
    :func:`metareid.functional.triplet_anchor_mask` tells which anchors count.

    Args:
        margin: delta, finite and >= 0, or ``None`` for the soft margin
            ``softplus(d_p - d_n)``. Default 0.3 (paper and published code).
        normalize: L2-normalise the features first. Default ``False``: the paper and the
            published code use raw (pre-BNNeck) pooled features.
        reduction: ``"mean"`` (default, over qualifying anchors), ``"sum"`` or ``"none"``
            (per-anchor losses, (B,), 0 for anchors that do not qualify).

    Example:
        >>> import torch
        >>> from metareid.losses import HardTripletLoss
        >>> features = torch.randn(8, 16, requires_grad=True)
        >>> labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
        >>> loss = HardTripletLoss(margin=0.3)(features, labels)
        >>> loss.backward()
    """

    def __init__(
        self, margin: float | None = 0.3, normalize: bool = False, reduction: str = "mean"
    ) -> None:
        super().__init__()
        self.margin = check_optional_nonnegative("margin", margin)
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize must be a bool, got {normalize!r}")
        self.normalize = normalize
        self.reduction = check_choice("reduction", reduction, REDUCTIONS)

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        """Loss of ``features`` (B, D) with integer ``labels`` (B,).

        Returns:
            A scalar, or shape (B,) for ``reduction="none"``.
        """
        return hard_triplet_loss(features, labels, self.margin, self.normalize, self.reduction)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, normalize={self.normalize}, reduction={self.reduction!r}"
