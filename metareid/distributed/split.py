"""Split one domain's global P x K batch into N chunks of whole identities.

:class:`~metareid.data.IdentityBalancedSampler` lays a batch out as K consecutive samples
per identity, P identities in a row (``[a, a, a, a, b, b, b, b, ...]``). Rank ``r`` of N
gets identities ``r * P/N`` to ``(r + 1) * P/N - 1`` of that order, with all their
samples: a contiguous slice of the batch. Concatenating the chunks in rank order gives the
batch back, so a loss over the gathered chunks is a loss over the original batch, and
every identity's positives live on one rank (its BatchNorm and MetaBN statistics, like
DataParallel's per GPU, see whole identities).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from itertools import pairwise
from typing import Any

import torch
from torch import Tensor

from metareid._validation import check_int, check_positive_int, describe
from metareid.distributed.ranks import ProcessRanks, RankGroup

__all__ = ["identity_chunk", "local_chunks", "split_batch_by_identity", "split_batch_in_order"]


def _identity_runs(pids: object, pid_key: str) -> tuple[list[int], int]:
    """Start row of every identity run and the batch size; checks contiguity."""
    ids = pids if isinstance(pids, Tensor) else torch.as_tensor(pids)
    if ids.dim() != 1 or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(
            f"batch[{pid_key!r}] must hold one integer id per sample, shape (B,), got "
            f"{describe(pids)}"
        )
    if ids.numel() == 0:
        raise ValueError(f"batch[{pid_key!r}] must hold at least one sample, got an empty batch")
    ids = ids.detach().cpu()
    change = torch.ones(ids.shape[0], dtype=torch.bool)
    change[1:] = ids[1:] != ids[:-1]
    starts = torch.nonzero(change).flatten().tolist()
    if len(starts) != torch.unique(ids).numel():
        runs = Counter(int(ids[s]) for s in starts)
        split = sorted(pid for pid, count in runs.items() if count > 1)
        raise ValueError(
            f"batch[{pid_key!r}] must list each identity's samples contiguously (the layout of "
            f"IdentityBalancedSampler), but ids {split[:10]} appear in several runs"
        )
    return starts, ids.shape[0]


def _slice_value(key: str, value: Any, batch_size: int, start: int, stop: int) -> Any:
    if isinstance(value, Tensor):
        if value.dim() == 0:
            return value
        if value.shape[0] != batch_size:
            raise ValueError(
                f"batch[{key!r}] must have {batch_size} rows like batch's ids, got shape "
                f"{tuple(value.shape)}"
            )
        return value[start:stop]
    if isinstance(value, (list, tuple)):
        if len(value) != batch_size:
            raise ValueError(
                f"batch[{key!r}] must have {batch_size} entries like batch's ids, got {len(value)}"
            )
        return value[start:stop]
    return value


def split_batch_by_identity(
    batch: Mapping[str, Any], num_chunks: int, pid_key: str = "pid"
) -> list[dict[str, Any]]:
    """All N identity chunks of one domain's batch, in rank order.

    The batch's identities (runs of equal ``batch[pid_key]``) are dealt out in their batch
    order, P/N consecutive identities per chunk. Every tensor with a first dimension of B
    and every list or tuple of length B is sliced; 0-d tensors and other values (ints,
    strings) are copied into every chunk as they are. Slices of tensors are views. The
    concatenation of the chunks, key by key, is the batch.

    ``num_chunks=1`` returns ``[dict(batch)]``.

    Args:
        batch: a collated batch such as ``{"img": (B, C, H, W), "pid": (B,), "camid": (B,),
            "path": [B strings], ...}``, each identity's samples contiguous.
        num_chunks: N >= 1, dividing P, the number of identities of the batch.
        pid_key: the key of the identities. Default ``"pid"``.

    Returns:
        N dicts with the batch's keys.

    Raises:
        ValueError: P is not divisible by N, an identity appears in several runs, a value
            has the wrong length, or the ids are missing or not integers.
        TypeError: ``batch`` is not a mapping or ``num_chunks`` not an int.

    Example:
        >>> import torch
        >>> batch = {"img": torch.arange(8.0).view(8, 1), "pid": torch.tensor([5, 5, 2, 2, 7, 7, 1, 1])}
        >>> [chunk["pid"].tolist() for chunk in split_batch_by_identity(batch, 2)]
        [[5, 5, 2, 2], [7, 7, 1, 1]]
    """
    if not isinstance(batch, Mapping):
        raise TypeError(
            f"batch must be a mapping such as {{'img': ..., 'pid': ...}}, got {describe(batch)}"
        )
    num_chunks = check_positive_int("num_chunks", num_chunks)
    if pid_key not in batch:
        raise ValueError(f"batch has no key {pid_key!r} (keys: {sorted(map(str, batch))})")
    starts, batch_size = _identity_runs(batch[pid_key], pid_key)
    num_ids = len(starts)
    if num_ids % num_chunks:
        raise ValueError(
            f"num_chunks={num_chunks} must divide the number of identities of the batch "
            f"(P={num_ids}) so that every rank gets P/N whole identities; choose "
            f"num_identities as a multiple of the number of ranks"
        )
    per_chunk = num_ids // num_chunks
    bounds = [*starts[::per_chunk], batch_size]
    return [
        {key: _slice_value(str(key), v, batch_size, lo, hi) for key, v in batch.items()}
        for lo, hi in pairwise(bounds)
    ]


def split_batch_in_order(batch: Mapping[str, Any], num_chunks: int) -> list[dict[str, Any]]:
    """Cut a batch into consecutive chunks in batch order, as ``nn.DataParallel`` scatters it.

    The sizes are those of ``Tensor.chunk(num_chunks)`` along dim 0, which is how
    ``torch.nn.DataParallel`` cuts its inputs over ``num_chunks`` devices: ``ceil(B / N)``
    rows per chunk and the rest in the last one (64 over 3: 22, 22, 20), fewer chunks when
    B is small (4 over 3: 2, 2). Identities may be cut. Values are sliced as by
    :func:`split_batch_by_identity`; the batch size is read from ``batch["pid"]``.

    Args:
        batch: a collated batch with a ``"pid"`` entry of shape (B,).
        num_chunks: N >= 1, the number of devices.

    Returns:
        The chunks, at most N dicts with the batch's keys.

    Raises:
        ValueError: a value has the wrong length or the batch has no ``"pid"``.
        TypeError: ``batch`` is not a mapping or ``num_chunks`` not an int.

    Example:
        >>> import torch
        >>> batch = {"pid": torch.arange(8)}
        >>> [len(c["pid"]) for c in split_batch_in_order(batch, 3)]
        [3, 3, 2]
    """
    if not isinstance(batch, Mapping):
        raise TypeError(
            f"batch must be a mapping such as {{'img': ..., 'pid': ...}}, got {describe(batch)}"
        )
    num_chunks = check_positive_int("num_chunks", num_chunks)
    if "pid" not in batch:
        raise ValueError(f"batch has no key 'pid' (keys: {sorted(map(str, batch))})")
    pids = batch["pid"]
    batch_size = len(pids)
    if batch_size == 0:
        raise ValueError("batch['pid'] must hold at least one sample, got an empty batch")
    sizes = [len(c) for c in torch.arange(batch_size).chunk(num_chunks)]
    bounds = [0]
    for n in sizes:
        bounds.append(bounds[-1] + n)
    return [
        {key: _slice_value(str(key), v, batch_size, lo, hi) for key, v in batch.items()}
        for lo, hi in pairwise(bounds)
    ]


def identity_chunk(
    batch: Mapping[str, Any], num_chunks: int, index: int, pid_key: str = "pid"
) -> dict[str, Any]:
    """Chunk ``index`` of :func:`split_batch_by_identity`: rank ``index``'s share of the batch.

    Args:
        batch: the global batch, each identity's samples contiguous.
        num_chunks: N >= 1, dividing the number of identities.
        index: the rank, in [0, N).
        pid_key: the key of the identities. Default ``"pid"``.

    Returns:
        The chunk, a dict with the batch's keys.

    Raises:
        ValueError: ``index`` is outside [0, N), or as :func:`split_batch_by_identity`.

    Example:
        >>> import torch
        >>> batch = {"pid": torch.tensor([3, 3, 4, 4]), "camid": torch.tensor([0, 1, 0, 1])}
        >>> identity_chunk(batch, 2, 1)
        {'pid': tensor([4, 4]), 'camid': tensor([0, 1])}
    """
    index = check_int("index", index, 0)
    if index >= check_positive_int("num_chunks", num_chunks):
        raise ValueError(f"index must be a chunk in [0, {num_chunks}), got {index}")
    return split_batch_by_identity(batch, num_chunks, pid_key)[index]


def local_chunks(
    batch: Mapping[str, Any], ranks: RankGroup | None = None, pid_key: str = "pid"
) -> list[dict[str, Any]]:
    """The chunks of ``ranks.local_ranks``: one for a process rank, all N for micro-batches.

    Args:
        batch: the global batch of one domain (the same on every rank).
        ranks: the group; ``None`` (default) is :class:`~metareid.distributed.ProcessRanks`
            on the default process group (the whole batch without one).
        pid_key: the key of the identities. Default ``"pid"``.

    Returns:
        One chunk per local rank, in the order of ``ranks.local_ranks``.

    Example:
        >>> import torch
        >>> from metareid.distributed import MicroBatchRanks
        >>> batch = {"pid": torch.tensor([3, 3, 4, 4])}
        >>> len(local_chunks(batch)), len(local_chunks(batch, MicroBatchRanks(2)))
        (1, 2)
    """
    ranks = ProcessRanks() if ranks is None else ranks
    if not isinstance(ranks, RankGroup):
        raise TypeError(f"ranks must be a RankGroup or None, got {describe(ranks)}")
    chunks = split_batch_by_identity(batch, ranks.num_ranks, pid_key)
    return [chunks[r] for r in ranks.local_ranks]
