"""The trainer's distributed plumbing: ranks, devices, random streams, rank-0 file writes.

One place decides how a run is split (see docs/distributed.md):

* one process, ``micro_batches=1``: no split (``ranks=None``), today's computation and
  random streams (``dataparallel=N``: DataParallel's chunks in this process, see
  :class:`~metareid.engine.DataParallelSplit`, with the per-chunk streams below);
* one process, ``micro_batches=N > 1``: ``MicroBatchRanks(N)``;
* ``torchrun`` with W > 1 processes and ``micro_batches=M``:
  ``ProcessRanks(chunks_per_process=M)`` (M chunks per process, N = W x M).

Every N > 1 layout with the same N computes the same thing, so a checkpoint resumes
under any of them (``num_chunks`` in the checkpoint).

Random streams with N > 1 (both kinds) are seeded per iteration, so that a resumed run,
at any iteration, continues them, and so that rank ``r`` of N processes draws what chunk
``r`` of N micro-batches draws:

* MetaBN noise of chunk/rank ``r`` at (0-based, global) iteration ``i``: a generator
  seeded with ``stream_seed(seed, METABN_STREAM, r, i)`` (also DataParallel replica ``r``);
* the meta-test domain at iteration ``i``: drawn on rank 0 by
  ``torch.randint(num_domains, (1,))`` with a generator seeded with
  ``stream_seed(seed, META_TEST_STREAM, i)`` and broadcast;
* the sampler: ``(seed, domain, epoch)``, as in one process: every process draws the
  same global batch and loads only the identities of its chunks
  (:class:`~metareid.data.IdentityChunkSampler`);
* the augmentation of every sample: its own seed, a function of ``(seed, domain,
  epoch)``, the batch number and the position in the global batch
  (:func:`~metareid.data.sample_seeds`), wherever it is loaded. (Without a split the
  augmentations come from torch's global generator, as before.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from metareid.config import TrainConfig
from metareid.distributed import (
    DistributedContext,
    MicroBatchRanks,
    ProcessRanks,
    RankGroup,
    barrier,
    check_config_consistency,
    init_distributed,
)
from metareid.engine.build import resolve_device
from metareid.engine.chunks import BatchSplit

META_TEST_STREAM = 1
METABN_STREAM = 2

# Config fields that may differ between the ranks of one job.
PER_RANK_FIELDS = ("progress", "device")


def stream_seed(seed: int, stream: int, *ids: int) -> int:
    """A 63-bit seed for the random stream ``stream`` of ``(seed, *ids)``.

    Example:
        >>> stream_seed(0, METABN_STREAM, 1, 5) == stream_seed(0, METABN_STREAM, 1, 5)
        True
    """
    state = np.random.SeedSequence([seed, stream, *ids]).generate_state(1, dtype=np.uint64)
    return int(state[0]) & (2**63 - 1)


@dataclass
class Plumbing:
    """How this process takes part in the run."""

    context: DistributedContext
    device: torch.device
    ranks: RankGroup | None
    num_chunks: int

    @property
    def processes(self) -> bool:
        """True under ``torchrun`` with more than one process."""
        return self.context.world_size > 1

    @property
    def identity_chunk(self) -> tuple[int, int] | None:
        """What this process loads of every global batch: ``(rank, world size)``, ``(0, 1)``
        for micro-batches in one process, ``None`` without a split (whole batches,
        augmentations from the global generator)."""
        if self.ranks is None:
            return None
        return (self.context.rank, self.context.world_size)

    def metabn_generators(
        self, seed: int, iteration: int, split: BatchSplit
    ) -> list[torch.Generator] | None:
        """One generator per local chunk of ``split`` for iteration ``iteration``.

        Chunk ``c`` of the whole batch (rank ``c``, micro-batch ``c`` or DataParallel
        replica ``c``) draws from ``stream_seed(seed, METABN_STREAM, c, iteration)``.
        ``None`` for a split into one chunk (the layers' own generator).
        """
        if split.num_chunks == 1:
            return None
        first = self.ranks.local_ranks[0] if self.ranks is not None else 0
        return [
            torch.Generator(self.device).manual_seed(stream_seed(seed, METABN_STREAM, c, iteration))
            for c in range(first, first + split.num_local_chunks)
        ]

    def meta_test_domain(self, seed: int, iteration: int, num_domains: int) -> int:
        """The meta-test domain of ``iteration``, the same on every rank."""
        gen = torch.Generator().manual_seed(stream_seed(seed, META_TEST_STREAM, iteration))
        drawn = int(torch.randint(num_domains, (1,), generator=gen).item())
        return drawn if self.ranks is None else int(self.ranks.broadcast_object(drawn))

    def barrier(self) -> None:
        """Wait for every rank (a no-op in one process)."""
        if self.processes:
            barrier()


def setup(cfg: TrainConfig) -> Plumbing:
    """Join the ``torchrun`` process group, if any, and pick the device and the ranks.

    Raises:
        ValueError: the number of chunks (processes x ``micro_batches``) does not divide
            ``num_identities``, or the ranks' configs differ (naming the keys).
    """
    under_torchrun = "WORLD_SIZE" in os.environ or (dist.is_available() and dist.is_initialized())
    if under_torchrun:
        device_type = None if cfg.device == "auto" else torch.device(cfg.device).type
        context = init_distributed(device_type=device_type)
    else:
        context = init_distributed(env={})
    if context.world_size > 1 and cfg.dataparallel > 1:
        raise ValueError(
            f"dataparallel={cfg.dataparallel} computes nn.DataParallel in one process and "
            f"cannot run under torchrun ({context.world_size} processes); use "
            "--micro-batches for chunks per process"
        )
    if context.world_size == 1:
        device = resolve_device(cfg.device)
        context = DistributedContext(0, 1, 0, device, context.backend, True)
        if cfg.micro_batches == 1:
            return Plumbing(context, device, None, 1)
        return Plumbing(context, device, MicroBatchRanks(cfg.micro_batches), cfg.micro_batches)
    world, per_process = context.world_size, cfg.micro_batches
    chunks = world * per_process
    if cfg.num_identities % chunks:
        raise ValueError(
            f"the {world} torchrun processes x micro_batches={per_process} = {chunks} chunks "
            f"must divide num_identities={cfg.num_identities}, so that every chunk holds "
            "whole identities"
        )
    settings = {k: v for k, v in cfg.to_dict().items() if k not in PER_RANK_FIELDS}
    check_config_consistency(settings)
    ranks = ProcessRanks(chunks_per_process=per_process)
    return Plumbing(context, context.device, ranks, chunks)


def broadcast_module_(module: nn.Module, plumbing: Plumbing) -> None:
    """Rank 0's parameters and buffers on every rank (what DDP does at construction)."""
    if not plumbing.processes:
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, 0)


def share_from_main(obj: Any, plumbing: Plumbing) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself in one process)."""
    if not plumbing.processes:
        return obj
    assert plumbing.ranks is not None
    return plumbing.ranks.broadcast_object(obj)
