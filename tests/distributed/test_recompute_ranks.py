"""Recomputed chunks under torchrun: 2 gloo processes x 2 recomputed chunks = 4 micro-batches.

The reference is one process with ``MicroBatchRanks(4)`` keeping every chunk's graph (the
split whose equality with torchrun ranks tests/distributed/test_trainer_ranks.py shows).
Each process recomputes its own two chunks, takes the whole batch's loss from the
gathered outputs and sums the chunks' gradients over the processes.
"""

from __future__ import annotations

import pytest
import torch
from recompute_case import banks, batch, tiny_model

from metareid import MetaLearner
from metareid.distributed import MicroBatchRanks, ProcessRanks
from metareid.engine import IdentitySplit, M3LObjective, M3LStep

pytestmark = pytest.mark.distributed

CASES = [
    ("baseline", "full"),
    ("m3l", "full"),
    ("m3l", "first_order"),
    ("m3l", "second_order_only"),
]


def one_step(split, method: str, mode: str) -> tuple[list[torch.Tensor], dict]:
    model = tiny_model()
    step = M3LStep(M3LObjective(banks(), num_domains=3), split)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    learner = None
    if method != "baseline":
        learner = MetaLearner(
            model, opt, inner_lr=1e-2, meta_test_grad=mode, backend="func", **split.learner_hooks()
        )
    # 4 identities x 2 images per domain: one identity per chunk
    batches = [batch(d) for d in range(3)]
    gens = [torch.Generator().manual_seed(100 + c) for c in range(4)]
    local = [gens[r] for r in (split.ranks.local_ranks if split.ranks else range(4))]
    log = step(model, batches, opt, learner, meta_test=1 if learner else None, generators=local)
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    return grads + [b.clone() for n, b in model.named_buffers() if "running" in n], log


def _ranks(ctx, out):
    for method, mode in CASES:
        got, log = one_step(
            IdentitySplit(ProcessRanks(chunks_per_process=2), recompute=True), method, mode
        )
        ref, ref_log = one_step(IdentitySplit(MicroBatchRanks(4)), method, mode)
        flat_got = torch.cat([g.flatten() for g in got])
        flat_ref = torch.cat([g.flatten() for g in ref])
        err = float((flat_got - flat_ref).abs().max() / flat_ref.abs().max())
        assert err < 1e-12, (method, mode, err)
        for key, value in ref_log.items():
            assert log[key] == pytest.approx(value, rel=1e-12, abs=1e-15), (method, mode, key)
        torch.save(got, out / f"grads{ctx.rank}_{method}_{mode}.pt")


def test_two_processes_of_two_recomputed_chunks_equal_four_kept_micro_batches(run_ranks):
    out = run_ranks(_ranks, timeout=180)
    for path in sorted(out.glob("grads0_*.pt")):
        other = path.with_name(path.name.replace("grads0_", "grads1_"))
        for a, b in zip(torch.load(path), torch.load(other), strict=True):
            assert torch.equal(a, b), path.name  # identical on both processes
