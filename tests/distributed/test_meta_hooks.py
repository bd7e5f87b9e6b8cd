"""MetaLearner with the distributed hooks: 2 gloo ranks = 1 process (float64).

``grad_transform=ranks.all_reduce_mean`` and ``outer_grad_transform=ranks.all_reduce_grads_``
make the meta-gradient of 2 ranks, each holding half of every domain's identities, equal
to the single-process meta-gradient on the whole batch when the model has no BatchNorm,
and equal to ``MicroBatchRanks(2)`` (per-chunk statistics, no hooks) with a BatchNorm.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from toy_ranks import make_batch, make_memory, make_model, whole_batch_loss

from metareid import MetaLearner
from metareid.distributed import MicroBatchRanks, ProcessRanks, local_chunks
from metareid.functional import hard_triplet_loss, memory_id_loss

pytestmark = pytest.mark.distributed


def split_loss(ranks, memories):
    def loss_fn(model, batch, domain, phase):
        chunks = local_chunks(batch, ranks)
        feats = [model(c["x"]) for c in chunks]
        return whole_batch_loss(feats, [c["pid"] for c in chunks], ranks, memories[domain])

    return loss_fn


def plain_loss(memories):
    def loss_fn(model, batch, domain, phase):
        feats = model(batch["x"])
        return hard_triplet_loss(feats, batch["pid"]) + memory_id_loss(
            F.normalize(feats, dim=1), batch["pid"], memories[domain].snapshot()
        )

    return loss_fn


def meta_grads(model, loss_fn, backend, first_order, hooks=None):
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    kwargs = {}
    if hooks is not None:
        kwargs = dict(
            grad_transform=hooks.all_reduce_mean, outer_grad_transform=hooks.all_reduce_grads_
        )
    learner = MetaLearner(
        model,
        opt,
        backend=backend,
        meta_test_grad="first_order" if first_order else "full",
        **kwargs,
    )
    batches = [make_batch(1), make_batch(2), make_batch(3)]
    learner.meta_backward(batches, loss_fn, meta_test=1)
    return [p.grad for p in model.parameters()]


def _hooks(ctx, out):
    memories = [make_memory(s) for s in (4, 5, 6)]
    real = ProcessRanks()
    for backend in ("higher", "func"):
        for first_order in (False, True):
            for bn in (True, False):
                got = meta_grads(
                    make_model(bn), split_loss(real, memories), backend, first_order, hooks=real
                )
                emulated = meta_grads(
                    make_model(bn), split_loss(MicroBatchRanks(2), memories), backend, first_order
                )
                for g, e in zip(got, emulated, strict=True):
                    torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
                if not bn:
                    single = meta_grads(make_model(bn), plain_loss(memories), backend, first_order)
                    for g, e in zip(got, single, strict=True):
                        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
                torch.save(got, out / f"grads{ctx.rank}_{backend}_{first_order}_{bn}.pt")


def test_meta_gradient_of_two_ranks_equals_one_process(run_ranks):
    out = run_ranks(_hooks, timeout=120)
    for path in sorted(out.glob("grads0_*.pt")):
        other = path.with_name(path.name.replace("grads0_", "grads1_"))
        for a, b in zip(torch.load(path), torch.load(other), strict=True):
            assert torch.equal(a, b), path.name  # identical on both ranks
