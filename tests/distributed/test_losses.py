"""Whole-batch losses across ranks: 2 gloo ranks = 2 micro-batches in one process = 1 batch.

The model has a BatchNorm1d so that per-rank statistics matter: 2 ranks must equal
MicroBatchRanks(2) exactly (float64), and, without the BatchNorm, the plain one-process
losses of metareid.functional on the whole batch.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call
from toy_ranks import NUM_IDS, D, K, make_batch, make_memory, make_model, whole_batch_loss

from metareid.distributed import (
    MicroBatchRanks,
    ProcessRanks,
    all_gather_concat,
    local_chunks,
    split_batch_by_identity,
)
from metareid.functional import hard_triplet_loss, memory_id_loss

pytestmark = pytest.mark.distributed


def objective(model, params, chunks, ranks, memory):
    """Eq. 8 of the paper on a split batch: triplet on raw, memory loss on normalised features."""
    feats = [functional_call(model, params, (c["x"],)) for c in chunks]
    return whole_batch_loss(feats, [c["pid"] for c in chunks], ranks, memory)


def meta_step(model, train, test, memories, ranks, first_order):
    """Algorithm 1's gradient with the global meta-train gradient: returns (L_mtr, L_mte)."""
    names, params = zip(*[(n, p) for n, p in model.named_parameters()])
    inner = objective(
        model, dict(zip(names, params)), local_chunks(train, ranks), ranks, memories[0]
    )
    grads = torch.autograd.grad(inner, params, create_graph=not first_order)
    grads = ranks.all_reduce_mean(grads)  # MetaLearner's grad_transform
    fast = {n: p - 0.1 * g for n, p, g in zip(names, params, grads)}
    outer = objective(model, fast, local_chunks(test, ranks), ranks, memories[1])
    outer.backward(inputs=list(params))
    for p, g in zip(params, grads):
        p.grad.add_(g.detach())
    ranks.all_reduce_grads_(params)  # the outer all-reduce
    return inner.detach(), outer.detach()


def plain_objective(model, params, batch, memory):
    feats = functional_call(model, params, (batch["x"],))
    return hard_triplet_loss(feats, batch["pid"]) + memory_id_loss(
        F.normalize(feats, dim=1), batch["pid"], memory.snapshot()
    )


def plain_meta_step(model, train, test, memories, first_order):
    names, params = zip(*[(n, p) for n, p in model.named_parameters()])
    inner = plain_objective(model, dict(zip(names, params)), train, memories[0])
    grads = torch.autograd.grad(inner, params, create_graph=not first_order)
    fast = {n: p - 0.1 * g for n, p, g in zip(names, params, grads)}
    outer = plain_objective(model, fast, test, memories[1])
    outer.backward(inputs=list(params))
    for p, g in zip(params, grads):
        p.grad.add_(g.detach())
    return inner.detach(), outer.detach()


def same_as_micro_batches(ranks, n, bn, first_order, train, test, memories):
    """A meta step on ``ranks`` equals one on ``MicroBatchRanks(n)``: the mean over the
    processes of the losses, and every gradient. Returns the model and that mean."""
    model = make_model(bn)
    losses = meta_step(model, train, test, memories, ranks, first_order)
    # The mean over processes of the returned losses is the whole-batch loss.
    mean_losses = all_gather_concat(torch.stack(losses)[None]).mean(dim=0)
    emulated = make_model(bn)
    emulated_losses = meta_step(emulated, train, test, memories, MicroBatchRanks(n), first_order)
    torch.testing.assert_close(mean_losses, torch.stack(emulated_losses), rtol=1e-12, atol=1e-12)
    for (name, p), q in zip(model.named_parameters(), emulated.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=name)
    return model, mean_losses


