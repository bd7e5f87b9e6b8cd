"""Memory-based identification loss of M3L (Eq. 3) as a pure function."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from metareid._validation import (
    check_choice,
    check_features,
    check_labels,
    check_memory,
    check_positive_finite,
)
from metareid.functional.memory import memory_logits

__all__ = ["REDUCTIONS", "memory_id_loss"]

#: Accepted values of the ``reduction`` argument of the losses.
REDUCTIONS = ("mean", "sum", "none")


def memory_id_loss(
    features: Tensor,
    labels: Tensor,
    memory: Tensor,
    temperature: float = 0.05,
    reduction: str = "mean",
) -> Tensor:
    """Memory-based identification loss (Eq. 3 of the M3L paper).

    Cross-entropy of the logits ``features @ memory.T / temperature`` against ``labels``:
    ``-log(exp(M[y_i] . f_i / tau) / sum_k exp(M[k] . f_i / tau))``. Nothing is normalised
    here; M3L passes L2-normalised BNNeck features and unit-norm centroids, so the logits
    are cosine similarities divided by tau.

    Args:
        features: shape (B, D).
        labels: identities, integers in [0, C), shape (B,).
        memory: identity centroids, shape (C, D). The gradient reaches it only if it requires
            grad; pass ``bank.snapshot()`` or use :class:`metareid.MemoryIDLoss` to keep a
            :class:`metareid.MemoryBank` out of the graph.
        temperature: tau, finite and > 0. Default 0.05 (paper and published code).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (per-sample losses, (B,)).

    Returns:
        A scalar, or shape (B,) for ``reduction="none"``.

    Raises:
        ValueError: for a bad shape, labels outside [0, C), a non-positive or non-finite
            temperature or an unknown reduction.
        TypeError: for non-tensor inputs or non-integer labels.

    Example:
        >>> import torch
        >>> from metareid.functional import memory_id_loss
        >>> memory = torch.eye(3)
        >>> features = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        >>> memory_id_loss(features, torch.tensor([0, 1]), memory, temperature=1.0)
        tensor(0.5514)
    """
    temperature = check_positive_finite("temperature", temperature)
    check_choice("reduction", reduction, REDUCTIONS)
    check_memory("memory", memory)
    check_features("features", features, dim=memory.shape[1])
    check_labels("labels", labels, features.shape[0], memory.shape[0])
    logits = memory_logits(features, memory) / temperature
    return F.cross_entropy(logits, labels.to(features.device), reduction=reduction)
