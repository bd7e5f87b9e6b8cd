"""The M3L losses of one domain batch (Eq. 3, 4, 8 and 10), from the model's outputs.

:class:`M3LObjective` computes the loss of one domain's whole batch from its
:class:`~metareid.engine.chunks.BatchOutputs`, and nothing else: how the batch was cut,
where its chunks ran and how they were gathered is :mod:`metareid.engine.chunks`; one
training iteration (forwards, meta step, memory updates) is :mod:`metareid.engine.step`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metareid.config import ID_LOSSES
from metareid.engine.chunks import BatchOutputs
from metareid.functional.memory_id import memory_id_loss
from metareid.losses.memory_id import MemoryIDLoss
from metareid.losses.triplet import HardTripletLoss
from metareid.memory.bank import MemoryBank

__all__ = ["M3LObjective"]


class M3LObjective:
    """The loss of one domain batch: identification (memory or FC) plus batch-hard triplet.

    For one domain's :class:`~metareid.engine.chunks.BatchOutputs` it returns the memory
    loss (Eq. 3) of the ``features`` (the L2-normalised BNNeck output; MetaBN's ``k``
    mixtures in meta-test, scored with their labels repeated, the average of Eq. 10) plus
    the batch-hard triplet loss (Eq. 4) of the ``pooled`` pre-neck features: Eq. 8 for a
    meta-train (or plain) batch, Eq. 10 for the meta-test batch. Table 5's FC classifiers
    replace the memory with ``id_loss="fc_global"`` / ``"fc_domain"``.

    The memory loss averages its per-row losses as the outputs say
    (:attr:`~metareid.engine.chunks.BatchOutputs.memory_mean`): over all rows, or, for the
    published code's ``nn.DataParallel``, the mean of every chunk's mean.

    Args:
        memories: One :class:`~metareid.MemoryBank` per source domain (may be empty when
            ``id_loss`` is not ``"memory"``).
        num_domains: Number of source domains.
        id_loss: ``"memory"`` (default, Eq. 3), ``"fc_global"`` / ``"fc_domain"`` (Table 5,
            cross-entropy on the model's ``logits``), or ``"none"``.
        triplet: Add the triplet loss (default ``True``).
        memory_loss: The memory loss module (default ``MemoryIDLoss(temperature=0.05)``).
        triplet_loss: The triplet loss module (default ``HardTripletLoss(margin=0.3)``).
        pid_offsets: First global identity of each domain, for ``"fc_global"``.

    Example:
        >>> import torch, torch.nn.functional as F
        >>> from metareid import MemoryBank
        >>> from metareid.engine import BatchOutputs, M3LObjective
        >>> bank = MemoryBank(2, 4)
        >>> bank.init_from(F.normalize(torch.randn(2, 4), dim=1), torch.arange(2))
        >>> out = BatchOutputs(pooled=torch.randn(4, 4), features=F.normalize(torch.randn(4, 4)),
        ...                    logits=None, pids=torch.tensor([0, 0, 1, 1]))
        >>> M3LObjective([bank], num_domains=1).loss(out, domain=0).shape
        torch.Size([])
    """

    def __init__(
        self,
        memories: Sequence[MemoryBank] | nn.ModuleList,
        num_domains: int,
        *,
        id_loss: Literal["memory", "fc_global", "fc_domain", "none"] = "memory",
        triplet: bool = True,
        memory_loss: nn.Module | None = None,
        triplet_loss: nn.Module | None = None,
        pid_offsets: Sequence[int] | None = None,
    ) -> None:
        if id_loss not in ID_LOSSES:
            raise ValueError(f"id_loss must be one of {ID_LOSSES}; got {id_loss!r}")
        if isinstance(num_domains, bool) or not isinstance(num_domains, int) or num_domains < 1:
            raise ValueError(f"num_domains must be an int >= 1, got {num_domains!r}")
        memories = list(cast(Sequence[MemoryBank], memories))
        if id_loss == "memory" and len(memories) != num_domains:
            raise ValueError(
                f"id_loss='memory' needs one MemoryBank per domain ({num_domains}), got "
                f"{len(memories)}"
            )
        for i, m in enumerate(memories):
            if not isinstance(m, MemoryBank):
                raise TypeError(f"memories[{i}] must be a MemoryBank, got {type(m).__name__}")
        if id_loss == "fc_global" and (pid_offsets is None or len(pid_offsets) != num_domains):
            raise ValueError("id_loss='fc_global' needs pid_offsets with one entry per domain")
        self.memories = memories
        self.num_domains = num_domains
        self.id_loss = id_loss
        self.triplet = bool(triplet)
        self.memory_loss = memory_loss if memory_loss is not None else MemoryIDLoss(0.05)
        self.triplet_loss = triplet_loss if triplet_loss is not None else HardTripletLoss(0.3)
        self.pid_offsets = None if pid_offsets is None else [int(o) for o in pid_offsets]

    def loss(self, out: BatchOutputs, domain: int) -> Tensor:
        """Eq. 8 (meta-train, plain step) or Eq. 10 (meta-test) of one domain's batch.

        Args:
            out: the whole batch's outputs (:meth:`~metareid.engine.chunks.BatchSplit.forward`).
            domain: the domain index (its memory, its classifier).

        Returns:
            The scalar loss.
        """
        if not isinstance(out, BatchOutputs):
            raise TypeError(f"out must be a BatchOutputs, got {type(out).__name__}")
        if not 0 <= domain < self.num_domains:
            raise ValueError(f"domain must lie in [0, {self.num_domains}), got {domain}")
        labels = out.labels
        loss = out.features.new_zeros(())
        if self.id_loss == "memory":
            loss = loss + self._memory_term(out, labels, self.memories[domain])
        elif self.id_loss == "fc_global":
            assert self.pid_offsets is not None
            loss = loss + F.cross_entropy(_logits(out.logits), labels + self.pid_offsets[domain])
        elif self.id_loss == "fc_domain":
            loss = loss + F.cross_entropy(_logits(out.logits, domain), labels)
        if self.triplet:
            loss = loss + self.triplet_loss(out.pooled, out.pids)
        return loss

    __call__ = loss

    def _memory_term(self, out: BatchOutputs, labels: Tensor, memory: MemoryBank) -> Tensor:
        if out.memory_mean == "samples" or len(out.chunk_sizes) <= 1:
            return cast(Tensor, self.memory_loss(out.features, labels, memory))
        if not isinstance(self.memory_loss, MemoryIDLoss):
            raise TypeError(
                "a mean of chunk means (DataParallelSplit) needs memory_loss to be a "
                f"MemoryIDLoss, got {type(self.memory_loss).__name__}"
            )
        rows = memory_id_loss(
            out.features,
            labels,
            memory.snapshot(out.features.dtype),
            self.memory_loss.temperature,
            reduction="none",
        )
        # Rows are mixture-major: mixture i of chunk c is one slice of rows.
        means = [chunk.mean() for chunk in rows.split(list(out.chunk_sizes) * out.mixtures)]
        return torch.stack(means).mean()


def _logits(logits: Tensor | list[Tensor] | None, domain: int | None = None) -> Tensor:
    if logits is None:
        raise RuntimeError("id_loss needs classifier heads but the model has none")
    if domain is None:
        return cast(Tensor, logits)
    return cast(list[Tensor], logits)[domain]
