"""Memory-based identification loss of M3L (Eq. 3 of the paper) as a module."""

from __future__ import annotations

from torch import Tensor, nn

from metareid._validation import check_choice, check_positive_finite
from metareid.functional.memory_id import REDUCTIONS, memory_id_loss
from metareid.memory.bank import MemoryBank

__all__ = ["MemoryIDLoss"]


class MemoryIDLoss(nn.Module):
    """Cross-entropy of the memory logits ``bank(features) / temperature`` (Eq. 3).

    Module twin of :func:`metareid.functional.memory_id_loss`, reading the centroids of a
    :class:`metareid.MemoryBank`. The gradient reaches the features only, never the bank.
    Nothing is normalised here; M3L passes L2-normalised BNNeck features.

    Args:
        temperature: tau, finite and > 0. Default 0.05 (paper and published code).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (per-sample, (B,)).

    Example:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from metareid.losses import MemoryIDLoss
        >>> from metareid.memory import MemoryBank
        >>> bank = MemoryBank(num_classes=4, dim=8)
        >>> bank.init_from(F.normalize(torch.randn(16, 8), dim=1), torch.arange(16) % 4)
        >>> features = F.normalize(torch.randn(4, 8, requires_grad=True), dim=1)
        >>> loss = MemoryIDLoss()(features, torch.tensor([0, 1, 2, 3]), bank)
        >>> loss.backward()
    """

    def __init__(self, temperature: float = 0.05, reduction: str = "mean") -> None:
        super().__init__()
        self.temperature = check_positive_finite("temperature", temperature)
        self.reduction = check_choice("reduction", reduction, REDUCTIONS)

    def forward(self, features: Tensor, labels: Tensor, memory: MemoryBank) -> Tensor:
        """Loss of ``features`` (B, D) with identities ``labels`` (B,) against ``memory``.

        Args:
            features: shape (B, D) with D = ``memory.dim``.
            labels: identities, integers in [0, ``memory.num_classes``), shape (B,).
            memory: the bank of the features' domain.

        Returns:
            A scalar, or shape (B,) for ``reduction="none"``.

        Raises:
            TypeError: if ``memory`` is not a MemoryBank (use
                :func:`metareid.functional.memory_id_loss` for a plain tensor).
        """
        if not isinstance(memory, MemoryBank):
            raise TypeError(
                f"memory must be a metareid.MemoryBank, got {type(memory).__name__}; use "
                "metareid.functional.memory_id_loss for a plain (C, D) tensor"
            )
        dtype = features.dtype if isinstance(features, Tensor) else None
        return memory_id_loss(
            features, labels, memory.snapshot(dtype), self.temperature, self.reduction
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, reduction={self.reduction!r}"
