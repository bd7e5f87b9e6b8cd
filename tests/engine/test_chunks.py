"""The chunk layer: whole batch, identity chunks, DataParallel's chunks, against references.

Every reference here runs the model on each chunk by hand (copies of the model where a
chunk's side effects must be isolated), without the layer.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metareid import MemoryBank, MetaBN, MetaLearner, Phase, metabn_phase
from metareid.distributed import MicroBatchRanks, split_batch_in_order
from metareid.engine import (
    BatchOutputs,
    DataParallelSplit,
    IdentitySplit,
    M3LObjective,
    M3LStep,
)
from metareid.models import ReIDModel

DIM = 6


def tiny_model(seed: int = 0) -> ReIDModel:
    torch.manual_seed(seed)
    trunk = nn.Sequential(nn.Conv2d(3, DIM, 3, bias=False), nn.BatchNorm2d(DIM), nn.ReLU())
    return ReIDModel(trunk, feat_dim=DIM).double().train()


def batch(n_ids: int = 4, k: int = 2, seed: int = 0, size=(8, 4)) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "img": torch.randn(n_ids * k, 3, *size, generator=g, dtype=torch.float64),
        "pid": torch.randperm(n_ids, generator=g).repeat_interleave(k),
    }


def make_banks(n: int = 3, **kw) -> list[MemoryBank]:
    banks = []
    for _ in range(n):
        bank = MemoryBank(4, DIM, dtype=torch.float64, **kw)
        bank.init_from(F.normalize(torch.randn(4, DIM, dtype=torch.float64)), torch.arange(4))
        banks.append(bank)
    return banks


def bn_state(model: nn.Module) -> list[torch.Tensor]:
    return [b.clone() for n, b in model.named_buffers() if "running" in n]


def test_split_batch_in_order_is_dataparallels_scatter():
    b = {"pid": torch.arange(64), "img": torch.zeros(64, 1), "path": [str(i) for i in range(64)]}
    chunks = split_batch_in_order(b, 3)
    assert [len(c["pid"]) for c in chunks] == [22, 22, 20]
    assert torch.equal(torch.cat([c["pid"] for c in chunks]), b["pid"])
    assert chunks[2]["path"][0] == "44"
    assert [len(c["pid"]) for c in split_batch_in_order({"pid": torch.arange(4)}, 3)] == [2, 2]
    with pytest.raises(ValueError, match="num_chunks must be an int >= 1"):
        split_batch_in_order(b, 0)
    with pytest.raises(ValueError, match="has no key 'pid'"):
        split_batch_in_order({"img": torch.zeros(2)}, 2)


def test_whole_batch_is_the_plain_forward_bitwise():
    model, twin = tiny_model(), tiny_model()
    b = batch()
    out = IdentitySplit().forward(model, b, Phase.NORMAL)
    ref = twin(b["img"])
    assert torch.equal(out.features, ref.features) and torch.equal(out.pooled, ref.pooled)
    assert all(torch.equal(a, c) for a, c in zip(bn_state(model), bn_state(twin)))
    assert out.chunk_sizes == (8,) and out.mixtures == 1 and not out.mixed


@pytest.mark.parametrize("split_kind", ["identity", "dataparallel"])
def test_chunks_run_separately_and_running_stats_follow_the_rule(split_kind):
    model = tiny_model()
    b = batch(n_ids=4, k=3)  # 12 samples: identity chunks of 6, DataParallel 4/4/4 over 3
    split = IdentitySplit(MicroBatchRanks(2)) if split_kind == "identity" else DataParallelSplit(3)
    chunks = split.chunks(b)
    # Reference: every chunk through its own copy of the model.
    copies = [copy.deepcopy(model) for _ in chunks]
    refs = [m(c["img"]) for m, c in zip(copies, chunks)]
    out = split.forward(model, b, Phase.NORMAL)
    torch.testing.assert_close(out.features, torch.cat([r.features for r in refs]), rtol=0, atol=0)
    torch.testing.assert_close(out.pooled, torch.cat([r.pooled for r in refs]), rtol=0, atol=0)
    states = [bn_state(m) for m in copies]
    if split_kind == "identity":  # the mean of the chunks' updates
        expected = [sum(s[i] for s in states) / len(states) for i in range(len(states[0]))]
    else:  # GPU 0's replica owns the buffers
        expected = states[0]
    for got, want in zip(bn_state(model), expected):
        torch.testing.assert_close(got, want, rtol=1e-15, atol=1e-15)
    assert int(model.backbone[1].num_batches_tracked) == 1
    assert out.chunk_sizes == tuple(len(c["pid"]) for c in chunks)
    assert out.memory_mean == ("samples" if split_kind == "identity" else "chunks")


@pytest.mark.parametrize("split_kind", ["identity", "dataparallel"])
def test_metabn_records_and_mixes_per_the_rule(split_kind):
    model = tiny_model()
    split = IdentitySplit(MicroBatchRanks(2)) if split_kind == "identity" else DataParallelSplit(2)
    train = [batch(seed=1), batch(seed=2)]
    test = batch(seed=3)
    gens = [torch.Generator().manual_seed(10 + c) for c in range(2)]
    with metabn_phase(model, "meta_train"):
        model.neck.clear_stats()
        for b in train:
            split.forward(model, b, Phase.META_TRAIN)
    # Two domains x two chunks recorded, or two domains x the first chunk only.
    assert len(model.neck.domain_stats) == (4 if split_kind == "identity" else 2)
    with metabn_phase(model, "meta_test"):
        out = split.forward(model, test, Phase.META_TEST, generators=gens)
    assert out.mixtures == 2 and out.mixed and out.features.shape == (2 * 8, DIM)
    # Reference: chunk c of the meta-test batch on a copy that recorded chunk c's (or
    # chunk 0's) statistics of both domains, with chunk c's generator.
    for c, chunk in enumerate(split.chunks(test)):
        ref = copy.deepcopy(model)
        ref.neck.clear_stats()
        src = c if split_kind == "identity" else 0
        with metabn_phase(ref, "meta_train"):
            for b in train:
                ref(split.chunks(b)[src]["img"])
        ref.neck.generator = torch.Generator().manual_seed(10 + c)
        with metabn_phase(ref, "meta_test"):
            feats = ref(chunk["img"]).features
        n = len(chunk["pid"])
        for i in range(2):  # mixture-major rows: mixture i of chunk c
            rows = out.features[i * 8 + c * 4 : i * 8 + c * 4 + n]
            torch.testing.assert_close(rows, feats[i * n : (i + 1) * n], rtol=1e-13, atol=1e-13)
    assert torch.equal(out.labels, test["pid"].repeat(2))


def test_chunk_mean_memory_loss_is_the_mean_of_the_chunk_means():
    bank = MemoryBank(4, DIM, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    bank.init_from(
        F.normalize(torch.randn(4, DIM, generator=g, dtype=torch.float64)), torch.arange(4)
    )
    feats = F.normalize(torch.randn(2 * 8, DIM, generator=g, dtype=torch.float64))
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    out = BatchOutputs(
        pooled=torch.randn(8, DIM, dtype=torch.float64),
        features=feats,
        logits=None,
        pids=pids,
        mixtures=2,
        mixed=True,
        chunk_sizes=(3, 3, 2),
        memory_mean="chunks",
    )
    obj = M3LObjective([bank], 1, triplet=False)
    means = []
    for i in range(2):  # a per-chunk loop, written out
        start = i * 8
        for lo, hi in ((0, 3), (3, 6), (6, 8)):
            rows = slice(start + lo, start + hi)
            logits = feats[rows] @ bank.features.T / 0.05
            means.append(F.cross_entropy(logits, pids[lo:hi]))
    torch.testing.assert_close(obj.loss(out, 0), torch.stack(means).mean(), rtol=1e-14, atol=0)
    plain = BatchOutputs(out.pooled, feats, None, pids, mixtures=2, chunk_sizes=(3, 3, 2))
    logits = feats @ bank.features.T / 0.05
    torch.testing.assert_close(obj.loss(plain, 0), F.cross_entropy(logits, pids.repeat(2)))


@pytest.mark.parametrize("backend", ["higher", "func"])
@pytest.mark.parametrize("split_kind", ["whole", "identity", "dataparallel"])
def test_meta_test_bn_stats_update_keeps_the_meta_test_forward(backend, split_kind):
    # With "update" the running statistics after the step are those of the meta-train
    # forwards followed by a train-mode forward of the meta-test batch at Theta' (chunked
    # as the split chunks it); with "frozen", those of the meta-train forwards alone.
    split = {
        "whole": IdentitySplit(),
        "identity": IdentitySplit(MicroBatchRanks(2)),
        "dataparallel": DataParallelSplit(3),
    }[split_kind]
    batches = [batch(seed=s) for s in (4, 5, 6)]
    banks = make_banks()
    stats = {}
    for mode in ("frozen", "update"):
        model = tiny_model()
        model.neck = nn.BatchNorm1d(DIM).double()  # type: ignore[assignment]
        opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: Theta' = Theta
        learner = MetaLearner(
            model, opt, backend=backend, meta_test_bn_stats=mode, inner_optimizer="sgd"
        )
        step = M3LStep(M3LObjective(banks, 3), split)
        ref = copy.deepcopy(model)
        learner.meta_backward(batches, step.loss_fn, meta_test=2)
        for d in (0, 1) if mode == "frozen" else (0, 1, 2):
            split.forward(ref, batches[d], Phase.NORMAL)
        for got, want in zip(bn_state(model), bn_state(ref)):
            torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-14)
        stats[mode] = bn_state(model)
    assert any(not torch.equal(a, b) for a, b in zip(stats["frozen"], stats["update"]))


def test_grad_norms_are_the_two_terms():
    model = tiny_model()
    model.neck = nn.BatchNorm1d(DIM).double()  # type: ignore[assignment]
    batches = [batch(seed=s) for s in (7, 8, 9)]
    banks = make_banks()
    step = M3LStep(M3LObjective(banks, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    learner = MetaLearner(model, opt, meta_test_grad="second_order_only")
    params = [p for p in model.parameters() if p.requires_grad]
    # The meta-train term alone: the gradient of L_mtr, by plain autograd on a copy.
    twin = copy.deepcopy(model)
    twin_params = [p for p in twin.parameters() if p.requires_grad]
    with metabn_phase(twin, "meta_train"):
        l_mtr = sum(step.loss_fn(twin, batches[d], d, Phase.META_TRAIN)[0] for d in (0, 1)) / 2
    g = torch.autograd.grad(l_mtr, twin_params)
    res = learner.meta_backward(batches, step.loss_fn, meta_test=2)
    g_norm = float(torch.sqrt(sum((x.double() ** 2).sum() for x in g)))
    assert res.meta_train_grad_norm == pytest.approx(g_norm, rel=1e-10)
    rest = [p.grad - x for p, x in zip(params, g)]
    rest_norm = float(torch.sqrt(sum((x**2).sum() for x in rest)))
    assert res.meta_test_grad_norm == pytest.approx(rest_norm, rel=1e-6)
    assert 0 < res.meta_test_grad_norm < res.meta_train_grad_norm


def test_bad_input():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"one torch.Generator per local chunk \(2\), got 1"):
        IdentitySplit(MicroBatchRanks(2)).forward(
            model, batch(), Phase.NORMAL, generators=[torch.Generator()]
        )
    with pytest.raises(RuntimeError, match="returned a tensor in train mode"):
        IdentitySplit().forward(model.eval(), batch(), Phase.NORMAL)
    with pytest.raises(TypeError, match="ranks must be a RankGroup or None"):
        IdentitySplit(2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="local_batches=True needs ranks"):
        IdentitySplit(local_batches=True)
    with pytest.raises(ValueError, match="num_devices must be an int >= 1"):
        DataParallelSplit(0)
    assert IdentitySplit().learner_hooks() == {} and DataParallelSplit(3).learner_hooks() == {}
    with pytest.raises(TypeError, match="out must be a BatchOutputs"):
        M3LObjective([], 1, id_loss="none").loss(object(), 0)  # type: ignore[arg-type]


def test_dataparallel_split_with_a_mixing_neck_trains_end_to_end():
    # Three domains, three replicas, second order: finite, moves, never writes a mixture.
    model = tiny_model()
    banks = make_banks(update_rule="sequential")
    step = M3LStep(M3LObjective(banks, 3), DataParallelSplit(3), memory_update_timing="after")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    learner = MetaLearner(model, opt, meta_test_grad="second_order_only")
    before = [p.detach().clone() for p in model.parameters()]
    gens = [torch.Generator().manual_seed(c) for c in range(3)]
    out = step(model, [batch(seed=s) for s in (1, 2, 3)], opt, learner, generators=gens)
    assert all(torch.isfinite(torch.tensor(v)) for v in out.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert isinstance(model.neck, MetaBN)
