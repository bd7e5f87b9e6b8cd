"""The float64 toy problem of the 2-rank loss and meta-hook tests (importable because
``pythonpath`` includes ``tests``; the rank processes get it on ``PYTHONPATH`` too).

NUM_IDS identities x K samples per batch in the sampler's layout (K in a row per
identity), inputs of width D_IN, a Linear(-BatchNorm)-Tanh-Linear model with D outputs,
and memories of NUM_IDS centroids.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metareid import MemoryBank
from metareid.functional import hard_triplet_loss, memory_id_loss

NUM_IDS, K, D_IN, D = 4, 3, 6, 5


def make_model(bn: bool) -> nn.Module:
    """The toy model (seeded), with a BatchNorm1d after the first layer when ``bn``."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(D_IN, D)]
    if bn:
        layers.append(nn.BatchNorm1d(D))
    layers += [nn.Tanh(), nn.Linear(D, D)]
    return nn.Sequential(*layers).double()


def make_batch(seed: int) -> dict:
    """``{"x": (NUM_IDS * K, D_IN), "pid": (NUM_IDS * K,)}``, identities in random order."""
    gen = torch.Generator().manual_seed(seed)
    pids = torch.randperm(NUM_IDS, generator=gen).repeat_interleave(K)
    return {"x": torch.randn(NUM_IDS * K, D_IN, dtype=torch.float64, generator=gen), "pid": pids}


def make_memory(seed: int) -> MemoryBank:
    """A float64 bank initialised from 3 random unit features per identity."""
    bank = MemoryBank(NUM_IDS, D, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    bank.init_from(
        F.normalize(torch.randn(3 * NUM_IDS, D, dtype=torch.float64, generator=gen), dim=1),
        torch.arange(3 * NUM_IDS) % NUM_IDS,
    )
    return bank


def whole_batch_loss(feats: list, pids: list, ranks, memory: MemoryBank):
    """Eq. 8 on a split batch as metareid's chunk layer computes it: every process gathers
    all ranks' outputs (with gradient) and computes the whole batch's loss.

    The gathers' backward sums what every process sends back, so each process holds W
    times its chunks' share of the gradient and the mean over the W processes (the
    MetaLearner hooks) is the whole batch's gradient.
    """
    gathered = ranks.gather_with_grad(feats)
    labels = ranks.gather(pids)
    return hard_triplet_loss(gathered, labels) + memory_id_loss(
        F.normalize(gathered, dim=1), labels, memory.snapshot()
    )
