"""Recomputed chunks (``recompute=True``): the same step as keeping every chunk's graph.

The reference for every comparison is the same split without recomputation, which keeps
every chunk's graph alive until the backward (its own tests compare it against chunks run
by hand, tests/engine/test_chunks.py). The meta-gradient of the recomputed step is built a
different way (gradient caching, vector-Jacobian products of the inner step and
Hessian-vector products, :meth:`MetaLearner._meta_backward_recomputed`), so agreement to
rounding is a real check of that algebra. All in float64.
"""

from __future__ import annotations

import weakref

import pytest
import torch
import torch.nn.functional as F
from recompute_case import DIM, banks, batch, tiny_model
from torch import nn

from metareid import MemoryBank, MetaLearner
from metareid.distributed import MicroBatchRanks
from metareid.engine import DataParallelSplit, IdentitySplit, M3LObjective, M3LStep, TrainConfig

MODES = ("full", "first_order", "second_order_only")


def make_split(kind: str, recompute: bool):
    if kind == "identity":
        return IdentitySplit(MicroBatchRanks(2), recompute=recompute)
    if kind == "dataparallel":
        return DataParallelSplit(3, recompute=recompute)
    return IdentitySplit(recompute=recompute)  # the whole batch


def train(
    recompute: bool,
    *,
    method: str = "m3l",
    mode: str = "full",
    kind: str = "identity",
    iterations: int = 1,
    lr: float = 0.0,
    bn: str = "frozen",
    timing: str = "step",
    inner_optimizer: str = "adam",
):
    model = tiny_model(metabn=method != "meta")
    memories = banks()
    split = make_split(kind, recompute)
    objective = M3LObjective(memories, num_domains=3, triplet=True)
    step = M3LStep(objective, split, memory_update_timing=timing)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=5e-4)
    learner = None
    if method != "baseline":
        learner = MetaLearner(
            model,
            opt,
            inner_lr=1e-2,
            inner_optimizer=inner_optimizer,
            meta_test_grad=mode,
            meta_test_bn_stats=bn,
            backend="func",
        )
    grads, logs = [], []
    for it in range(iterations):
        gens = [torch.Generator().manual_seed(100 + 10 * it + c) for c in range(3)]
        batches = [batch(3 * it + d) for d in range(3)]
        logs.append(
            step(
                model,
                batches,
                opt,
                learner,
                meta_test=it % 3 if learner else None,
                generators=gens[: split.num_local_chunks],
            )
        )
        grads.append([None if p.grad is None else p.grad.clone() for p in model.parameters()])
    return model, opt, memories, grads, logs


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


CASES = [("baseline", "full")] + [("m3l", m) for m in MODES] + [("meta", "full")]


@pytest.mark.parametrize("kind", ["identity", "dataparallel", "whole"])
@pytest.mark.parametrize(("method", "mode"), CASES)
def test_gradients_equal_keeping_every_graph(kind, method, mode):
    got = train(True, method=method, mode=mode, kind=kind)
    ref = train(False, method=method, mode=mode, kind=kind)
    assert [g is None for g in got[3][0]] == [r is None for r in ref[3][0]]
    # Relative to the largest entry: some entries are zero in exact arithmetic (the bias
    # of a convolution followed by BatchNorm) and rounding noise in both.
    flat = [torch.cat([g.flatten() for g in r[3][0] if g is not None]) for r in (got, ref)]
    assert rel(*flat) < 1e-12
    for key in ref[4][0]:
        assert got[4][0][key] == pytest.approx(ref[4][0][key], rel=1e-12, abs=1e-15), key


FAST = {("m3l", "full", "update"), ("baseline", "full", "frozen")}


@pytest.mark.parametrize(
    ("method", "mode", "bn"),
    [
        pytest.param(*c, bn, marks=() if (*c, bn) in FAST else pytest.mark.slow)
        for c in CASES
        for bn in ("frozen", "update")
    ],
)
def test_three_iterations_leave_the_same_state(method, mode, bn):
    """Parameters, Adam state, running statistics and memories after three iterations."""
    got = train(True, method=method, mode=mode, iterations=3, lr=1e-4, bn=bn)
    ref = train(False, method=method, mode=mode, iterations=3, lr=1e-4, bn=bn)
    for (name, a), b in zip(got[0].state_dict().items(), ref[0].state_dict().values()):
        if a.is_floating_point():
            assert float((a - b).abs().max()) < 1e-10 * max(1.0, float(b.abs().max())), name
        else:
            assert torch.equal(a, b), name  # num_batches_tracked: one update per forward
    # Adam's moments, over all parameters at once (some are zero in exact arithmetic).
    for key in ("exp_avg", "exp_avg_sq"):
        a, b = (
            torch.cat([r[1].state[p][key].flatten() for p in r[0].parameters() if r[1].state[p]])
            for r in (got, ref)
        )
        assert rel(a, b) < 1e-10, key
    for a, b in zip(got[2], ref[2], strict=True):
        assert rel(a.features, b.features) < 1e-10


@pytest.mark.parametrize(
    "kw",
    [
        dict(timing="after"),
        pytest.param(dict(timing="after", method="baseline"), marks=pytest.mark.slow),
        pytest.param(dict(inner_optimizer="sgd"), marks=pytest.mark.slow),
    ],
)
def test_memory_timing_and_inner_sgd(kw):
    got = train(True, iterations=2, lr=1e-4, **kw)
    ref = train(False, iterations=2, lr=1e-4, **kw)
    for a, b in zip(got[0].parameters(), ref[0].parameters()):
        assert rel(a, b) < 1e-10
    for a, b in zip(got[2], ref[2]):
        assert rel(a.features, b.features) < 1e-10


