"""How a domain batch is cut into chunks, where the chunks run, and how they combine.

Every loss of M3L is a function of a whole domain batch's outputs: batch-hard mining, the
memory loss, the MetaBN mixtures. A :class:`BatchSplit` produces those outputs in three
steps:

1. it cuts the batch into chunks (:meth:`BatchSplit.chunks`);
2. it runs the model on each chunk of this process, one after the other, so that BatchNorm
   and MetaBN statistics are per chunk, as they are per GPU under ``nn.DataParallel`` or
   per rank under ``torchrun``;
3. it combines the chunks: their outputs are concatenated into whole-batch tensors (across
   processes too, with the gradient), the BatchNorm running statistics and the statistics
   that MetaBN records follow the split's rule.

:class:`~metareid.engine.M3LObjective` then computes the losses from those tensors, the
same code for every split. The whole batch is the split into one chunk.

Two splits:

* :class:`IdentitySplit`: N chunks of whole identities over a
  :class:`~metareid.distributed.RankGroup` (``--micro-batches N`` in one process,
  ``torchrun`` ranks, or both); each chunk's MetaBN records and mixes its own statistics;
  running statistics move by the mean of the chunks' updates (then averaged over
  processes, :meth:`BatchSplit.after_step`). ``IdentitySplit()`` is the whole batch.
* :class:`DataParallelSplit`: what ``nn.DataParallel`` over N devices computes, in one
  process: chunks in batch order (``Tensor.chunk``), running statistics and MetaBN's
  recorded statistics from the first chunk only (GPU 0's replica owns the buffers), every
  chunk's own MetaBN draws (a lambda per replica), and the memory loss as the mean of the
  chunk means (the published code wraps the memory in ``nn.DataParallel`` too).

MetaBN is driven through its public attributes only: each chunk's forward sees, in
:attr:`~metareid.MetaBN.domain_stats`, the statistics it may mix, and in
:attr:`~metareid.MetaBN.generator` its own random stream.
"""

from __future__ import annotations

import contextlib
import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from metareid._validation import check_positive_int, describe
from metareid.distributed import (
    RankGroup,
    local_chunks,
    split_batch_by_identity,
    split_batch_in_order,
)
from metareid.layers.metabn import MetaBN, metabn_phase, mixture_count
from metareid.meta.phase import Phase

__all__ = [
    "BatchOutputs",
    "BatchSplit",
    "DataParallelSplit",
    "IdentitySplit",
    "RecomputedBatch",
]

Autocast = Callable[[], contextlib.AbstractContextManager[Any]]


@dataclass(frozen=True)
class BatchOutputs:
    """A model's train-mode outputs for one whole domain batch, rows in batch order.

    Attributes:
        pooled: the pooled pre-neck features, (B, C), connected to the graph (unless the
            forward ran without gradient).
        features: the neck features, (k * B, D): mixture ``i`` of every sample in rows
            ``i * B`` to ``(i + 1) * B`` (``k = mixtures``).
        logits: ``None``, a tensor (k * B, n) or a list of them, as the model returns.
        pids: the identities, (B,).
        mixtures: k, the rows per sample (:func:`metareid.layers.mixture_count`).
        mixed: whether ``features`` are MetaBN mixtures (phase ``META_TEST`` with a mixing
            MetaBN), which must never be written into a memory.
        chunk_sizes: the number of samples of every chunk of the whole batch, in batch
            order (all processes).
        memory_mean: how the memory loss averages its per-row losses: ``"samples"`` (over
            all rows) or ``"chunks"`` (the mean over chunks and mixtures of each chunk's
            mean, as the published code's DataParallel-wrapped memory).
    """

    pooled: Tensor
    features: Tensor
    logits: Tensor | list[Tensor] | None
    pids: Tensor
    mixtures: int = 1
    mixed: bool = False
    chunk_sizes: tuple[int, ...] = ()
    memory_mean: Literal["samples", "chunks"] = "samples"

    @property
    def labels(self) -> Tensor:
        """The identity of every row of :attr:`features`, (k * B,)."""
        return self.pids.repeat(self.mixtures)


