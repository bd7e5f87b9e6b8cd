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
from metareid.layers.metabn import MetaBN, mixture_count
from metareid.meta.phase import Phase

__all__ = ["BatchOutputs", "BatchSplit", "DataParallelSplit", "IdentitySplit"]

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
        phase = Phase(phase)
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
                    k = mixture_count(model)
                    out = model(chunk["img"])
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
        k = mixtures[0]
        pids = [c["pid"] for c in chunks]
        sizes = [p.shape[0] for p in pids]
        return BatchOutputs(
            pooled=self.gather([_full(o.pooled) for o in outs], grad),
            features=self._gather_rows([_full(o.features) for o in outs], sizes, k, grad),
            logits=self._gather_logits([o.logits for o in outs], sizes, k, grad),
            pids=self.gather(pids, grad=False),
            mixtures=k,
            mixed=phase is Phase.META_TEST and bool(layers),
            chunk_sizes=tuple(self.sizes(pids)),
            memory_mean=self.memory_mean,
        )

    def _gather_rows(self, parts: list[Tensor], sizes: list[int], k: int, grad: bool) -> Tensor:
        """Mixture-major whole-batch rows from per-chunk (k * b_c, ...) parts."""
        if k == 1:
            return self.gather(parts, grad)
        per_mixture = [
            self.gather([p[i * b : (i + 1) * b] for p, b in zip(parts, sizes, strict=True)], grad)
            for i in range(k)
        ]
        return torch.cat(per_mixture)

    def _gather_logits(
        self, parts: list[Any], sizes: list[int], k: int, grad: bool
    ) -> Tensor | list[Tensor] | None:
        if all(p is None for p in parts):
            return None
        if all(isinstance(p, Tensor) for p in parts):
            return self._gather_rows([_full(p) for p in parts], sizes, k, grad)
        heads = len(parts[0])
        return [
            self._gather_rows([_full(p[h]) for p in parts], sizes, k, grad) for h in range(heads)
        ]


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

    Example:
        >>> import torch
        >>> from metareid.distributed import MicroBatchRanks
        >>> split = IdentitySplit(MicroBatchRanks(2))
        >>> batch = {"img": torch.zeros(8, 3, 4, 2), "pid": torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])}
        >>> [c["pid"].tolist() for c in split.chunks(batch)]
        [[0, 0, 1, 1], [2, 2, 3, 3]]
    """

    def __init__(self, ranks: RankGroup | None = None, local_batches: bool = False) -> None:
        if ranks is not None and not isinstance(ranks, RankGroup):
            raise TypeError(f"ranks must be a RankGroup or None, got {describe(ranks)}")
        if not isinstance(local_batches, bool):
            raise TypeError(f"local_batches must be a bool, got {local_batches!r}")
        if local_batches and ranks is None:
            raise ValueError("local_batches=True needs ranks (the group the batch is split across)")
        self.ranks = ranks
        self.local_batches = local_batches

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
        if not self.processes:
            return {}
        ranks = cast(RankGroup, self.ranks)
        return {
            "grad_transform": ranks.all_reduce_mean,
            "outer_grad_transform": ranks.all_reduce_grads_,
        }

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
        return f"IdentitySplit(ranks={self.ranks!r}, local_batches={self.local_batches})"


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

    Example:
        >>> import torch
        >>> split = DataParallelSplit(3)
        >>> [len(c["pid"]) for c in split.chunks({"pid": torch.arange(64)})]
        [22, 22, 20]
    """

    running_stats = "first"
    metabn_stats = "first"
    memory_mean = "chunks"

    def __init__(self, num_devices: int) -> None:
        self.num_devices = check_positive_int("num_devices", num_devices)

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
        return f"DataParallelSplit(num_devices={self.num_devices})"


# ---------------------------------------------------------------------------- internals
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