def _losses(ctx, out):
    train, test = make_batch(1), make_batch(2)
    memories = [make_memory(3), make_memory(4)]
    real = ProcessRanks()
    for bn in (True, False):
        for first_order in (False, True):
            model, mean_losses = same_as_micro_batches(
                real, 2, bn, first_order, train, test, memories
            )
            if bn:  # per-rank statistics, as DataParallel's per GPU: they differ between ranks
                torch.save(model[1].running_mean, out / f"running_mean{ctx.rank}_{first_order}.pt")
            else:
                single = make_model(False)
                single_losses = plain_meta_step(single, train, test, memories, first_order)
                torch.testing.assert_close(
                    mean_losses, torch.stack(single_losses), rtol=1e-12, atol=1e-12
                )
                for (name, p), q in zip(model.named_parameters(), single.parameters()):
                    torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=name)
            torch.save(
                [p.grad for p in model.parameters()], out / f"grads{ctx.rank}_{bn}_{first_order}.pt"
            )


def test_meta_step_on_two_ranks_equals_two_micro_batches_and_one_batch(run_ranks):
    out = run_ranks(_losses)
    for name in sorted(p.name for p in out.glob("grads0_*.pt")):
        rank0 = torch.load(out / name)
        rank1 = torch.load(out / name.replace("grads0", "grads1"))
        assert all(torch.equal(a, b) for a, b in zip(rank0, rank1)), name
    for first_order in (False, True):
        means = [torch.load(out / f"running_mean{r}_{first_order}.pt") for r in range(2)]
        assert not torch.allclose(means[0], means[1])


def _hybrid_losses(ctx, out):
    """2 processes x 2 micro-batches (N = 4) = MicroBatchRanks(4), with and without BN."""
    train, test = make_batch(1), make_batch(2)
    memories = [make_memory(3), make_memory(4)]
    hybrid = ProcessRanks(chunks_per_process=2)
    assert hybrid.num_ranks == 4 and hybrid.local_ranks == (2 * ctx.rank, 2 * ctx.rank + 1)
    for bn in (True, False):
        for first_order in (False, True):
            same_as_micro_batches(hybrid, 4, bn, first_order, train, test, memories)


def test_meta_step_on_two_processes_of_two_chunks_equals_four_micro_batches(run_ranks):
    run_ranks(_hybrid_losses)


def test_process_ranks_with_several_chunks_in_one_process():
    """Without a process group, ProcessRanks(chunks_per_process=M) is MicroBatchRanks(M)."""
    ranks = ProcessRanks(chunks_per_process=2)
    assert (ranks.num_ranks, ranks.local_ranks) == (2, (0, 1))
    parts = [torch.arange(3.0), torch.arange(2.0)]
    assert torch.equal(ranks.gather(parts), MicroBatchRanks(2).gather(parts))
    assert ranks.offsets(parts) == [0, 3, 5]
    assert "chunks_per_process=2" in repr(ranks)
    with pytest.raises(
        ValueError, match=r"parts must hold one tensor per local rank .*\(2\), got 1"
    ):
        ranks.gather([parts[0]])
    with pytest.raises(ValueError, match="chunks_per_process"):
        ProcessRanks(chunks_per_process=0)


def test_micro_batch_losses_equal_the_plain_losses_on_the_whole_batch():
    batch = make_batch(5)
    feats = torch.randn(NUM_IDS * K, D, dtype=torch.float64, requires_grad=True)
    memory = make_memory(6)
    chunks = split_batch_by_identity({"f": feats, "pid": batch["pid"]}, 2)
    parts, pids = [c["f"] for c in chunks], [c["pid"] for c in chunks]
    plain = hard_triplet_loss(feats, batch["pid"]) + memory_id_loss(
        F.normalize(feats, dim=1), batch["pid"], memory.snapshot()
    )
    assert torch.equal(whole_batch_loss(parts, pids, MicroBatchRanks(2), memory), plain)
    # One rank without a process group: the plain losses too.
    assert torch.equal(whole_batch_loss([feats], [batch["pid"]], ProcessRanks(), memory), plain)
