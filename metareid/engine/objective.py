"""The M3L training objective: the losses of Eq. 8-10, the memories of Eq. 2, one iteration.

:class:`M3LObjective` is what the :class:`~metareid.engine.Trainer` runs every iteration,
usable on its own with any model that returns :class:`~metareid.models.ReIDOutput`-like
outputs (``pooled``, ``features``, ``logits``) in train mode.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metareid.losses.memory_id import MemoryIDLoss
from metareid.losses.triplet import HardTripletLoss
from metareid.memory.bank import MemoryBank
from metareid.meta.learner import MetaLearner, MetaStepResult
from metareid.meta.phase import Phase

__all__ = ["M3LObjective"]

_ID_LOSSES = ("memory", "fc_global", "fc_domain", "none")
_TIMINGS = ("step", "after")


class M3LObjective:
    """Losses, memories and phase handling of one M3L iteration (Algorithm 1, Eq. 2-10).

    :meth:`loss` is the ``loss_fn`` of :class:`~metareid.MetaLearner`: for one domain's
    batch it returns ``(L, aux)`` with ``L`` the memory loss (Eq. 3, on the model's
    ``features``, the L2-normalised BNNeck output) plus the batch-hard triplet loss
    (Eq. 4, on the ``pooled`` pre-neck feature), i.e. Eq. 8 in phase
    :attr:`Phase.META_TRAIN` and :attr:`Phase.NORMAL`, and Eq. 10 in
    :attr:`Phase.META_TEST`. ``aux`` holds the detached features that may be written
    into the domain's memory, or ``None`` where they must not.

    Which features reach a memory is decided by the phase, never by tensor shapes: in
    phase ``META_TEST`` with ``metabn=True`` the model returns one MetaBN mixture per
    meta-train domain (``k * B`` rows, ``k = num_domains - 1``), each a blend with other
    domains' statistics; they are scored against the meta-test memory with
    ``labels.repeat(k)`` (the average of Eq. 10) and never written into it, with any
    number of sources (with two, ``k = 1`` and the mixture has the batch's size).

    :meth:`step` runs one iteration: a plain step on the mean loss over domains
    (``learner=None``, the baseline) or ``learner.step`` (the meta step), then the memory
    updates. ``memory_update_timing="step"`` (the paper) writes the features of the
    step's own forwards: the meta-train domains' at ``Theta`` and, without MetaBN, the
    meta-test domain's at ``Theta'``, in the order the losses ran. ``"after"`` (the
    published code) runs an extra no-grad forward of every source batch in train mode
    after the outer step (moving BatchNorm running statistics a second time) and writes
    those features, domain by domain.

    Args:
        memories: One :class:`~metareid.MemoryBank` per source domain (empty when
            ``id_loss`` is not ``"memory"``).
        num_domains: Number of source domains.
        id_loss: ``"memory"`` (default, Eq. 3), ``"fc_global"`` / ``"fc_domain"`` (Table 5,
            cross-entropy on the model's ``logits``), or ``"none"``.
        triplet: Add the triplet loss (default ``True``).
        memory_loss: The memory loss module (default ``MemoryIDLoss(temperature=0.05)``).
        triplet_loss: The triplet loss module (default ``HardTripletLoss(margin=0.3)``).
        metabn: Whether the model's neck is a MetaBN that mixes in phase ``META_TEST``
            (method ``"m3l"``). Default ``True``.
        memory_update_timing: ``"step"`` (default, paper) or ``"after"`` (published code).
        pid_offsets: First global identity of each domain, for ``"fc_global"``.
        autocast: Zero-argument callable returning the context manager that model forwards
            run in (e.g. ``torch.autocast``); default: none.

    Example:
        >>> import torch, torch.nn.functional as F
        >>> from torch import nn
        >>> from metareid import MemoryBank
        >>> from metareid.models import ReIDModel
        >>> from metareid.engine import M3LObjective
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = ReIDModel(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()))
        >>> banks = [MemoryBank(4, 8) for _ in range(2)]
        >>> for b in banks:
        ...     b.init_from(F.normalize(torch.randn(4, 8), dim=1), torch.arange(4))
        >>> obj = M3LObjective(banks, num_domains=2, metabn=False)
        >>> batches = [{"img": torch.randn(8, 3, 16, 8), "pid": torch.arange(4).repeat(2)}
        ...            for _ in range(2)]
        >>> opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        >>> sorted(obj.step(model, batches, opt))
        ['loss']
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
        metabn: bool = True,
        memory_update_timing: Literal["step", "after"] = "step",
        pid_offsets: Sequence[int] | None = None,
        autocast: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    ) -> None:
        if id_loss not in _ID_LOSSES:
            raise ValueError(f"id_loss must be one of {_ID_LOSSES}; got {id_loss!r}")
        if memory_update_timing not in _TIMINGS:
            raise ValueError(
                f"memory_update_timing must be one of {_TIMINGS}; got {memory_update_timing!r}"
            )
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
        self.metabn = bool(metabn)
        self.memory_update_timing = memory_update_timing
        self.pid_offsets = None if pid_offsets is None else [int(o) for o in pid_offsets]
        self.autocast = autocast or contextlib.nullcontext

    # ------------------------------------------------------------------ the loss
    def mixtures(self, phase: Phase | str) -> int:
        """How many rows per sample the model returns in ``phase`` (MetaBN mixtures).

        Example:
            >>> M3LObjective([], 3, id_loss="none").mixtures("meta_test")
            2
        """
        if self.metabn and Phase(phase) is Phase.META_TEST:
            return self.num_domains - 1
        return 1

    def loss(
        self, model: nn.Module, batch: dict[str, Any], domain: int, phase: Phase | str
    ) -> tuple[Tensor, dict[str, Tensor] | None]:
        """Eq. 8 (meta-train, plain step) / Eq. 10 (meta-test) on one domain's batch.

        Args:
            model: The model (or its patched copy at ``Theta'``), in train mode.
            batch: ``{"img": (B, 3, H, W), "pid": (B,)}`` with domain-local identities.
            domain: The domain index.
            phase: The :class:`Phase` of the call.

        Returns:
            ``(loss, aux)``: ``aux = {"features": (B, D), "pid": (B,)}`` detached, when
            these features may update the memory of ``domain``; ``None`` for MetaBN
            mixtures.

        Raises:
            RuntimeError: if the model returns a tensor (eval mode) or a number of rows
                other than ``mixtures(phase) * B``.
        """
        phase = Phase(phase)
        images, pids = batch["img"], batch["pid"]
        with self.autocast():
            out = model(images)
        if isinstance(out, Tensor):
            raise RuntimeError("the model returned a tensor in train mode; call model.train()")
        feats, pooled = _full_precision(out.features), _full_precision(out.pooled)
        reps = self.mixtures(phase)
        if feats.shape[0] != reps * pids.shape[0]:
            raise RuntimeError(
                f"in phase {phase.value!r} the model returned {feats.shape[0]} feature rows "
                f"for a batch of {pids.shape[0]}; expected {reps} x {pids.shape[0]} "
                f"({'MetaBN mixtures' if reps > 1 or self.metabn else 'no mixing'})"
            )
        labels = pids.repeat(reps)
        loss = feats.new_zeros(())
        if self.id_loss == "memory":
            loss = loss + self.memory_loss(feats, labels, self.memories[domain])
        elif self.id_loss == "fc_global":
            assert self.pid_offsets is not None
            logits = _full_precision(_logits(out.logits))
            loss = loss + F.cross_entropy(logits, labels + self.pid_offsets[domain])
        elif self.id_loss == "fc_domain":
            loss = loss + F.cross_entropy(_full_precision(_logits(out.logits, domain)), labels)
        if self.triplet:
            loss = loss + self.triplet_loss(pooled, pids)
        mixed = phase is Phase.META_TEST and self.metabn
        aux = None if mixed else {"features": feats.detach(), "pid": pids}
        return loss, aux

    # ------------------------------------------------------------------ one iteration
    def step(
        self,
        model: nn.Module,
        batches: Sequence[dict[str, Any]],
        optimizer: torch.optim.Optimizer,
        learner: MetaLearner | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
    ) -> dict[str, float]:
        """One training iteration on one batch per domain, memory updates included.

        Args:
            model: The model (train mode); the one ``learner`` wraps, if any.
            batches: One batch per source domain, in domain order.
            optimizer: The outer optimiser.
            learner: ``None`` for a plain step on the mean loss over domains (baseline),
                else the :class:`~metareid.MetaLearner` that runs the meta step.
            grad_scaler: For fp16 in the plain step (a meta step uses the learner's own).

        Returns:
            ``{"loss": ...}`` (baseline), or also ``meta_train_loss``, ``meta_test_loss``
            and ``meta_test_domain``.
        """
        if len(batches) != self.num_domains:
            raise ValueError(
                f"batches must hold one batch per domain ({self.num_domains}), got {len(batches)}"
            )
        written: list[tuple[int, dict[str, Tensor] | None]]
        if learner is None:
            optimizer.zero_grad(set_to_none=True)
            outputs = [self.loss(model, b, d, Phase.NORMAL) for d, b in enumerate(batches)]
            loss = torch.stack([o[0] for o in outputs]).mean()
            if grad_scaler is not None:
                grad_scaler.scale(loss).backward()
                grad_scaler.step(optimizer)
                grad_scaler.update()
            else:
                loss.backward()
                optimizer.step()
            out = {"loss": float(loss.detach())}
            written = [(d, o[1]) for d, o in enumerate(outputs)]
        else:
            res = learner.step(batches, self.loss)
            out = {
                "loss": res.meta_train_loss + res.meta_test_loss,
                "meta_train_loss": res.meta_train_loss,
                "meta_test_loss": res.meta_test_loss,
                "meta_test_domain": float(res.meta_test_domain),
            }
            written = self._written(res)
        self.update_memories(model, batches, written)
        return out

    @staticmethod
    def _written(res: MetaStepResult) -> list[tuple[int, dict[str, Tensor] | None]]:
        pairs = list(zip(res.meta_train_domains, res.meta_train_aux, strict=True))
        pairs.append((res.meta_test_domain, res.meta_test_aux))
        return pairs

    def update_memories(
        self,
        model: nn.Module,
        batches: Sequence[dict[str, Any]],
        written: Sequence[tuple[int, dict[str, Tensor] | None]],
    ) -> None:
        """Eq. 2 after the outer step: the step's own features, or an extra forward.

        Args:
            model: The model after the outer step (used by ``"after"`` timing only).
            batches: The iteration's batches.
            written: ``(domain, aux)`` pairs in the order the losses ran (``aux`` from
                :meth:`loss`; ``None`` entries are skipped).
        """
        if self.id_loss != "memory":
            return
        if self.memory_update_timing == "after":
            with torch.no_grad(), self.autocast():
                for d, b in enumerate(batches):
                    out = model(b["img"])
                    if isinstance(out, Tensor):
                        raise RuntimeError("the model returned a tensor in train mode")
                    self.memories[d].update(_full_precision(out.features), b["pid"])
            return
        for d, aux in written:
            if aux is not None:
                self.memories[d].update(aux["features"], aux["pid"])


def _full_precision(t: Tensor) -> Tensor:
    """Autocast's float16/bfloat16 outputs as float32; float32 and float64 as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _logits(logits: Any, domain: int | None = None) -> Tensor:
    if logits is None:
        raise RuntimeError("id_loss needs classifier heads but the model has none")
    if domain is None:
        return logits
    return logits[domain]