class BatchSplit(ABC):
    """Cuts a domain batch into chunks, runs them, combines them; see the module docstring.

    Subclasses choose the chunks (:meth:`chunks`), how outputs are gathered, and two rules:
    :attr:`running_stats` (``"mean"`` of the chunks' updates, or ``"first"`` chunk's) and
    :attr:`metabn_stats` (each chunk mixes its ``"own"`` recorded statistics, or the
    ``"first"`` chunk's).
    """

    running_stats: Literal["mean", "first"] = "mean"
    metabn_stats: Literal["own", "first"] = "own"
    memory_mean: Literal["samples", "chunks"] = "samples"
    #: Whether :class:`~metareid.engine.M3LStep` computes gradients with
    #: :meth:`value_and_grad` and :meth:`hvp` (one chunk's graph at a time) instead of
    #: backpropagating through :meth:`forward`'s outputs (every chunk's graph at once).
    recompute: bool = False

    @property
    @abstractmethod
    def num_chunks(self) -> int:
        """N, the number of chunks of a whole batch (over all processes)."""

    @property
    def num_local_chunks(self) -> int:
        """The number of chunks this process computes."""
        return self.num_chunks

    @abstractmethod
    def chunks(self, batch: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The chunks of ``batch`` this process computes, in batch order."""

    @abstractmethod
    def gather(self, parts: Sequence[Tensor], grad: bool) -> Tensor:
        """The whole-batch tensor from this process's chunk parts (all processes)."""

    @abstractmethod
    def sizes(self, parts: Sequence[Tensor]) -> list[int]:
        """The rows of every chunk of the whole batch, in batch order."""

    def after_step(self, model: nn.Module) -> None:  # noqa: B027 - a no-op by default
        """Called once per iteration after the optimiser step (combine across processes)."""

    def reduce_grads_(self, params: Sequence[Tensor]) -> None:  # noqa: B027
        """Combine ``.grad`` over processes after a backward (a no-op in one process)."""

    def learner_hooks(self) -> dict[str, Any]:
        """The gradient hooks :class:`~metareid.MetaLearner` needs with this split.

        Every process computes the whole batch's loss from the gathered outputs; the
        gathers' backward sums what every process sends back, so each process holds
        ``W`` times its chunks' share of the gradient, and the mean over the ``W``
        processes is the whole batch's gradient: ``grad_transform`` (differentiable, for
        the meta-train gradient) and ``outer_grad_transform`` take that mean. Empty in one
        process.
        """
        return {}

    # ------------------------------------------------------------------ the forward
    def forward(
        self,
        model: nn.Module,
        batch: Mapping[str, Any],
        phase: Phase | str,
        *,
        generators: Sequence[torch.Generator] | None = None,
        grad: bool = True,
        autocast: Autocast | None = None,
    ) -> BatchOutputs:
        """Run ``model`` (train mode) on every local chunk of ``batch``; whole-batch outputs.

        Every chunk's graph stays alive until the outputs' backward. :meth:`value_and_grad`
        computes the same gradient keeping one chunk's graph at a time.

        Args:
            model: the model or its patched copy at ``Theta'``, returning
                ``(pooled, features, logits)`` in train mode
                (:class:`~metareid.models.ReIDOutput`).
            batch: ``{"img": (B, 3, H, W), "pid": (B,), ...}`` of one domain.
            phase: the MetaBN phase the forward runs in (set by the caller).
            generators: one ``torch.Generator`` per local chunk for its MetaBN draws
                (chunk ``i`` uses ``generators[i]``; a batch smaller than the number of
                DataParallel devices has fewer chunks and uses the first ones), or ``None``
                (default) to keep each layer's own.
            grad: record the graph (default ``True``).
            autocast: zero-argument callable returning the context of the forwards.

        Returns:
            The whole batch's outputs.

        Raises:
            RuntimeError: the model returned a tensor (eval mode) or a number of rows other
                than ``mixtures * chunk size``.
            ValueError: ``generators`` does not hold one generator per local chunk.
        """
        run = self._run(model, model, batch, Phase(phase), generators, grad, autocast, False)
        return self._combine(run, [_flatten(o) for o in run.outs], grad)

    # ------------------------------------------------------------- recomputed chunks
    def value_and_grad(
        self,
        model: nn.Module,
        batch: Mapping[str, Any],
        phase: Phase | str,
        loss_of: Callable[[BatchOutputs], Tensor],
        params: Sequence[Tensor],
        *,
        weights: Mapping[str, Tensor] | None = None,
        loss_weight: float = 1.0,
        generators: Sequence[torch.Generator] | None = None,
        autocast: Autocast | None = None,
    ) -> tuple[Tensor, list[Tensor | None], BatchOutputs, RecomputedBatch]:
        """The loss of one batch and its gradient, with one chunk's graph alive at a time.

        Gradient caching over the chunks: the loss is a function of the whole batch's
        outputs ``F = (F_1, ..., F_N)``, and chunk ``c``'s outputs depend only on its own
        images and the weights (BatchNorm statistics are per chunk). So

        1. every chunk runs without a graph (as :meth:`forward` runs it: running statistics
           and MetaBN's recorded statistics move once, by the split's rules); the random
           state each chunk starts from is kept;
        2. ``G = d(loss_weight * loss)/dF`` on the gathered outputs;
        3. every chunk runs again, replaying its random draws and MetaBN's statistics, with
           its graph, and ``J_c^T G_c`` is added to the gradient; the graph is freed before
           the next chunk. This replay leaves running statistics, MetaBN's recorded
           statistics and the random generators as step 1 left them.

        The result equals ``autograd.grad(loss_weight * loss, params)`` on :meth:`forward`'s
        outputs up to rounding (tests/engine/test_recompute.py).

        Args:
            model: the model (train mode).
            batch: one domain's batch.
            phase: the MetaBN phase (the caller sets the layers' phase; it is replayed).
            loss_of: the loss of the whole batch's outputs, e.g.
                ``lambda out: objective.loss(out, domain)``.
            params: the tensors to differentiate: the model's trainable parameters, or the
                values of ``weights``.
            weights: ``{name: tensor}`` replacing parameters of ``model`` in every forward
                (``torch.func.functional_call``; the meta-test at ``Theta'``), or ``None``.
            loss_weight: multiplies the loss before differentiation (a domain's share of a
                mean, a grad scaler's scale). Default 1.
            generators: as in :meth:`forward`.
            autocast: as in :meth:`forward`.

        Returns:
            ``(loss, grads, outputs, recomputed)``: the loss (detached, without
            ``loss_weight``), the gradient of ``loss_weight * loss`` for every entry of
            ``params`` (``None`` where the loss does not reach it), the whole batch's
            outputs (detached) and what :meth:`hvp` needs to replay the chunks.
        """
        phase = Phase(phase)
        call = _caller(model, weights)
        run = self._run(model, call, batch, phase, generators, False, autocast, True)
        values = [[t.detach() for t in _flatten(o)] for o in run.outs]
        outputs = self._combine(run, values, False)
        with torch.enable_grad():
            leaves, whole = _leaves(outputs)
            loss = loss_of(whole)
            cot = torch.autograd.grad(loss * loss_weight, leaves, allow_unused=True)
        cotangents = self._local_parts(run, outputs, cot)
        grads: list[Tensor | None] = [None] * len(params)
        for replay, g_c in zip(run.replays, cotangents, strict=True):
            with torch.enable_grad():
                outs = _flatten(self._replay(model, call, replay, autocast))
                pairs = [(o, g) for o, g in zip(outs, g_c, strict=True) if g is not None]
                if not pairs:
                    continue
                part = torch.autograd.grad(
                    [o for o, _ in pairs], list(params), [g for _, g in pairs], allow_unused=True
                )
            _add_into(grads, part)
        recomputed = RecomputedBatch(
            model, call, run, outputs, cotangents, loss_of, loss_weight, autocast, tuple(params)
        )
        return loss.detach(), self._sum_over_processes(grads), outputs, recomputed

    def hvp(
        self, recomputed: RecomputedBatch, vector: Sequence[Tensor | None]
    ) -> list[Tensor | None]:
        """``H a``: the Hessian of ``loss_weight * loss`` in the weights, times ``vector``.

        For ``L(F(Theta))`` with chunk outputs ``F_c``, ``H a`` is the sum over chunks of
        ``J_c^T (d2L/dF2 . J a)_c`` (the curvature of the loss in the outputs) and
        ``d/dTheta <J_c^T G_c, a>`` with ``G_c`` held fixed (the curvature of the network).
        Two replays of every chunk, one graph alive at a time: the first gives ``J_c a``
        (a double backward), the second the two products. ``d2L/dF2 . J a`` is taken on the
        gathered outputs.

        Args:
            recomputed: what :meth:`value_and_grad` returned for the batch.
            vector: ``a``, one entry (or ``None`` for zero) per entry of its ``params``.

        Returns:
            One entry per parameter, ``None`` where the product is zero.
        """
        r = recomputed
        params = list(r.params)
        if len(vector) != len(params):
            raise ValueError(f"vector must hold {len(params)} entries, got {len(vector)}")
        a = list(vector)
        if all(v is None for v in a):
            return [None] * len(params)
        used = [i for i, v in enumerate(a) if v is not None]
        # 1. J_c a for every chunk: d/dy <J_c^T y, a> at y = 0 (a double backward).
        tangents: list[list[Tensor]] = []
        for replay in r.run.replays:
            with torch.enable_grad():
                outs = _flatten(self._replay(r.model, r.call, replay, r.autocast))
                ys = [torch.zeros_like(o, requires_grad=True) for o in outs]
                vjp = torch.autograd.grad(
                    outs, [params[i] for i in used], ys, create_graph=True, allow_unused=True
                )
                pairs = [(v, a[i]) for v, i in zip(vjp, used, strict=True) if v is not None]
                jv = (
                    torch.autograd.grad(
                        [v for v, _ in pairs], ys, [w for _, w in pairs], allow_unused=True
                    )
                    if pairs
                    else [None] * len(ys)
                )
            tangents.append(
                [
                    torch.zeros_like(o) if t is None else t.detach()
                    for t, o in zip(jv, outs, strict=True)
                ]
            )
        # 2. d2L/dF2 . J a on the gathered outputs (every process: the whole batch).
        whole_tangents = _slots(self._combine(r.run, tangents, False))
        with torch.enable_grad():
            leaves, whole = _leaves(r.outputs)
            loss = r.loss_of(whole) * r.loss_weight
            first = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
            pairs2 = [
                (f, t)
                for f, t in zip(first, whole_tangents, strict=True)
                if f is not None and f.requires_grad
            ]
            curv = (
                torch.autograd.grad(
                    [f for f, _ in pairs2], leaves, [t for _, t in pairs2], allow_unused=True
                )
                if pairs2
                else [None] * len(leaves)
            )
        curvature = self._local_parts(r.run, r.outputs, curv)
        # 3. Sum over chunks of J_c^T curv_c + d/dTheta <J_c^T G_c, a>.
        out: list[Tensor | None] = [None] * len(params)
        for replay, g_c, h_c in zip(r.run.replays, r.cotangents, curvature, strict=True):
            with torch.enable_grad():
                outs = _flatten(self._replay(r.model, r.call, replay, r.autocast))
                pairs = [(o, g) for o, g in zip(outs, g_c, strict=True) if g is not None]
                terms: list[Tensor] = []
                if pairs:
                    vjp = torch.autograd.grad(
                        [o for o, _ in pairs],
                        [params[i] for i in used],
                        [g for _, g in pairs],
                        create_graph=True,
                        allow_unused=True,
                    )
                    terms += [
                        (v * cast(Tensor, a[i])).sum()
                        for v, i in zip(vjp, used, strict=True)
                        if v is not None and v.requires_grad
                    ]
                terms += [(o * h).sum() for o, h in zip(outs, h_c, strict=True) if h is not None]
                if not terms:
                    continue
                part = torch.autograd.grad(torch.stack(terms).sum(), params, allow_unused=True)
            _add_into(out, part)
        return self._sum_over_processes(out)

    # ------------------------------------------------------------------ internals
    @property
    def processes(self) -> bool:
        """Whether the chunks live in several processes."""
        return False

    def _local_indices(self, count: int) -> list[int]:
        """Where this process's ``count`` chunks stand among all chunks (batch order)."""
        return list(range(count))

    def _sum_over_processes(self, grads: list[Tensor | None]) -> list[Tensor | None]:
        """The sum over processes of every entry (each process holds its chunks' share)."""
        return grads

    def _local_parts(
        self, run: _Run, outputs: BatchOutputs, whole: Sequence[Tensor | None]
    ) -> list[list[Tensor | None]]:
        """The rows of every local chunk in whole-batch tensors (one per output slot),
        laid out as the chunk's own outputs (mixture-major, ``mixtures * b_c`` rows)."""
        sizes = list(outputs.chunk_sizes)
        starts = [sum(sizes[:r]) for r in range(len(sizes))]
        total, k = sum(sizes), run.mixtures
        out: list[list[Tensor | None]] = []
        for r in self._local_indices(len(run.chunks)):
            lo, b = starts[r], sizes[r]
            parts: list[Tensor | None] = []
            for j, t in enumerate(whole):
                if t is None:
                    parts.append(None)
                elif j == 0:  # pooled: one row per sample
                    parts.append(t[lo : lo + b])
                else:
                    parts.append(
                        torch.cat([t[i * total + lo : i * total + lo + b] for i in range(k)])
                    )
            out.append(parts)
        return out

    def _run(
        self,
        model: nn.Module,
        call: Callable[[Tensor], Any],
        batch: Mapping[str, Any],
        phase: Phase,
        generators: Sequence[torch.Generator] | None,
        grad: bool,
        autocast: Autocast | None,
        capture: bool,
    ) -> _Run:
        """Every local chunk's forward, by the split's rules (one pass)."""
        chunks = self.chunks(batch)
        n = len(chunks)
        if generators is not None and len(generators) < n:
            raise ValueError(
                f"generators must hold one torch.Generator per local chunk ({n}), got "
                f"{len(generators)}"
            )
        layers = [m for m in model.modules() if isinstance(m, MetaBN) and m.training]
        context = autocast or contextlib.nullcontext
        outs: list[Any] = []
        replays: list[_Replay] = []
        mixtures: list[int] = []
        with _chunked_running_stats(model, n, self.running_stats) as before_chunk:
            recorded = [list(layer.domain_stats) for layer in layers]
            for i, chunk in enumerate(chunks):
                before_chunk(i)
                gen = None if generators is None else generators[i]
                with (
                    _metabn_view(layers, recorded, i, n, phase, self.metabn_stats, gen),
                    context(),
                    contextlib.nullcontext() if grad else torch.no_grad(),
                ):
                    if capture:
                        replays.append(_Replay.capture(chunk, phase, layers))
                    k = mixture_count(model)
                    out = call(chunk["img"])
                if isinstance(out, Tensor):
                    raise RuntimeError(
                        "the model returned a tensor in train mode; call model.train()"
                    )
                rows, size = out.features.shape[0], chunk["pid"].shape[0]
                if rows != k * size:
                    raise RuntimeError(
                        f"in phase {phase.value!r} the model returned {rows} feature rows "
                        f"for a chunk of {size}; expected {k} x {size}"
                    )
                outs.append(out)
                mixtures.append(k)
        if len(set(mixtures)) > 1:
            raise RuntimeError(f"the chunks returned different numbers of mixtures {mixtures}")
        mixed = phase is Phase.META_TEST and bool(layers)
        return _Run(chunks, outs, replays, mixtures[0], mixed)

    def _combine(self, run: _Run, parts: Sequence[Sequence[Tensor]], grad: bool) -> BatchOutputs:
        """The whole batch's outputs from every chunk's flattened outputs."""
        k = run.mixtures
        pids = [c["pid"] for c in run.chunks]
        sizes = [p.shape[0] for p in pids]
        logits: Tensor | list[Tensor] | None = None
        template = run.outs[0].logits
        if isinstance(template, Tensor):
            logits = self._gather_rows([p[2] for p in parts], sizes, k, grad)
        elif template is not None:
            logits = [
                self._gather_rows([p[2 + h] for p in parts], sizes, k, grad)
                for h in range(len(template))
            ]
        return BatchOutputs(
            pooled=self.gather([p[0] for p in parts], grad),
            features=self._gather_rows([p[1] for p in parts], sizes, k, grad),
            logits=logits,
            pids=self.gather(pids, grad=False),
            mixtures=k,
            mixed=run.mixed,
            chunk_sizes=tuple(self.sizes(pids)),
            memory_mean=self.memory_mean,
        )

    def _replay(
        self,
        model: nn.Module,
        call: Callable[[Tensor], Any],
        replay: _Replay,
        autocast: Autocast | None,
    ) -> Any:
        """Chunk ``replay``'s forward again, with a graph, leaving no trace in the state."""
        context = autocast or contextlib.nullcontext
        with replay.restored(model), context():
            return call(replay.chunk["img"])

    def _gather_rows(self, parts: list[Tensor], sizes: list[int], k: int, grad: bool) -> Tensor:
        """Mixture-major whole-batch rows from per-chunk (k * b_c, ...) parts."""
        if k == 1:
            return self.gather(parts, grad)
        per_mixture = [
            self.gather([p[i * b : (i + 1) * b] for p, b in zip(parts, sizes, strict=True)], grad)
            for i in range(k)
        ]
        return torch.cat(per_mixture)


class IdentitySplit(BatchSplit):
    """N chunks of whole identities over the ranks of ``ranks`` (see the module docstring).

    Args:
        ranks: the :class:`~metareid.distributed.RankGroup` the batch is split across
            (``MicroBatchRanks(N)`` in one process, ``ProcessRanks()`` under ``torchrun``),
            or ``None`` (default): the whole batch, one chunk.
        local_batches: each batch holds only this process's identities (what
            :func:`~metareid.data.build_train_loader` with ``identity_chunk`` loads), split
            into ``len(ranks.local_ranks)`` chunks, instead of the global batch (split into
            ``ranks.num_ranks`` chunks, the local ones kept). Default ``False``.
        recompute: compute gradients one chunk at a time (see :attr:`recompute`,
            :meth:`value_and_grad`). Default ``False``.

    Example:
        >>> import torch
        >>> from metareid.distributed import MicroBatchRanks
        >>> split = IdentitySplit(MicroBatchRanks(2))
        >>> batch = {"img": torch.zeros(8, 3, 4, 2), "pid": torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])}
        >>> [c["pid"].tolist() for c in split.chunks(batch)]
        [[0, 0, 1, 1], [2, 2, 3, 3]]
    """

    def __init__(
        self,
        ranks: RankGroup | None = None,
        local_batches: bool = False,
        *,
        recompute: bool = False,
    ) -> None:
        if ranks is not None and not isinstance(ranks, RankGroup):
            raise TypeError(f"ranks must be a RankGroup or None, got {describe(ranks)}")
        if not isinstance(local_batches, bool):
            raise TypeError(f"local_batches must be a bool, got {local_batches!r}")
        if local_batches and ranks is None:
            raise ValueError("local_batches=True needs ranks (the group the batch is split across)")
        self.ranks = ranks
        self.local_batches = local_batches
        self.recompute = _check_recompute(recompute)

    @property
    def num_chunks(self) -> int:
        return 1 if self.ranks is None else self.ranks.num_ranks

    @property
    def num_local_chunks(self) -> int:
        return 1 if self.ranks is None else len(self.ranks.local_ranks)

    @property
    def processes(self) -> bool:
        """Whether the chunks live in several processes."""
        return self.ranks is not None and self.ranks.num_ranks > len(self.ranks.local_ranks)

    def chunks(self, batch: Mapping[str, Any]) -> list[dict[str, Any]]:
        if self.ranks is None:
            return [dict(batch)]
        if self.local_batches:
            return split_batch_by_identity(batch, len(self.ranks.local_ranks))
        return local_chunks(batch, self.ranks)

    def gather(self, parts: Sequence[Tensor], grad: bool) -> Tensor:
        if self.ranks is None:
            return parts[0]
        return self.ranks.gather_with_grad(parts) if grad else self.ranks.gather(parts)

    def sizes(self, parts: Sequence[Tensor]) -> list[int]:
        if self.ranks is None:
            return [parts[0].shape[0]]
        return self.ranks.sizes(parts)

    def reduce_grads_(self, params: Sequence[Tensor]) -> None:
        if self.processes:
            cast(RankGroup, self.ranks).all_reduce_grads_(params)

    def learner_hooks(self) -> dict[str, Any]:
        if not self.processes or self.recompute:  # recomputed gradients are summed already
            return {}
        ranks = cast(RankGroup, self.ranks)
        return {
            "grad_transform": ranks.all_reduce_mean,
            "outer_grad_transform": ranks.all_reduce_grads_,
        }

    def _local_indices(self, count: int) -> list[int]:
        return [0] if self.ranks is None else list(self.ranks.local_ranks)

    def _sum_over_processes(self, grads: list[Tensor | None]) -> list[Tensor | None]:
        if not self.processes:
            return grads
        ranks = cast(RankGroup, self.ranks)
        processes = ranks.num_ranks // len(ranks.local_ranks)
        mean = ranks.all_reduce_mean(grads)
        return [None if g is None else g * processes for g in mean]

    def after_step(self, model: nn.Module) -> None:
        """Average BatchNorm running statistics over the processes (a no-op in one)."""
        if not self.processes:
            return
        ranks = cast(RankGroup, self.ranks)
        buffers: list[Tensor] = []
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                buffers += [m.running_mean, cast(Tensor, m.running_var)]
        if not buffers:
            return
        with torch.no_grad():
            for b, mean in zip(buffers, ranks.all_reduce_mean(buffers), strict=True):
                b.copy_(cast(Tensor, mean))

    def __repr__(self) -> str:
        return (
            f"IdentitySplit(ranks={self.ranks!r}, local_batches={self.local_batches}, "
            f"recompute={self.recompute})"
        )


class DataParallelSplit(BatchSplit):
    """What ``nn.DataParallel`` over ``num_devices`` devices computes, in one process.

    The batch is cut in batch order as ``Tensor.chunk`` cuts it (64 over 3: 22, 22, 20);
    each chunk runs with its own BatchNorm and MetaBN statistics and its own MetaBN draws;
    the running statistics and the MetaBN statistics recorded in meta-train are those of
    the first chunk (the replica on GPU 0 shares the module's buffers, the others update
    copies that are thrown away); in meta-test every chunk mixes with the first chunk's
    recorded statistics; the memory loss is the mean of the chunk means. The gradient is
    the gradient of this computation, as under DataParallel (whose replicas receive the
    parameters through a differentiable broadcast).

    When ``Tensor.chunk`` yields fewer chunks than devices (4 over 3: 2, 2), fewer replicas
    run. (The published code would fail there: its model calls pass keyword arguments,
    and DataParallel then calls a spare replica without input.)

    Args:
        num_devices: N >= 1. ``DataParallelSplit(1)`` is the whole batch.
        recompute: compute gradients one chunk at a time (see :attr:`recompute`).
            Default ``False``.

    Example:
        >>> import torch
        >>> split = DataParallelSplit(3)
        >>> [len(c["pid"]) for c in split.chunks({"pid": torch.arange(64)})]
        [22, 22, 20]
    """

    running_stats = "first"
    metabn_stats = "first"
    memory_mean = "chunks"

    def __init__(self, num_devices: int, *, recompute: bool = False) -> None:
        self.num_devices = check_positive_int("num_devices", num_devices)
        self.recompute = _check_recompute(recompute)

    @property
    def num_chunks(self) -> int:
        return self.num_devices

    def chunks(self, batch: Mapping[str, Any]) -> list[dict[str, Any]]:
        return split_batch_in_order(batch, self.num_devices)

    def gather(self, parts: Sequence[Tensor], grad: bool) -> Tensor:
        out = parts[0] if len(parts) == 1 else torch.cat(list(parts))
        return out if grad else out.detach()

    def sizes(self, parts: Sequence[Tensor]) -> list[int]:
        return [p.shape[0] for p in parts]

    def __repr__(self) -> str:
        return f"DataParallelSplit(num_devices={self.num_devices}, recompute={self.recompute})"


# ---------------------------------------------------------------------------- internals
@dataclass(frozen=True)
class _Run:
    """One pass over the local chunks: the chunks, the model's outputs, their replays."""

    chunks: list[dict[str, Any]]
    outs: list[Any]
    replays: list[_Replay]
    mixtures: int
    mixed: bool


@dataclass(frozen=True)
class RecomputedBatch:
    """What :meth:`BatchSplit.hvp` needs to replay the chunks of one batch."""

    model: nn.Module
    call: Callable[[Tensor], Any]
    run: _Run
    outputs: BatchOutputs
    cotangents: list[list[Tensor | None]]
    loss_of: Callable[[BatchOutputs], Tensor]
    loss_weight: float
    autocast: Autocast | None
    params: tuple[Tensor, ...]


class _Replay:
    """The state one chunk's forward started from, to run it again identically.

    Kept: the chunk, the MetaBN phase, what every MetaBN layer held in
    :attr:`~metareid.MetaBN.domain_stats` and :attr:`~metareid.MetaBN.generator`, the
    states of those generators and of torch's default generators (dropout, and MetaBN
    layers without a generator of their own).
    """

    def __init__(
        self,
        chunk: dict[str, Any],
        phase: Phase,
        layers: list[MetaBN],
        views: list[tuple[list[tuple[Tensor, Tensor]], torch.Generator | None]],
        rng: _RngState,
    ) -> None:
        self.chunk = chunk
        self.phase = phase
        self.layers = layers
        self.views = views
        self.rng = rng

    @classmethod
    def capture(cls, chunk: dict[str, Any], phase: Phase, layers: list[MetaBN]) -> _Replay:
        views = [(list(layer.domain_stats), layer.generator) for layer in layers]
        return cls(chunk, phase, layers, views, _RngState.capture(g for _, g in views))

    @contextlib.contextmanager
    def restored(self, model: nn.Module) -> Iterator[None]:
        """Run a block from this chunk's starting state; afterwards everything is as before.

        Running statistics the block moves are put back, and so are MetaBN's lists and
        generators and every random generator involved.
        """
        saved_views = [(layer.domain_stats, layer.generator) for layer in self.layers]
        norms = _tracked_batchnorms(model)
        saved_stats = [tuple(cast(Tensor, getattr(m, n)) for n in _STATS) for m in norms]
        after = _RngState.capture(g for _, g in self.views)
        try:
            for layer, (stats, gen) in zip(self.layers, self.views, strict=True):
                layer.domain_stats = list(stats)
                layer.generator = gen
            self.rng.restore()
            # The forward moves copies (its graph may keep them), never the buffers.
            for m, values in zip(norms, saved_stats, strict=True):
                for n, value in zip(_STATS, values, strict=True):
                    setattr(m, n, value.clone())
            with metabn_phase(model, self.phase.value):
                yield
        finally:
            after.restore()
            for layer, (stats_list, gen) in zip(self.layers, saved_views, strict=True):
                layer.domain_stats = stats_list
                layer.generator = gen
            for m, values in zip(norms, saved_stats, strict=True):
                for n, value in zip(_STATS, values, strict=True):
                    setattr(m, n, value)


class _RngState:
    """States of torch's default CPU and CUDA generators and of some generators."""

    def __init__(
        self,
        cpu: Tensor,
        cuda: list[Tensor] | None,
        generators: list[tuple[torch.Generator, Tensor]],
    ) -> None:
        self.cpu = cpu
        self.cuda = cuda
        self.generators = generators

    @classmethod
    def capture(cls, generators: Iterator[torch.Generator | None] | Any) -> _RngState:
        unique = {id(g): g for g in generators if g is not None}
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        return cls(torch.get_rng_state(), cuda, [(g, g.get_state()) for g in unique.values()])

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        for g, state in self.generators:
            g.set_state(state)


def _check_recompute(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"recompute must be a bool, got {value!r}")
    return value


def _caller(model: nn.Module, weights: Mapping[str, Tensor] | None) -> Callable[[Tensor], Any]:
    """``model``, or ``model`` with some parameters replaced by ``weights``."""
    if weights is None:
        return model
    state = dict(weights)

    def call(images: Tensor) -> Any:
        return torch.func.functional_call(model, state, (images,), tie_weights=True, strict=False)

    return call


def _flatten(out: Any) -> list[Tensor]:
    """``[pooled, features, *logits]`` of a model output, as float32 or float64."""
    logits = out.logits
    heads = [] if logits is None else [logits] if isinstance(logits, Tensor) else list(logits)
    return [_full(out.pooled), _full(out.features), *(_full(h) for h in heads)]


def _slots(outputs: BatchOutputs) -> list[Tensor]:
    """``[pooled, features, *logits]`` of whole-batch outputs (the order of :func:`_flatten`)."""
    logits = outputs.logits
    heads = [] if logits is None else [logits] if isinstance(logits, Tensor) else list(logits)
    return [outputs.pooled, outputs.features, *heads]


def _leaves(outputs: BatchOutputs) -> tuple[list[Tensor], BatchOutputs]:
    """New leaves that require grad over ``outputs``' tensors, and the outputs built on them."""
    leaves = [t.detach().requires_grad_() for t in _slots(outputs)]
    logits: Tensor | list[Tensor] | None = None
    if isinstance(outputs.logits, Tensor):
        logits = leaves[2]
    elif outputs.logits is not None:
        logits = leaves[2:]
    whole = dataclasses.replace(outputs, pooled=leaves[0], features=leaves[1], logits=logits)
    return leaves, whole


def _add_into(acc: list[Tensor | None], part: Sequence[Tensor | None]) -> None:
    """``acc += part`` entry by entry (out of place: autograd may return expanded views)."""
    with torch.no_grad():
        for i, g in enumerate(part):
            if g is not None:
                acc[i] = g if acc[i] is None else cast(Tensor, acc[i]) + g


def _full(t: Tensor) -> Tensor:
    """Autocast's float16/bfloat16 outputs as float32; float32 and float64 as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


@contextlib.contextmanager
def _metabn_view(
    layers: list[MetaBN],
    recorded: list[list[tuple[Tensor, Tensor]]],
    index: int,
    num_chunks: int,
    phase: Phase,
    rule: str,
    generator: torch.Generator | None,
) -> Iterator[None]:
    """What chunk ``index``'s forward lets every MetaBN record, mix and draw with.

    ``recorded[j]`` holds layer ``j``'s statistics before this call. In meta-train every
    chunk's forward appends one entry (``rule="own"``: all kept, chunk after chunk, so that
    the layer's list reads domain by domain, chunk by chunk) or only the first chunk's
    (``"first"``). In meta-test chunk ``index`` mixes with its own entries (every
    ``num_chunks``-th from ``index``) or with all of them (``"first"``: only chunk 0
    recorded).
    """
    saved = [(layer.domain_stats, layer.generator) for layer in layers]
    try:
        for layer, stats in zip(layers, recorded, strict=True):
            if phase is Phase.META_TRAIN and rule == "first" and index > 0:
                layer.domain_stats = []  # a replica's copy: thrown away
            elif phase is Phase.META_TEST:
                if rule == "first":
                    layer.domain_stats = list(stats)
                elif len(stats) % num_chunks:
                    raise RuntimeError(
                        f"MetaBN holds {len(stats)} recorded statistics, not a multiple of the "
                        f"{num_chunks} chunks of the batch: every chunk's meta-train forward "
                        "must call each MetaBN layer once"
                    )
                else:
                    layer.domain_stats = stats[index::num_chunks]
            if generator is not None:
                layer.generator = generator
        yield
    finally:
        for layer, (stats_list, gen) in zip(layers, saved, strict=True):
            layer.domain_stats = stats_list
            layer.generator = gen


def _tracked_batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and m.training
        and m.track_running_stats
        and m.running_mean is not None
    ]


_STATS = ("running_mean", "running_var", "num_batches_tracked")


@contextlib.contextmanager
def _chunked_running_stats(
    model: nn.Module, num_chunks: int, rule: str
) -> Iterator[Callable[[int], None]]:
    """Yield ``before_chunk(i)``: every chunk's forward starts from the running statistics
    at entry; on exit they are the mean of the chunks' results (``"mean"``) or the first
    chunk's (``"first"``).

    With one chunk the forward updates the buffers itself. With several, each chunk runs
    on fresh copies, and on exit the result is written into the buffers that were there at
    entry: no forward's graph holds those, so writing them in place is safe, and code that
    holds them (the meta-test's copies of the buffers) sees the result. On an exception
    the buffers at entry are put back unchanged.
    """
    layers = _tracked_batchnorms(model) if num_chunks > 1 else []
    if not layers:
        yield lambda i: None
        return
    start = [tuple(cast(Tensor, getattr(m, name)) for name in _STATS) for m in layers]
    results: list[list[tuple[Tensor, ...]]] = [[] for _ in layers]

    def collect() -> None:
        for m, acc in zip(layers, results, strict=True):
            acc.append(tuple(cast(Tensor, getattr(m, name)) for name in _STATS))

    def before_chunk(i: int) -> None:
        if i > 0:
            collect()
        for m, values in zip(layers, start, strict=True):
            for name, value in zip(_STATS, values, strict=True):
                setattr(m, name, value.clone())

    try:
        yield before_chunk
        collect()
    finally:
        for m, values in zip(layers, start, strict=True):
            for name, value in zip(_STATS, values, strict=True):
                setattr(m, name, value)
    with torch.no_grad():
        for (mean, var, count), acc in zip(start, results, strict=True):
            if rule == "first":
                mean.copy_(acc[0][0])
                var.copy_(acc[0][1])
            else:
                total_mean, total_var = torch.zeros_like(mean), torch.zeros_like(var)
                for r in acc:
                    total_mean += r[0]
                    total_var += r[1]
                mean.copy_(total_mean / len(acc))
                var.copy_(total_var / len(acc))
            count.copy_(acc[0][2])
