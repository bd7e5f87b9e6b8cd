"""Internal helpers of the collectives: when they are active, on which device, agreement."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "active",
    "agree",
    "comm_device",
    "digest",
    "group_rank",
    "group_size",
    "tensor_signature",
]


def active(group: dist.ProcessGroup | None) -> bool:
    """True when collectives must run: a process group exists with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def group_size(group: dist.ProcessGroup | None) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def group_rank(group: dist.ProcessGroup | None) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 0
    return dist.get_rank(group)


def comm_device(group: dist.ProcessGroup | None, like: torch.device) -> torch.device:
    """Where a tensor must live for a collective: this rank's CUDA device under NCCL."""
    backend = str(dist.get_backend(group))
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    if backend == "gloo":
        return torch.device("cpu")
    return like


def digest(value: Any) -> int:
    """A signed 64-bit fingerprint of ``repr(value)``, equal on every rank for equal values."""
    raw = hashlib.sha256(repr(value).encode()).digest()[:8]
    return int.from_bytes(raw, "little", signed=True)


def agree(
    group: dist.ProcessGroup | None,
    signature: Any,
    extra: Sequence[int] = (),
) -> tuple[list[Any] | None, list[list[int]]]:
    """Exchange a fingerprint of ``signature`` (and a few ints) between all ranks.

    One all-gather of ``1 + len(extra)`` int64 values. Every rank sees the same answer,
    so every rank takes the same branch afterwards (no rank is left waiting).

    Returns:
        ``(None, extras)`` when all signatures agree, otherwise ``(signatures, extras)``
        with every rank's signature, in rank order (gathered with a second, pickled
        all-gather). ``extras[r]`` are the ints of rank ``r``.
    """
    world = dist.get_world_size(group)
    local = torch.tensor([digest(signature), *extra], dtype=torch.int64)
    local = local.to(comm_device(group, local.device))
    out = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(out, local, group=group)
    rows = [o.cpu().tolist() for o in out]
    extras = [row[1:] for row in rows]
    if all(row[0] == rows[0][0] for row in rows):
        return None, extras
    signatures: list[Any] = [None] * world
    dist.all_gather_object(signatures, signature, group=group)
    return signatures, extras


def tensor_signature(tensor: Tensor) -> tuple[tuple[int, ...], str]:
    """Trailing shape and dtype: what must agree between ranks to gather along dim 0."""
    return tuple(tensor.shape[1:]), str(tensor.dtype)
