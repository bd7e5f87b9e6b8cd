"""Identity memory of M3L as pure functions: initialisation, Eq. 2 update and logits.

The memory is a matrix ``(C, D)`` holding one centroid per identity. These functions never
modify their inputs; :class:`metareid.MemoryBank` wraps them around a registered buffer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from metareid._validation import (
    check_choice,
    check_features,
    check_finite,
    check_labels,
    check_memory,
    check_positive_int,
    check_unit_interval,
    format_ids,
)

__all__ = ["UPDATE_RULES", "memory_init", "memory_logits", "memory_update", "memory_update_"]

#: Accepted values of the ``update_rule`` argument of :func:`memory_update`.
UPDATE_RULES = ("mean", "sequential")


def memory_init(features: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Identity centroids for a fresh memory: the L2-normalised mean feature of each id.

    Implements the memory initialisation of Sec. 3.3 of the M3L paper. The paper takes the
    plain mean; the published code L2-normalises the centroids, and so does this function
    (the mean of L2-normalised features is not itself unit-norm). The inputs are not
    normalised here: M3L passes L2-normalised BNNeck features.

    Args:
        features: features of the whole source domain, shape (N, D), finite.
        labels: identity of each feature, integers in [0, num_classes), shape (N,).
        num_classes: number of identities C. Every id in [0, C) needs at least one sample.

    Returns:
        The memory, shape (C, D), with the dtype and device of ``features``, detached.

    Raises:
        ValueError: if an id has no sample (the missing ids are listed), if a label lies
            outside [0, num_classes), if shapes disagree or if ``features`` is not finite.
        TypeError: if ``labels`` is not an integer tensor.

    Example:
        >>> import torch
        >>> from metareid.functional import memory_init
        >>> features = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
        >>> memory_init(features, torch.tensor([0, 1, 1]), num_classes=2)
        tensor([[1., 0.],
                [0., 1.]])
    """
    num_classes = check_positive_int("num_classes", num_classes)
    check_features("features", features)
    check_labels("labels", labels, features.shape[0], num_classes)
    check_finite("features", features)
    features = features.detach()
    labels = labels.to(features.device)
    counts = torch.bincount(labels, minlength=num_classes)
    missing = torch.nonzero(counts == 0).flatten().tolist()
    if missing:
        raise ValueError(
            f"labels must cover every id in [0, {num_classes}) so that each memory slot gets a "
            f"centroid, got no sample for ids {format_ids(missing)}"
        )
    sums = features.new_zeros(num_classes, features.shape[1]).index_add_(0, labels, features)
    return F.normalize(sums / counts.unsqueeze(1).to(features.dtype), dim=1)


def _check_update_args(
    memory: Tensor, features: Tensor, labels: Tensor, momentum: float, update_rule: str
) -> tuple[Tensor, Tensor, float]:
    """Validate the arguments of an update; return features and labels ready for it."""
    check_memory("memory", memory)
    check_choice("update_rule", update_rule, UPDATE_RULES)
    momentum = check_unit_interval("momentum", momentum)
    check_features("features", features, dim=memory.shape[1])
    check_labels("labels", labels, features.shape[0], memory.shape[0])
    check_finite("features", features)
    features = features.detach().to(device=memory.device, dtype=memory.dtype)
    return features, labels.to(memory.device), momentum


def _blend_rows(memory: Tensor, ids: Tensor, values: Tensor, momentum: float) -> Tensor:
    """Write normalize(m * memory[ids] + (1 - m) * values) into memory[ids], in place."""
    rows = F.normalize(momentum * memory[ids] + (1.0 - momentum) * values, dim=1)
    return memory.index_copy_(0, ids, rows)


def _update_mean_(memory: Tensor, features: Tensor, labels: Tensor, momentum: float) -> Tensor:
    ids, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    sums = features.new_zeros(ids.shape[0], features.shape[1]).index_add_(0, inverse, features)
    return _blend_rows(memory, ids, sums / counts.unsqueeze(1).to(features.dtype), momentum)


