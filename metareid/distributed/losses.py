"""The M3L losses over the whole batch when the batch is split across ranks.

Both helpers return, for the calling process, the mean over its local ranks of
``loss_r = N * (rank r's share of the whole-batch loss)``, where the shares of the N ranks
add up to the whole-batch loss (see :mod:`metareid.distributed.ranks`). Hence:

* on N processes (:class:`~metareid.distributed.ProcessRanks`), the mean of the N
  returned values is the whole-batch loss, and averaging the parameter gradients over
  ranks (:func:`~metareid.distributed.all_reduce_grads_`, or
  :func:`~metareid.distributed.all_reduce_mean` for the meta-train gradient) gives the
  whole-batch gradient, as ``DistributedDataParallel``'s averaging expects;
* in one process holding all N chunks (:class:`~metareid.distributed.MicroBatchRanks`),
  the returned value is the whole-batch loss itself;
* with one rank, both are :func:`metareid.functional.hard_triplet_loss` and
  :func:`metareid.functional.memory_id_loss` with ``reduction="mean"``.

"Whole batch" means the chunks' outputs concatenated in rank order; with per-chunk
BatchNorm these outputs are those of DataParallel, not of one forward on the whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from metareid._validation import describe
from metareid.distributed.ranks import ProcessRanks, RankGroup, as_parts
from metareid.functional.memory_id import memory_id_loss
from metareid.functional.triplet import hard_triplet_loss, triplet_anchor_mask
from metareid.memory.bank import MemoryBank

__all__ = ["hard_triplet_loss_across_ranks", "memory_id_loss_across_ranks"]


def _pairs(
    ranks: RankGroup | None, features: Tensor | Sequence[Tensor], labels: Tensor | Sequence[Tensor]
) -> tuple[RankGroup, list[Tensor], list[Tensor]]:
    ranks = ProcessRanks() if ranks is None else ranks
    if not isinstance(ranks, RankGroup):
        raise TypeError(f"ranks must be a RankGroup or None, got {describe(ranks)}")
    count = len(ranks.local_ranks)
    feats = as_parts(features, count, "features")
    labs = as_parts(labels, count, "labels")
    for i, (f, y) in enumerate(zip(feats, labs, strict=True)):
        if f.dim() != 2 or y.dim() != 1 or f.shape[0] != y.shape[0]:
            raise ValueError(
                f"features[{i}] must have shape (B, D) and labels[{i}] shape (B,) with the same "
                f"B, got {tuple(f.shape)} and {tuple(y.shape)}"
            )
    return ranks, feats, [y.to(f.device) for f, y in zip(feats, labs, strict=True)]


def hard_triplet_loss_across_ranks(
    features: Tensor | Sequence[Tensor],
    labels: Tensor | Sequence[Tensor],
    ranks: RankGroup | None = None,
    margin: float | None = 0.3,
    normalize: bool = False,
) -> Tensor:
    """Batch-hard triplet loss (Eq. 4) with mining over every rank's features.

    The features of all ranks are gathered with gradient
    (:meth:`~metareid.distributed.RankGroup.gather_with_grad`) and
    :func:`metareid.functional.hard_triplet_loss` runs on the gathered batch
    (``reduction="none"``); each rank keeps the losses of its own anchors, whose hardest
    positive and negative may live on any rank. With ``A`` the number of anchors of the
    whole batch that have a positive and a negative, rank ``r``'s loss is
    ``N * (sum of its anchors' losses) / A``: the N ranks' losses average to the
    whole-batch mean and, through the gather's backward, their gradients average to the
    whole-batch gradient.

    Args:
        features: this process's features, (B_r, D), one tensor per local rank.
        labels: the matching integer ids, (B_r,), one per local rank.
        ranks: the group; ``None`` (default) is :class:`~metareid.distributed.ProcessRanks`
            on the default process group.
        margin: as in :func:`~metareid.functional.hard_triplet_loss`. Default 0.3.
        normalize: as in :func:`~metareid.functional.hard_triplet_loss`. Default False.

    Returns:
        A scalar: this process's loss (see the module docstring).

    Raises:
        ValueError: a part's features and labels disagree in length, the number of parts
            is not the number of local ranks, or as
            :func:`~metareid.functional.hard_triplet_loss`.
        TypeError: as :func:`~metareid.functional.hard_triplet_loss`.

    Example:
        >>> import torch
        >>> from metareid.distributed import MicroBatchRanks
        >>> from metareid.functional import hard_triplet_loss
        >>> feats, ids = torch.randn(8, 4), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
        >>> chunks = MicroBatchRanks(2)
        >>> split = hard_triplet_loss_across_ranks([feats[:4], feats[4:]], [ids[:4], ids[4:]], chunks)
        >>> torch.allclose(split, hard_triplet_loss(feats, ids))
        True
    """
    ranks, feats, labs = _pairs(ranks, features, labels)
    gathered = ranks.gather_with_grad(feats)
    gathered_labels = ranks.gather(labs).to(gathered.device)
    per_anchor = hard_triplet_loss(gathered, gathered_labels, margin, normalize, reduction="none")
    anchors = triplet_anchor_mask(gathered_labels).sum().clamp(min=1)
    local = ranks.local_ranks
    if len(local) == ranks.num_ranks:  # every rank here: the whole-batch mean itself
        return per_anchor.sum() / anchors
    offsets = ranks.offsets(feats)
    total = sum(per_anchor[offsets[r] : offsets[r + 1]].sum() for r in local)
    assert isinstance(total, Tensor)
    return total * (ranks.num_ranks / len(local)) / anchors


def memory_id_loss_across_ranks(
    features: Tensor | Sequence[Tensor],
    labels: Tensor | Sequence[Tensor],
    memory: MemoryBank | Tensor,
    ranks: RankGroup | None = None,
    temperature: float = 0.05,
) -> Tensor:
    """Memory identification loss (Eq. 3) averaged over the whole batch of all ranks.

    Rank ``r``'s loss is ``N * (sum of its samples' losses) / (number of samples of all
    ranks)``, each sample's loss from :func:`metareid.functional.memory_id_loss`: the N
    ranks' losses average to the whole-batch mean, also when the chunks differ in size
    (MetaBN's meta-test mixtures, uneven batches). No gradient crosses ranks: a sample's
    loss depends on its own feature and on the memory only.

    Args:
        features: this process's features, (B_r, D), one tensor per local rank (with
            MetaBN's meta-test mixtures concatenated, pass the matching repeated labels).
        labels: the matching ids in [0, C), one tensor per local rank.
        memory: the domain's :class:`~metareid.MemoryBank` (its snapshot is used, cast to
            the features' dtype, so no gradient reaches it) or a (C, D) tensor.
        ranks: the group; ``None`` (default) is :class:`~metareid.distributed.ProcessRanks`
            on the default process group.
        temperature: tau, as in :func:`~metareid.functional.memory_id_loss`. Default 0.05.

    Returns:
        A scalar: this process's loss (see the module docstring).

    Raises:
        ValueError: a part's features and labels disagree in length, the number of parts
            is not the number of local ranks, or as :func:`~metareid.functional.memory_id_loss`.
        TypeError: ``memory`` is neither a MemoryBank nor a tensor, or as
            :func:`~metareid.functional.memory_id_loss`.

    Example:
        >>> import torch
        >>> from metareid.distributed import MicroBatchRanks
        >>> from metareid.functional import memory_id_loss
        >>> memory = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
        >>> feats, ids = torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2])
        >>> split = memory_id_loss_across_ranks([feats[:2], feats[2:]], [ids[:2], ids[2:]],
        ...                                     memory, MicroBatchRanks(2))
        >>> torch.allclose(split, memory_id_loss(feats, ids, memory))
        True
    """
    ranks, feats, labs = _pairs(ranks, features, labels)
    if isinstance(memory, MemoryBank):
        table = memory.snapshot(feats[0].dtype)
    elif isinstance(memory, Tensor):
        table = memory
    else:
        raise TypeError(f"memory must be a MemoryBank or a (C, D) tensor, got {describe(memory)}")
    local = ranks.local_ranks
    if len(local) == ranks.num_ranks:  # every rank here: the whole-batch mean itself
        gathered = ranks.gather_with_grad(feats)
        return memory_id_loss(gathered, ranks.gather(labs), table.to(gathered.device), temperature)
    count = sum(ranks.sizes(feats))
    total = sum(
        memory_id_loss(f, y, table.to(f.device), temperature, reduction="sum")
        for f, y in zip(feats, labs, strict=True)
    )
    assert isinstance(total, Tensor)
    return total * (ranks.num_ranks / len(local)) / count
