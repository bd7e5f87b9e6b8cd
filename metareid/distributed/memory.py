"""Memory updates (Eq. 2) that leave every rank's bank identical to a one-process update."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from metareid._validation import describe
from metareid.distributed.ranks import ProcessRanks, RankGroup, as_parts
from metareid.memory.bank import MemoryBank

__all__ = ["update_memory_across_ranks"]


def update_memory_across_ranks(
    memory: MemoryBank,
    features: Tensor | Sequence[Tensor],
    labels: Tensor | Sequence[Tensor],
    ranks: RankGroup | None = None,
) -> None:
    """Gather every rank's features and labels in rank order, then update the bank once.

    Every rank calls :meth:`metareid.MemoryBank.update` with the same concatenation, so the
    banks stay bitwise identical across ranks and equal to a one-process update on the
    concatenated batch: for ``update="sequential"`` the per-sample order is the global
    batch order (rank 0's chunk first), as on one process. The features are gathered
    without gradient; the bank's checks run on the gathered batch, so a bad value on any
    rank raises on every rank and leaves every bank unchanged.

    Args:
        memory: the domain's bank, identical on every rank before the call.
        features: this process's features, (B_r, D), one tensor per local rank.
        labels: the matching ids in [0, C), (B_r,), one tensor per local rank.
        ranks: the group; ``None`` (default) is :class:`~metareid.distributed.ProcessRanks`
            on the default process group.

    Raises:
        ValueError: as :meth:`metareid.MemoryBank.update`, or the number of parts is not
            the number of local ranks.
        TypeError: ``memory`` is not a MemoryBank, or as :meth:`metareid.MemoryBank.update`.

    Example:
        >>> import torch
        >>> from metareid import MemoryBank
        >>> bank = MemoryBank(num_ids=2, dim=2, momentum=0.0)
        >>> update_memory_across_ranks(bank, torch.tensor([[0.0, 3.0]]), torch.tensor([1]))
        >>> bank.features
        tensor([[0., 0.],
                [0., 1.]])
    """
    if not isinstance(memory, MemoryBank):
        raise TypeError(f"memory must be a metareid.MemoryBank, got {describe(memory)}")
    ranks = ProcessRanks() if ranks is None else ranks
    if not isinstance(ranks, RankGroup):
        raise TypeError(f"ranks must be a RankGroup or None, got {describe(ranks)}")
    count = len(ranks.local_ranks)
    feats = [f.detach() for f in as_parts(features, count, "features")]
    labs = as_parts(labels, count, "labels")
    memory.update(ranks.gather(feats), ranks.gather(labs))