def _update_sequential_(
    memory: Tensor, features: Tensor, labels: Tensor, momentum: float
) -> Tensor:
    # Rank of each sample among the earlier samples of its identity (0 for the first one).
    # Samples of equal rank have distinct identities, so each rank is one vectorised round;
    # rounds run in rank order, which is batch order within every identity.
    sorted_labels, order = torch.sort(labels, stable=True)
    positions = torch.arange(labels.shape[0], device=labels.device)
    starts = torch.ones_like(sorted_labels, dtype=torch.bool)
    starts[1:] = sorted_labels[1:] != sorted_labels[:-1]
    group_start = torch.cummax(torch.where(starts, positions, 0), dim=0).values
    rank = positions - group_start
    for r in range(int(rank.max()) + 1):
        members = order[rank == r]
        _blend_rows(memory, labels[members], features[members], momentum)
    return memory


@torch.no_grad()
def memory_update_(
    memory: Tensor,
    features: Tensor,
    labels: Tensor,
    momentum: float = 0.2,
    update_rule: str = "mean",
) -> Tensor:
    """In-place :func:`memory_update` (Eq. 2): writes the updated rows into ``memory``.

    Same arguments, rules and errors as :func:`memory_update`. ``memory`` is written only
    once every argument has passed its checks, so a bad call leaves it unchanged. Returns
    ``memory``.
    """
    features, labels, momentum = _check_update_args(memory, features, labels, momentum, update_rule)
    if update_rule == "mean":
        return _update_mean_(memory, features, labels, momentum)
    return _update_sequential_(memory, features, labels, momentum)


def memory_update(
    memory: Tensor,
    features: Tensor,
    labels: Tensor,
    momentum: float = 0.2,
    update_rule: str = "mean",
) -> Tensor:
    """Momentum update of the identity centroids (Eq. 2 of the M3L paper), out of place.

    ``update_rule="mean"`` (default, the paper): for every distinct id k in the batch,
    ``M[k] <- normalize(m * M[k] + (1 - m) * mean_k)`` where ``mean_k`` is the mean of the
    batch features labelled k. Eq. 2 itself has no renormalisation; it is applied here, as in
    the published code, so that the centroids stay unit-norm.

    ``update_rule="sequential"`` (the published code): the result of the per-sample loop
    ``for f, y in batch: M[y] <- normalize(m * M[y] + (1 - m) * f)`` in batch order. It is
    vectorised across identities and loops only over the occurrence rank within an identity
    (at most K rounds for a P x K batch). The published code uses m = 0.2 in this form, which
    gives each new sample weight 0.8.

    No gradient is recorded, even when ``features`` requires grad. The features are not
    normalised here; M3L passes L2-normalised BNNeck features. Features and labels are moved
    to the dtype and device of ``memory``.

    Args:
        memory: current centroids, shape (C, D). Not modified.
        features: batch features, shape (B, D), finite.
        labels: identities of the batch, integers in [0, C), shape (B,).
        momentum: m in [0, 1], the weight kept by the old centroid. Default 0.2 (paper and code).
        update_rule: ``"mean"`` (default, paper) or ``"sequential"`` (published code).

    Returns:
        The updated memory, shape (C, D); rows of ids absent from the batch are copied as is.

    Raises:
        ValueError: for a bad shape, an empty batch, labels outside [0, C), non-finite
            features, momentum outside [0, 1] or an unknown update_rule.
        TypeError: for non-tensor inputs or non-integer labels.

    Example:
        >>> import torch
        >>> from metareid.functional import memory_update
        >>> memory = torch.eye(2)
        >>> features = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
        >>> memory_update(memory, features, torch.tensor([0, 0]), momentum=0.5)
        tensor([[0.7071, 0.7071],
                [0.0000, 1.0000]])
    """
    out = memory.detach().clone() if isinstance(memory, Tensor) else memory
    return memory_update_(out, features, labels, momentum, update_rule)


def memory_logits(features: Tensor, memory: Tensor) -> Tensor:
    """Similarities between features and centroids, ``features @ memory.T`` (Eq. 3, logits).

    Nothing is normalised here: with L2-normalised features and centroids (as in M3L) the
    logits are cosine similarities. The gradient flows into ``memory`` only if it requires
    grad; :class:`metareid.MemoryBank` passes a detached copy.

    Args:
        features: shape (B, D).
        memory: shape (C, D), same dtype and device as ``features``.

    Returns:
        Logits of shape (B, C).

    Example:
        >>> import torch
        >>> from metareid.functional import memory_logits
        >>> memory_logits(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        tensor([[1., 0.]])
    """
    check_memory("memory", memory)
    check_features("features", features, dim=memory.shape[1])
    return features @ memory.T
