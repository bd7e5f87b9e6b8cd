"""Ranks, real or emulated: one interface for N processes and for N micro-batches.

M3L on N ranks splits each domain's P x K batch into N identity chunks, runs the network
on each chunk separately (BatchNorm and MetaBN statistics per chunk, as DataParallel per
GPU) and combines the chunks only where the method needs the whole batch: batch-hard
mining, the memory loss's average, the memory update and the gradients.

:class:`RankGroup` names these combination points. A process computes the chunks of its
:attr:`~RankGroup.local_ranks` and hands their tensors to the group as a list, one entry
per local rank:

* :class:`ProcessRanks`: one chunk per process (or M, ``chunks_per_process``), combined
  through ``torch.distributed`` (``torchrun``); with no process group and M = 1 it is the
  single-process identity.
* :class:`MicroBatchRanks`: all N chunks in one process (``--micro-batches N``); the
  combinations are plain concatenations, so one process reproduces N ranks.

:class:`metareid.engine.IdentitySplit` gathers the chunks' outputs with
:meth:`RankGroup.gather_with_grad` and every process computes the whole batch's loss; the
gather's backward sums what every process sends back, so each of the W processes holds W
times its chunks' share of the gradient, and the mean over processes
(:meth:`RankGroup.all_reduce_mean` for the meta-train gradient,
:meth:`RankGroup.all_reduce_grads_` for ``.grad``) is exactly the whole batch's gradient,
for both kinds of group.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from metareid._validation import check_positive_int, describe
from metareid.distributed._layout import group_rank, group_size
from metareid.distributed.collectives import (
    all_gather_concat,
    all_gather_concat_with_grad,
    all_reduce_grads_,
    all_reduce_mean,
    broadcast_object,
)

__all__ = ["MicroBatchRanks", "ProcessRanks", "RankGroup", "as_parts"]

T = TypeVar("T")


def as_parts(value: Tensor | Sequence[Tensor], count: int, name: str) -> list[Tensor]:
    """``value`` as a list of ``count`` tensors, one per local rank (a tensor counts as one).

    Example:
        >>> import torch
        >>> len(as_parts(torch.zeros(2, 3), 1, "features"))
        1
    """
    parts = (
        [value]
        if isinstance(value, Tensor)
        else list(value)
        if isinstance(value, Sequence)
        else None
    )
    if parts is None or not all(isinstance(p, Tensor) for p in parts):
        raise TypeError(
            f"{name} must be a tensor or a sequence of tensors (one per local rank), got "
            f"{describe(value)}"
        )
    if len(parts) != count:
        raise ValueError(
            f"{name} must hold one tensor per local rank of the group ({count}), got {len(parts)}"
        )
    return parts


class RankGroup(ABC):
    """The ranks of a job and the chunks this process computes; see the module docstring.

    Every method that takes ``parts`` expects one tensor per local rank, in the order of
    :attr:`local_ranks` (a single tensor is accepted when there is one local rank).
    """

    @property
    @abstractmethod
    def num_ranks(self) -> int:
        """N, the number of ranks (real or emulated) the batch is split across."""

    @property
    @abstractmethod
    def local_ranks(self) -> tuple[int, ...]:
        """The ranks whose chunks this process computes, increasing."""

    @abstractmethod
    def gather(self, parts: Tensor | Sequence[Tensor]) -> Tensor:
        """All ranks' tensors concatenated along dim 0 in rank order, detached."""

    @abstractmethod
    def gather_with_grad(self, parts: Tensor | Sequence[Tensor]) -> Tensor:
        """Like :meth:`gather`, differentiable back to every rank's part."""

    @abstractmethod
    def all_reduce_mean(self, tensors: Sequence[Tensor | None]) -> list[Tensor | None]:
        """Mean over processes, differentiable; the identity when one process holds all ranks."""

    @abstractmethod
    def all_reduce_grads_(self, params: Iterable[Tensor]) -> None:
        """Average ``.grad`` over processes, in place; a no-op for a single process."""

    @abstractmethod
    def broadcast_object(self, obj: T) -> T:
        """The main process's ``obj`` on every process."""

    def sizes(self, parts: Tensor | Sequence[Tensor]) -> list[int]:
        """The first dimension of every rank's part, in rank order.

        Example:
            >>> import torch
            >>> MicroBatchRanks(2).sizes([torch.zeros(3), torch.zeros(1)])
            [3, 1]
        """
        local = as_parts(parts, len(self.local_ranks), "parts")
        counts = [torch.tensor([p.shape[0] if p.dim() else 1], dtype=torch.int64) for p in local]
        return [int(n) for n in self.gather(counts)]

    def offsets(self, parts: Tensor | Sequence[Tensor]) -> list[int]:
        """Where each rank's rows start in the gathered tensor; ``num_ranks + 1`` entries.

        Example:
            >>> import torch
            >>> MicroBatchRanks(2).offsets([torch.zeros(3), torch.zeros(1)])
            [0, 3, 4]
        """
        out = [0]
        for n in self.sizes(parts):
            out.append(out[-1] + n)
        return out


