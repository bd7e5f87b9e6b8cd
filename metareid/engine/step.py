"""One M3L training iteration: forwards, losses, the (meta) step, the memory updates.

:class:`M3LStep` runs Algorithm 1 once on one batch per source domain, top to bottom:

1. every forward goes through the :class:`~metareid.engine.chunks.BatchSplit` (the whole
   batch, identity chunks over ranks or micro-batches, or DataParallel's chunks), which
   returns the whole batch's outputs;
2. :class:`~metareid.engine.M3LObjective` turns them into the loss of Eq. 8 / Eq. 10;
3. the optimiser step: a plain step on the mean loss over domains (the baseline) or
   :meth:`metareid.MetaLearner.step` (the meta step), with :meth:`loss_fn` as its loss;
4. the memories (Eq. 2): the step's own features, or an extra forward (the published
   code's timing);
5. :meth:`~metareid.engine.chunks.BatchSplit.after_step` (running statistics averaged over
   processes).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from metareid.engine.chunks import (
    Autocast,
    BatchOutputs,
    BatchSplit,
    IdentitySplit,
    RecomputedBatch,
)
from metareid.engine.objective import M3LObjective
from metareid.meta.learner import MetaLearner, MetaStepResult
from metareid.meta.phase import Phase

__all__ = ["MEMORY_UPDATE_TIMINGS", "M3LStep"]

#: Accepted values of ``memory_update_timing``.
MEMORY_UPDATE_TIMINGS = ("step", "after")

Written = list[tuple[int, "dict[str, Tensor] | None"]]


class M3LStep:
    """One training iteration of M3L; see the module docstring.

    Which features reach a memory is decided by the phase, never by tensor shapes: the
    meta-test domain's features are MetaBN mixtures when the model mixes, and are never
    written into its memory. ``memory_update_timing="step"`` (the paper) writes the
    features of the step's own forwards: the meta-train domains' at ``Theta`` and, without
    MetaBN, the meta-test domain's at ``Theta'``, in the order the losses ran. ``"after"``
    (the published code, ``reid/trainers.py:108-113``) runs an extra no-grad forward of
    every source batch in train mode after the outer step (moving BatchNorm running
    statistics a second time) and writes those features, domain by domain.

    Args:
        objective: the losses.
        split: how batches are cut and combined; ``None`` (default): the whole batch.
        memory_update_timing: ``"step"`` (default, paper) or ``"after"`` (published code).
        autocast: zero-argument callable returning the context of the model forwards
            (e.g. ``torch.autocast``); default: none.

    Example:
        >>> import torch, torch.nn.functional as F
        >>> from torch import nn
        >>> from metareid import MemoryBank
        >>> from metareid.models import ReIDModel
        >>> from metareid.engine import M3LObjective, M3LStep
        >>> _ = torch.manual_seed(0)
        >>> model = ReIDModel(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()))
        >>> banks = [MemoryBank(4, 8) for _ in range(2)]
        >>> for b in banks:
        ...     b.init_from(F.normalize(torch.randn(4, 8), dim=1), torch.arange(4))
        >>> step = M3LStep(M3LObjective(banks, num_domains=2))
        >>> batches = [{"img": torch.randn(8, 3, 16, 8), "pid": torch.arange(4).repeat(2)}
        ...            for _ in range(2)]
        >>> opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        >>> sorted(step(model, batches, opt))
        ['loss']
    """

    def __init__(
        self,
        objective: M3LObjective,
        split: BatchSplit | None = None,
        *,
        memory_update_timing: Literal["step", "after"] = "step",
        autocast: Autocast | None = None,
    ) -> None:
        if not isinstance(objective, M3LObjective):
            raise TypeError(f"objective must be an M3LObjective, got {type(objective).__name__}")
        if split is not None and not isinstance(split, BatchSplit):
            raise TypeError(f"split must be a BatchSplit or None, got {type(split).__name__}")
        if memory_update_timing not in MEMORY_UPDATE_TIMINGS:
            raise ValueError(
                f"memory_update_timing must be one of {MEMORY_UPDATE_TIMINGS}; got "
                f"{memory_update_timing!r}"
            )
        self.objective = objective
        self.split = split if split is not None else IdentitySplit()
        self.memory_update_timing = memory_update_timing
        self.autocast = autocast or contextlib.nullcontext
        self._generators: Sequence[torch.Generator] | None = None

    # ------------------------------------------------------------------ the loss
    def loss_fn(
        self, model: nn.Module, batch: Mapping[str, Any], domain: int, phase: Phase | str
    ) -> tuple[Tensor, dict[str, Tensor] | None]:
        """The ``loss_fn`` of :class:`~metareid.MetaLearner`: ``(loss, aux)`` of one batch.

        ``aux = {"features": (B, D), "pid": (B,)}`` (detached, the whole batch) when these
        features may update the memory of ``domain``, ``None`` for MetaBN mixtures.
        """
        out = self.split.forward(
            model, batch, phase, generators=self._generators, autocast=self.autocast
        )
        loss = self.objective.loss(out, domain)
        aux = _memory_aux(out)
        return loss, aux

    # ------------------------------------------------------------------ one iteration
    def __call__(
        self,
        model: nn.Module,
        batches: Sequence[Mapping[str, Any]],
        optimizer: torch.optim.Optimizer,
        learner: MetaLearner | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
        *,
        meta_test: int | None = None,
        generators: Sequence[torch.Generator] | None = None,
    ) -> dict[str, float]:
        """One training iteration on one batch per domain, memory updates included.

        Args:
            model: the model (train mode); the one ``learner`` wraps, if any.
            batches: one batch per source domain, in domain order.
            optimizer: the outer optimiser.
            learner: ``None`` for a plain step on the mean loss over domains (baseline),
                else the :class:`~metareid.MetaLearner` that runs the meta step.
            grad_scaler: for fp16 in the plain step (a meta step uses the learner's own).
            meta_test: the meta-test domain (meta step only); ``None`` lets ``learner``
                draw it.
            generators: one ``torch.Generator`` per local chunk of the split for the
                MetaBN draws of that chunk; ``None`` (default) keeps the layers' own.

        Returns:
            ``{"loss": ...}`` (baseline), or also ``meta_train_loss``, ``meta_test_loss``,
            ``meta_test_domain``, ``meta_train_grad_norm`` and ``meta_test_grad_norm``.
            The losses are the whole batch's, the same in every process.
        """
        if len(batches) != self.objective.num_domains:
            raise ValueError(
                f"batches must hold one batch per domain ({self.objective.num_domains}), got "
                f"{len(batches)}"
            )
        if generators is not None:
            local = self.split.num_local_chunks
            if len(generators) != local or not all(
                isinstance(g, torch.Generator) for g in generators
            ):
                raise ValueError(
                    f"generators must hold one torch.Generator per local chunk ({local}), got "
                    f"{len(generators)} items"
                )
        self._generators = generators
        try:
            if learner is None:
                out, written = self._plain_step(model, batches, optimizer, grad_scaler)
            else:
                loss_fn = _Recomputed(self, model) if self.split.recompute else self.loss_fn
                res = learner.step(list(batches), loss_fn, meta_test=meta_test)
                out = _summary(res)
                written = [*zip(res.meta_train_domains, res.meta_train_aux, strict=True)]
                written.append((res.meta_test_domain, res.meta_test_aux))
        finally:
            self._generators = None
        self.update_memories(model, batches, written)
        self.split.after_step(model)
        return out

    def _plain_step(
        self,
        model: nn.Module,
        batches: Sequence[Mapping[str, Any]],
        optimizer: torch.optim.Optimizer,
        grad_scaler: torch.amp.GradScaler | None,
    ) -> tuple[dict[str, float], Written]:
        optimizer.zero_grad(set_to_none=True)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if self.split.recompute:
            return self._plain_step_recomputed(model, batches, optimizer, grad_scaler, params)
        outputs = [self.loss_fn(model, b, d, Phase.NORMAL) for d, b in enumerate(batches)]
        loss = torch.stack([o[0] for o in outputs]).mean()
        if grad_scaler is not None:
            grad_scaler.scale(loss).backward()
            self.split.reduce_grads_(params)
            grad_scaler.step(optimizer)
            grad_scaler.update()
        else:
            loss.backward()
            self.split.reduce_grads_(params)
            optimizer.step()
        return {"loss": float(loss.detach())}, [(d, o[1]) for d, o in enumerate(outputs)]

    def _plain_step_recomputed(
        self,
        model: nn.Module,
        batches: Sequence[Mapping[str, Any]],
        optimizer: torch.optim.Optimizer,
        grad_scaler: torch.amp.GradScaler | None,
        params: list[Tensor],
    ) -> tuple[dict[str, float], Written]:
        """The plain step with every chunk's graph built and freed in turn."""
        scale = 1.0
        if grad_scaler is not None and grad_scaler.is_enabled():
            scale = float(grad_scaler.get_scale())
        trainable = [p for p in model.parameters() if p.requires_grad]
        losses: list[Tensor] = []
        written: Written = []
        for d, batch in enumerate(batches):
            loss, grads, out, _ = self.split.value_and_grad(
                model,
                batch,
                Phase.NORMAL,
                functools.partial(self.objective.loss, domain=d),
                trainable,
                loss_weight=scale / len(batches),
                generators=self._generators,
                autocast=self.autocast,
            )
            losses.append(loss)
            written.append((d, _memory_aux(out)))
            with torch.no_grad():
                for p, g in zip(trainable, grads, strict=True):
                    if g is not None:
                        p.grad = g.clone() if p.grad is None else p.grad.add_(g)
        # (value_and_grad's gradients are summed over processes already)
        if grad_scaler is not None:
            grad_scaler.step(optimizer)
            grad_scaler.update()
        else:
            optimizer.step()
        return {"loss": float(torch.stack(losses).mean())}, written

    def update_memories(
        self,
        model: nn.Module,
        batches: Sequence[Mapping[str, Any]],
        written: Sequence[tuple[int, Mapping[str, Tensor] | None]],
    ) -> None:
        """Eq. 2 after the outer step: the step's own features, or an extra forward.

        Args:
            model: the model after the outer step (used by the ``"after"`` timing only).
            batches: the iteration's batches.
            written: ``(domain, aux)`` pairs in the order the losses ran (``aux`` from
                :meth:`loss_fn`; ``None`` entries are skipped).
        """
        memories = self.objective.memories
        if self.objective.id_loss != "memory":
            return
        if self.memory_update_timing == "after":
            for d, b in enumerate(batches):
                out = self.split.forward(model, b, Phase.NORMAL, grad=False, autocast=self.autocast)
                memories[d].update(out.features, out.pids)
            return
        for d, aux in written:
            if aux is not None:
                memories[d].update(aux["features"], aux["pid"])


class _Recomputed:
    """The :class:`~metareid.meta.learner.RecomputedLoss` of a step whose split recomputes."""

    def __init__(self, step: M3LStep, model: nn.Module) -> None:
        self.step = step
        self.model = model

    def value_and_grad(
        self,
        batch: Mapping[str, Any],
        domain: int,
        phase: Phase,
        params: Sequence[Tensor],
        weights: dict[str, Tensor] | None,
        loss_weight: float,
    ) -> tuple[Tensor, list[Tensor | None], dict[str, Tensor] | None, RecomputedBatch]:
        step = self.step
        loss, grads, out, state = step.split.value_and_grad(
            self.model,
            batch,
            phase,
            lambda o: step.objective.loss(o, domain),
            params,
            weights=weights,
            loss_weight=loss_weight,
            generators=step._generators,
            autocast=step.autocast,
        )
        aux = _memory_aux(out)
        return loss, grads, aux, state

    def hvp(self, state: RecomputedBatch, vector: Sequence[Tensor | None]) -> list[Tensor | None]:
        return self.step.split.hvp(state, vector)


def _memory_aux(out: BatchOutputs) -> dict[str, Tensor] | None:
    """What a memory may receive from ``out``: its detached features, never MetaBN mixtures."""
    return None if out.mixed else {"features": out.features.detach(), "pid": out.pids}


def _summary(res: MetaStepResult) -> dict[str, float]:
    return {
        "loss": res.meta_train_loss + res.meta_test_loss,
        "meta_train_loss": res.meta_train_loss,
        "meta_test_loss": res.meta_test_loss,
        "meta_test_domain": float(res.meta_test_domain),
        "meta_train_grad_norm": res.meta_train_grad_norm,
        "meta_test_grad_norm": res.meta_test_grad_norm,
    }