def test_replays_leave_random_and_metabn_state_as_one_pass():
    states = []
    for recompute in (True, False):
        torch.manual_seed(7)
        model, *_ = train(recompute, iterations=1)
        states.append((torch.get_rng_state(), len(model.neck.domain_stats)))
    assert torch.equal(states[0][0], states[1][0])
    assert states[0][1] == states[1][1] == 4  # 2 meta-train domains x 2 chunks, once each


def test_dropout_draws_are_replayed():
    """A model with dropout in the trunk: the recomputed forwards draw the same masks."""

    def with_dropout():
        model = tiny_model()
        model.backbone.append(nn.Dropout(0.3))
        return model

    results = []
    for recompute in (True, False):
        torch.manual_seed(3)
        model = with_dropout()
        step = M3LStep(M3LObjective(banks(), num_domains=3), make_split("identity", recompute))
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        learner = MetaLearner(model, opt, inner_lr=1e-2, backend="func")
        torch.manual_seed(11)
        step(model, [batch(d) for d in range(3)], opt, learner, meta_test=0)
        results.append(
            torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        )
    assert rel(results[0], results[1]) < 1e-12


class SavedBytes:
    """Bytes of tensors saved for backward that are alive, and their peak."""

    def __init__(self) -> None:
        self.alive = 0
        self.peak = 0

    def pack(self, t: torch.Tensor):
        size = t.numel() * t.element_size()
        self.alive += size
        self.peak = max(self.peak, self.alive)
        box = [t]
        weakref.finalize(box_holder := _Box(box), self._release, size)
        return box_holder

    def _release(self, size: int) -> None:
        self.alive -= size

    @staticmethod
    def unpack(holder):
        return holder.value[0]


class _Box:
    def __init__(self, value):
        self.value = value


def saved_peak(recompute: bool, chunks: int, method: str = "m3l") -> int:
    model = tiny_model()
    split = IdentitySplit(MicroBatchRanks(chunks), recompute=recompute)
    step = M3LStep(M3LObjective(banks(), num_domains=3), split)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    learner = None if method == "baseline" else MetaLearner(model, opt, backend="func")
    batches = [batch(d, n_ids=4, k=4) for d in range(3)]
    meter = SavedBytes()
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
        step(model, batches, opt, learner, meta_test=0 if learner else None)
    return meter.peak


@pytest.mark.parametrize("method", ["m3l", "baseline"])
def test_one_chunk_graph_alive_at_a_time(method):
    """The activations saved for backward peak at about one chunk's, not the batch's."""
    kept = saved_peak(False, 4, method)
    recomputed = saved_peak(True, 4, method)
    assert recomputed < 0.45 * kept, (recomputed, kept)


def test_bad_recompute_values_are_refused():
    with pytest.raises(TypeError, match="recompute must be a bool, got 1"):
        IdentitySplit(recompute=1)
    with pytest.raises(TypeError, match="recompute must be a bool, got 'yes'"):
        DataParallelSplit(2, recompute="yes")
    with pytest.raises(ValueError, match="recompute must be a bool, got 'yes'"):
        TrainConfig(recompute="yes")


def test_grad_transform_is_refused_before_any_change():
    model = tiny_model()
    step = M3LStep(M3LObjective(banks(), num_domains=3), make_split("identity", True))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    learner = MetaLearner(model, opt, backend="func", grad_transform=lambda g: g)
    before = [t.clone() for t in model.state_dict().values()]
    with pytest.raises(ValueError, match="grad_transform is not supported with a RecomputedLoss"):
        step(model, [batch(d) for d in range(3)], opt, learner, meta_test=0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), before))
    assert all(p.grad is None for p in model.parameters())


def test_config_and_flag():
    from metareid.cli import build_parser
    from metareid.engine.build import build_split

    args = build_parser().parse_args(["train", "--micro-batches", "4", "--recompute"])
    cfg = TrainConfig.from_args(args)
    assert cfg.recompute and cfg.micro_batches == 4
    assert TrainConfig().recompute is False
    assert build_split(TrainConfig(dataparallel=3, recompute=True)).recompute
    split = build_split(cfg, MicroBatchRanks(4))
    assert split.recompute and split.num_chunks == 4


@pytest.mark.parametrize("mode", MODES)
def test_autocast_and_grad_scaler(mode):
    """bfloat16 autocast with a GradScaler: the same gradients, to float32 rounding."""
    import functools

    autocast = functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16)
    grads = []
    for recompute in (True, False):
        model = tiny_model().float()
        memories = [MemoryBank(4, DIM, update_rule="mean").to(torch.float32) for _ in range(3)]
        g = torch.Generator().manual_seed(5)
        for bank in memories:
            bank.init_from(F.normalize(torch.randn(4, DIM, generator=g)), torch.arange(4))
        step = M3LStep(
            M3LObjective(memories, num_domains=3),
            make_split("identity", recompute),
            autocast=autocast,
        )
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        learner = MetaLearner(
            model, opt, backend="func", meta_test_grad=mode, inner_lr=1e-2, grad_scaler=scaler
        )
        gens = [torch.Generator().manual_seed(100 + c) for c in range(2)]
        batches = [{**b, "img": b["img"].float()} for b in (batch(d) for d in range(3))]
        step(model, batches, opt, learner, meta_test=1, generators=gens)
        grads.append(
            torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        )
    assert rel(grads[0], grads[1]) < 1e-5  # float32 rounding, bfloat16 backward order