class ProcessRanks(RankGroup):
    """Ranks spread over processes, combined through ``torch.distributed`` (``torchrun``).

    By default one rank per process. With ``chunks_per_process=M`` every process computes
    M consecutive ranks as micro-batches, process ``p`` ranks ``p * M`` to ``p * M + M - 1``
    of N = world size x M: the same N chunks, so W processes with M micro-batches each give
    what W x M processes (or one process with ``MicroBatchRanks(W * M)``) give.

    Reads the rank and world size from ``group`` at every call, so it may be built before
    the process group; without one it is a single process and, with M = 1, every method is
    the identity.

    Args:
        group: process group; ``None`` (default) is the default group.
        chunks_per_process: M >= 1, the ranks each process computes. Default 1.

    Example:
        >>> import torch
        >>> ranks = ProcessRanks()  # no process group: one rank
        >>> ranks.num_ranks, ranks.local_ranks
        (1, (0,))
        >>> ranks.gather(torch.tensor([3, 1]))
        tensor([3, 1])
        >>> ProcessRanks(chunks_per_process=2).local_ranks
        (0, 1)
    """

    def __init__(self, group: dist.ProcessGroup | None = None, chunks_per_process: int = 1) -> None:
        self.group = group
        self.chunks_per_process = check_positive_int("chunks_per_process", chunks_per_process)

    @property
    def num_ranks(self) -> int:
        return group_size(self.group) * self.chunks_per_process

    @property
    def local_ranks(self) -> tuple[int, ...]:
        m = self.chunks_per_process
        first = group_rank(self.group) * m
        return tuple(range(first, first + m))

    def _cat(self, parts: Tensor | Sequence[Tensor]) -> Tensor:
        local = as_parts(parts, self.chunks_per_process, "parts")
        if len(local) == 1:
            return local[0]
        if any(p.dim() == 0 for p in local):
            raise ValueError("parts must have a first (batch) dimension, got a 0-d tensor")
        return torch.cat(local)

    def gather(self, parts: Tensor | Sequence[Tensor]) -> Tensor:
        return all_gather_concat(self._cat(parts), self.group)

    def gather_with_grad(self, parts: Tensor | Sequence[Tensor]) -> Tensor:
        return all_gather_concat_with_grad(self._cat(parts), self.group)

    def all_reduce_mean(self, tensors: Sequence[Tensor | None]) -> list[Tensor | None]:
        return all_reduce_mean(tensors, self.group)

    def all_reduce_grads_(self, params: Iterable[Tensor]) -> None:
        all_reduce_grads_(params, self.group)

    def broadcast_object(self, obj: T) -> T:
        return broadcast_object(obj, 0, self.group)

    def __repr__(self) -> str:
        m = self.chunks_per_process
        extra = "" if m == 1 else f", chunks_per_process={m}"
        return f"ProcessRanks(num_ranks={self.num_ranks}, rank={group_rank(self.group)}{extra})"


class MicroBatchRanks(RankGroup):
    """N emulated ranks in one process: every chunk is local, combinations concatenate.

    The single-process twin of :class:`ProcessRanks` for ``--micro-batches N``: run the
    network on each of the N chunks of :func:`~metareid.distributed.split_batch_by_identity`
    (per-chunk statistics), pass the N outputs as ``parts``, and the loss helpers and
    memory updates give what N processes would give. Gradients need no reduction: the
    helpers already return the mean over the N ranks, so :meth:`all_reduce_mean` and
    :meth:`all_reduce_grads_` are the identity.

    Args:
        num_ranks: N >= 1. ``MicroBatchRanks(1)`` is the plain single-process computation.

    Example:
        >>> import torch
        >>> ranks = MicroBatchRanks(2)
        >>> ranks.local_ranks
        (0, 1)
        >>> ranks.gather([torch.tensor([1, 2]), torch.tensor([3])])
        tensor([1, 2, 3])
    """

    def __init__(self, num_ranks: int) -> None:
        self._num_ranks = check_positive_int("num_ranks", num_ranks)

    @property
    def num_ranks(self) -> int:
        return self._num_ranks

    @property
    def local_ranks(self) -> tuple[int, ...]:
        return tuple(range(self._num_ranks))

    def _cat(self, parts: Tensor | Sequence[Tensor]) -> Tensor:
        local = as_parts(parts, self._num_ranks, "parts")
        if any(p.dim() == 0 for p in local):
            raise ValueError("parts must have a first (batch) dimension, got a 0-d tensor")
        return local[0] if len(local) == 1 else torch.cat(local)

    def gather(self, parts: Tensor | Sequence[Tensor]) -> Tensor:
        return self._cat(parts).detach()

    def gather_with_grad(self, parts: Tensor | Sequence[Tensor]) -> Tensor:
        return self._cat(parts)

    def all_reduce_mean(self, tensors: Sequence[Tensor | None]) -> list[Tensor | None]:
        return list(tensors)

    def all_reduce_grads_(self, params: Iterable[Tensor]) -> None:
        return None

    def broadcast_object(self, obj: T) -> T:
        return obj

    def __repr__(self) -> str:
        return f"MicroBatchRanks(num_ranks={self._num_ranks})"
