"""The M3L training objective: the losses of Eq. 8-10, the memories of Eq. 2, one iteration.

:class:`M3LObjective` is what the :class:`~metareid.engine.Trainer` runs every iteration,
usable on its own with any model that returns :class:`~metareid.models.ReIDOutput`-like
outputs (``pooled``, ``features``, ``logits``) in train mode.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metareid.distributed.losses import (
    hard_triplet_loss_across_ranks,
    memory_id_loss_across_ranks,
)
from metareid.distributed.memory import update_memory_across_ranks
from metareid.distributed.ranks import RankGroup
from metareid.distributed.split import local_chunks, split_batch_by_identity
from metareid.layers.metabn import metabn_stats_slot
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

    Split batches (``ranks``, see ``docs/distributed.md``): with a
    :class:`~metareid.distributed.RankGroup` every domain's batch is split by identity
    into N chunks (:func:`~metareid.distributed.local_chunks`) and the model runs on each
    chunk of this process separately, so BatchNorm and MetaBN statistics are per chunk
    (each chunk's MetaBN records and mixes its own statistics through
    :func:`~metareid.layers.metabn_stats_slot`). The losses are those of the whole batch
    (batch-hard mining over every chunk, the memory and classifier losses averaged over
    every sample) and the memories are updated once with every chunk's features in rank
    order. BatchNorm running statistics move by the mean over chunks of each chunk's
    update (the momentum update is linear, so this is the update with the mean of the
    chunks' batch statistics). ``ranks=None`` (default) is the plain whole-batch
    computation. By default every process passes the global batch and keeps its chunks;
    with ``local_batches=True`` it passes only the identities of its local ranks (what
    :func:`~metareid.data.build_train_loader` with ``identity_chunk`` loads), which saves
    N - 1 of every N image loads.

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
        ranks: The :class:`~metareid.distributed.RankGroup` the batches are split across
            (``MicroBatchRanks(N)`` in one process, ``ProcessRanks()`` under ``torchrun``),
            or ``None`` (default): whole batches. ``triplet_loss`` and ``memory_loss``
            must then be :class:`~metareid.HardTripletLoss` / :class:`~metareid.MemoryIDLoss`
            (their settings are used by the split losses).
        local_batches: With ``ranks``: each batch holds only this process's part, the
            identities of its local ranks in rank order (split into
            ``len(ranks.local_ranks)`` chunks), instead of the global batch (default
            ``False``; split into ``ranks.num_ranks`` chunks, the local ones kept).

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
        ranks: RankGroup | None = None,
        local_batches: bool = False,
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
        if ranks is not None and not isinstance(ranks, RankGroup):
            raise TypeError(f"ranks must be a RankGroup or None, got {type(ranks).__name__}")
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
        if ranks is not None:
            for name, module, kind in (
                ("memory_loss", self.memory_loss, MemoryIDLoss),
                ("triplet_loss", self.triplet_loss, HardTripletLoss),
            ):
                if not isinstance(module, kind):
                    raise TypeError(
                        f"with ranks, {name} must be a {kind.__name__} (its settings are used "
                        f"by the split loss), got {type(module).__name__}"
                    )
        if not isinstance(local_batches, bool):
            raise TypeError(f"local_batches must be a bool, got {type(local_batches).__name__}")
        if local_batches and ranks is None:
            raise ValueError(
                "local_batches=True needs ranks (the group the batches are split across)"
            )
        self.ranks = ranks
        self.local_batches = local_batches
        self._generators: Sequence[torch.Generator] | None = None

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
    ) -> tuple[Tensor, dict[str, Any] | None]:
        """Eq. 8 (meta-train, plain step) / Eq. 10 (meta-test) on one domain's batch.

        Args:
            model: The model (or its patched copy at ``Theta'``), in train mode.
            batch: ``{"img": (B, 3, H, W), "pid": (B,)}`` with domain-local identities.
            domain: The domain index.
            phase: The :class:`Phase` of the call.

        Returns:
            ``(loss, aux)``: ``aux = {"features": (B, D), "pid": (B,)}`` detached, when
            these features may update the memory of ``domain``; ``None`` for MetaBN
            mixtures. With ``ranks`` both entries are lists with one tensor per local rank.

        Raises:
            RuntimeError: if the model returns a tensor (eval mode) or a number of rows
                other than ``mixtures(phase) * B``.
        """
        phase = Phase(phase)
        if self.ranks is not None:
            return self._split_loss(model, batch, domain, phase)
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

    def _split_loss(
        self, model: nn.Module, batch: dict[str, Any], domain: int, phase: Phase
    ) -> tuple[Tensor, dict[str, Any] | None]:
        """:meth:`loss` with the batch split across ``self.ranks`` (see the class docs)."""
        ranks = cast(RankGroup, self.ranks)
        chunks = self._local_chunks(batch)
        outs = self._chunk_forwards(model, chunks, grad=True)
        reps = self.mixtures(phase)
        feats, pooled, pids, labels = [], [], [], []
        for out, chunk in zip(outs, chunks, strict=True):
            f = _full_precision(out.features)
            if f.shape[0] != reps * chunk["pid"].shape[0]:
                raise RuntimeError(
                    f"in phase {phase.value!r} the model returned {f.shape[0]} feature rows "
                    f"for a chunk of {chunk['pid'].shape[0]}; expected {reps} x "
                    f"{chunk['pid'].shape[0]}"
                )
            feats.append(f)
            pooled.append(_full_precision(out.pooled))
            pids.append(chunk["pid"])
            labels.append(chunk["pid"].repeat(reps))
        loss = feats[0].new_zeros(())
        if self.id_loss == "memory":
            mem_loss = cast(MemoryIDLoss, self.memory_loss)
            loss = loss + memory_id_loss_across_ranks(
                feats, labels, self.memories[domain], ranks, mem_loss.temperature
            )
        elif self.id_loss in ("fc_global", "fc_domain"):
            per_sample = []
            for out, y in zip(outs, labels, strict=True):
                if self.id_loss == "fc_global":
                    assert self.pid_offsets is not None
                    logits = _full_precision(_logits(out.logits))
                    y = y + self.pid_offsets[domain]
                else:
                    logits = _full_precision(_logits(out.logits, domain))
                per_sample.append(F.cross_entropy(logits, y, reduction="sum"))
            loss = loss + _mean_over_ranks(per_sample, labels, ranks)
        if self.triplet:
            tri = cast(HardTripletLoss, self.triplet_loss)
            loss = loss + hard_triplet_loss_across_ranks(
                pooled, pids, ranks, tri.margin, tri.normalize
            )
        if phase is Phase.META_TEST and self.metabn:
            return loss, None
        return loss, {"features": [f.detach() for f in feats], "pid": pids}

    def _local_chunks(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """The chunks of this process's local ranks, from a global or a local batch."""
        ranks = cast(RankGroup, self.ranks)
        if self.local_batches:
            return split_batch_by_identity(batch, len(ranks.local_ranks))
        return local_chunks(batch, ranks)

    def _chunk_forwards(
        self, model: nn.Module, chunks: Sequence[dict[str, Any]], grad: bool
    ) -> list[Any]:
        """The model on each local chunk, with its own MetaBN slot and noise stream.

        With several local chunks, every chunk's forward starts from the same BatchNorm
        running statistics and the statistics end at the mean of the chunks' updates.
        """
        ranks = cast(RankGroup, self.ranks)
        outs = []
        with _mean_running_stats(model, len(chunks)) as before_chunk:
            for i, (r, chunk) in enumerate(zip(ranks.local_ranks, chunks, strict=True)):
                before_chunk(i)
                gen = None if self._generators is None else self._generators[i]
                with (
                    metabn_stats_slot(model, r, gen),
                    self.autocast(),
                    contextlib.nullcontext() if grad else torch.no_grad(),
                ):
                    out = model(chunk["img"])
                if isinstance(out, Tensor):
                    raise RuntimeError(
                        "the model returned a tensor in train mode; call model.train()"
                    )
                outs.append(out)
        return outs

    # ------------------------------------------------------------------ one iteration
    def step(
        self,
        model: nn.Module,
        batches: Sequence[dict[str, Any]],
        optimizer: torch.optim.Optimizer,
        learner: MetaLearner | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
        *,
        meta_test: int | None = None,
        generators: Sequence[torch.Generator] | None = None,
    ) -> dict[str, float]:
        """One training iteration on one batch per domain, memory updates included.

        Args:
            model: The model (train mode); the one ``learner`` wraps, if any.
            batches: One batch per source domain, in domain order.
            optimizer: The outer optimiser.
            learner: ``None`` for a plain step on the mean loss over domains (baseline),
                else the :class:`~metareid.MetaLearner` that runs the meta step.
            grad_scaler: For fp16 in the plain step (a meta step uses the learner's own).
            meta_test: The meta-test domain (meta step only); ``None`` lets ``learner``
                draw it.
            generators: With ``ranks``: one ``torch.Generator`` per local rank for the
                MetaBN draws of that rank's chunk; ``None`` (default) keeps the layers'
                own generator.

        Returns:
            ``{"loss": ...}`` (baseline), or also ``meta_train_loss``, ``meta_test_loss``
            and ``meta_test_domain``. With ``ranks`` spanning several processes, the
            losses are averaged over the processes: the whole-batch losses.
        """
        if len(batches) != self.num_domains:
            raise ValueError(
                f"batches must hold one batch per domain ({self.num_domains}), got {len(batches)}"
            )
        if generators is not None:
            local = 1 if self.ranks is None else len(self.ranks.local_ranks)
            if len(generators) != local or not all(
                isinstance(g, torch.Generator) for g in generators
            ):
                raise ValueError(
                    f"generators must hold one torch.Generator per local rank ({local}), got "
                    f"{len(generators)} items"
                )
        self._generators = generators
        try:
            return self._step(model, batches, optimizer, learner, grad_scaler, meta_test)
        finally:
            self._generators = None

    def _step(
        self,
        model: nn.Module,
        batches: Sequence[dict[str, Any]],
        optimizer: torch.optim.Optimizer,
        learner: MetaLearner | None,
        grad_scaler: torch.amp.GradScaler | None,
        meta_test: int | None,
    ) -> dict[str, float]:
        ranks = self.ranks
        processes = ranks is not None and ranks.num_ranks > len(ranks.local_ranks)
        written: list[tuple[int, dict[str, Tensor] | None]]
        if learner is None:
            optimizer.zero_grad(set_to_none=True)
            outputs = [self.loss(model, b, d, Phase.NORMAL) for d, b in enumerate(batches)]
            loss = torch.stack([o[0] for o in outputs]).mean()
            params = [p for g in optimizer.param_groups for p in g["params"]]
            if grad_scaler is not None:
                grad_scaler.scale(loss).backward()
                if ranks is not None:
                    ranks.all_reduce_grads_(params)
                grad_scaler.step(optimizer)
                grad_scaler.update()
            else:
                loss.backward()
                if ranks is not None:
                    ranks.all_reduce_grads_(params)
                optimizer.step()
            out = {"loss": float(loss.detach())}
            written = [(d, o[1]) for d, o in enumerate(outputs)]
        else:
            res = learner.step(batches, self.loss, meta_test=meta_test)
            out = {
                "loss": res.meta_train_loss + res.meta_test_loss,
                "meta_train_loss": res.meta_train_loss,
                "meta_test_loss": res.meta_test_loss,
                "meta_test_domain": float(res.meta_test_domain),
            }
            written = self._written(res)
        self.update_memories(model, batches, written)
        if processes:
            assert ranks is not None
            _average_running_stats_(model, ranks)
            keys = [k for k in out if k != "meta_test_domain"]
            values = torch.tensor([out[k] for k in keys], dtype=torch.float64)
            mean = ranks.all_reduce_mean([values])[0]
            assert mean is not None
            out.update(zip(keys, (float(v) for v in mean), strict=True))
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
        if self.ranks is not None:
            self._split_update_memories(model, batches, written)
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

    def _split_update_memories(
        self,
        model: nn.Module,
        batches: Sequence[dict[str, Any]],
        written: Sequence[tuple[int, dict[str, Any] | None]],
    ) -> None:
        ranks = cast(RankGroup, self.ranks)
        if self.memory_update_timing == "after":
            for d, b in enumerate(batches):
                chunks = self._local_chunks(b)
                outs = self._chunk_forwards(model, chunks, grad=False)
                feats = [_full_precision(o.features) for o in outs]
                update_memory_across_ranks(
                    self.memories[d], feats, [c["pid"] for c in chunks], ranks
                )
            return
        for d, aux in written:
            if aux is not None:
                update_memory_across_ranks(self.memories[d], aux["features"], aux["pid"], ranks)


def _mean_over_ranks(sums: list[Tensor], labels: list[Tensor], ranks: RankGroup) -> Tensor:
    """This process's share of a per-sample mean: N * (local sum) / (all ranks' samples)."""
    total = sum(sums)
    assert isinstance(total, Tensor)
    count = sum(ranks.sizes(labels))
    return total * (ranks.num_ranks / len(ranks.local_ranks)) / count


def _tracked_batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and m.training
        and m.track_running_stats
        and m.running_mean is not None
    ]


