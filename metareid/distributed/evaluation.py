"""Sharded feature extraction: each rank extracts a contiguous shard, all ranks get all."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from metareid._validation import check_int, check_positive_int, describe
from metareid.distributed.ranks import ProcessRanks, RankGroup
from metareid.evaluation.extract import extract_features

__all__ = ["extract_features_sharded", "shard_range"]

R = TypeVar("R")


def shard_range(num_items: int, num_shards: int, index: int) -> range:
    """Positions of shard ``index`` when ``num_items`` are cut into contiguous shards.

    The first ``num_items % num_shards`` shards hold one item more than the others; the
    shards, in order, cover ``range(num_items)`` exactly once.

    Args:
        num_items: the number of items, >= 0.
        num_shards: the number of shards, >= 1.
        index: the shard, in [0, num_shards).

    Returns:
        A ``range`` of positions.

    Example:
        >>> [list(shard_range(5, 2, r)) for r in range(2)]
        [[0, 1, 2], [3, 4]]
    """
    num_items = check_int("num_items", num_items, 0)
    num_shards = check_positive_int("num_shards", num_shards)
    index = check_int("index", index, 0)
    if index >= num_shards:
        raise ValueError(f"index must be a shard in [0, {num_shards}), got {index}")
    base, extra = divmod(num_items, num_shards)
    start = index * base + min(index, extra)
    return range(start, start + base + (index < extra))


def extract_features_sharded(
    model: nn.Module,
    records: Sequence[R],
    build_loader: Callable[[Sequence[R]], Iterable[Any]],
    ranks: RankGroup | None = None,
    device: torch.device | str | None = None,
    flip: bool = False,
    normalize: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`metareid.evaluation.extract_features` over ``records``, one shard per rank.

    Rank ``r`` runs ``extract_features(model, build_loader(shard_r), ...)`` on its
    contiguous shard (:func:`shard_range`) and the shards' outputs are gathered in rank
    order, so every rank returns the features of all records in record order: what one
    process returns, up to the floating-point effect of different batch boundaries
    (none for batch-independent models in eval mode). Ranking then runs once, typically on
    rank 0. Memory initialisation uses it the same way, with ``normalize=False``. Every
    rank must pass the same ``records`` and a model in the same state.

    Args:
        model: the network; every rank's copy must be identical.
        records: what to extract, e.g. ``dataset.query``; at least one per rank.
        build_loader: makes the loader of a shard, e.g.
            ``lambda recs: build_test_loader(recs, transform, batch_size=128)``.
        ranks: the group; ``None`` (default) is :class:`~metareid.distributed.ProcessRanks`
            on the default process group. With :class:`~metareid.distributed.MicroBatchRanks`
            the process extracts every shard itself.
        device: as in :func:`~metareid.evaluation.extract_features`.
        flip: as in :func:`~metareid.evaluation.extract_features`. Default False.
        normalize: as in :func:`~metareid.evaluation.extract_features`. Default True.

    Returns:
        ``(features, pids, camids)``: float32 (N, D), int64 (N,), int64 (N,), on the CPU,
        in record order, the same on every rank.

    Raises:
        ValueError: fewer records than ranks, or as
            :func:`~metareid.evaluation.extract_features`.
        TypeError: ``build_loader`` is not callable, or as
            :func:`~metareid.evaluation.extract_features`.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 2))
        >>> records = [(torch.randn(1, 3, 1, 1), torch.tensor([i]), torch.tensor([0])) for i in range(5)]
        >>> feats, pids, camids = extract_features_sharded(model, records, lambda shard: shard)
        >>> feats.shape, pids.tolist()
        (torch.Size([5, 2]), [0, 1, 2, 3, 4])
    """
    ranks = ProcessRanks() if ranks is None else ranks
    if not isinstance(ranks, RankGroup):
        raise TypeError(f"ranks must be a RankGroup or None, got {describe(ranks)}")
    if not callable(build_loader):
        raise TypeError(f"build_loader must be callable, got {describe(build_loader)}")
    items = list(records)
    if len(items) < ranks.num_ranks:
        raise ValueError(
            f"records must hold at least one item per rank ({ranks.num_ranks}), got {len(items)}"
        )
    outputs = []
    for r in ranks.local_ranks:
        positions = shard_range(len(items), ranks.num_ranks, r)
        shard = items[positions.start : positions.stop]
        outputs.append(
            extract_features(model, build_loader(shard), device, flip=flip, normalize=normalize)
        )
    feats = ranks.gather([f for f, _, _ in outputs])
    pids = ranks.gather([p for _, p, _ in outputs])
    camids = ranks.gather([c for _, _, c in outputs])
    return feats.cpu(), pids.cpu(), camids.cpu()