@contextlib.contextmanager
def _mean_running_stats(model: nn.Module, num_chunks: int) -> Iterator[Callable[[int], None]]:
    """Yield ``before_chunk(i)``; on exit the running statistics are the chunks' mean.

    Each chunk's forward starts from the statistics before the first chunk
    (``before_chunk`` restores them); the exit sets the running mean and variance to the
    mean over chunks of the values each chunk's forward left (``num_batches_tracked``
    moved by one, as after one forward). A no-op for one chunk.
    """
    layers = _tracked_batchnorms(model) if num_chunks > 1 else []
    start = [
        (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())  # type: ignore[union-attr]
        for m in layers
    ]
    sums: list[list[Tensor]] = [[torch.zeros_like(a), torch.zeros_like(b)] for a, b, _ in start]

    def collect() -> None:
        for m, acc in zip(layers, sums, strict=True):
            acc[0] += cast(Tensor, m.running_mean)
            acc[1] += cast(Tensor, m.running_var)

    # The buffers are replaced, never written in place: a chunk's forward saved them for
    # its backward, and an in-place write would invalidate that graph.
    def before_chunk(i: int) -> None:
        if i == 0 or not layers:
            return
        collect()
        for m, (mean, var, count) in zip(layers, start, strict=True):
            m.running_mean = mean.clone()
            m.running_var = var.clone()
            m.num_batches_tracked = count.clone()

    yield before_chunk
    if layers:
        collect()
        for m, (mean, var) in zip(layers, sums, strict=True):
            m.running_mean = mean / num_chunks
            m.running_var = var / num_chunks


def _average_running_stats_(model: nn.Module, ranks: RankGroup) -> None:
    """Running means and variances of every BatchNorm averaged over the processes."""
    buffers: list[Tensor] = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            buffers += [m.running_mean, cast(Tensor, m.running_var)]
    if not buffers:
        return
    with torch.no_grad():
        for b, mean in zip(buffers, ranks.all_reduce_mean(buffers), strict=True):
            assert mean is not None
            b.copy_(mean)


def _full_precision(t: Tensor) -> Tensor:
    """Autocast's float16/bfloat16 outputs as float32; float32 and float64 as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _logits(logits: Any, domain: int | None = None) -> Tensor:
    if logits is None:
        raise RuntimeError("id_loss needs classifier heads but the model has none")
    if domain is None:
        return logits
    return logits[domain]
