"""Whole training iterations through metareid's public API == the transcriptions.

``m3l_reference.py`` transcribes the published code's numerics (and the paper's
equations) without metareid. Here the same tiny float64 network, the same batches, the
same meta-test draws and the same MetaBN noise and lambdas go through
``MetaLearner`` + ``M3LObjective`` + ``MemoryBank`` + ``ReIDModel`` (the components the
``Trainer`` builds from a config), for 1 and 3 iterations; parameters, Adam state, BN
running statistics and memories must agree to 1e-6.
"""

from __future__ import annotations

import m3l_reference as ref
import pytest
import torch
from torch import nn

from metareid import HardTripletLoss, MemoryBank, MemoryIDLoss, MetaLearner
from metareid.engine import PRESETS, M3LObjective, TrainConfig
from metareid.models import ReIDModel

NUM_DOMAINS, NUM_IDS, P, K = 3, 4, 3, 2
LR = 2e-3
TOL = dict(rtol=1e-6, atol=1e-6)


def make_data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    init_sets, batch_sets = [], []
    for d in range(NUM_DOMAINS):
        imgs = torch.randn(NUM_IDS * 2, 3, 8, 4, generator=g, dtype=torch.float64) + 0.5 * d
        init_sets.append((imgs, torch.arange(NUM_IDS).repeat_interleave(2)))
    for _ in range(3):
        batches = []
        for d in range(NUM_DOMAINS):
            ids = torch.randperm(NUM_IDS, generator=g)[:P]
            imgs = torch.randn(P * K, 3, 8, 4, generator=g, dtype=torch.float64) + 0.5 * d
            batches.append((imgs, ids.repeat_interleave(K)))
        batch_sets.append(batches)
    return init_sets, batch_sets


def build_metareid(variant: str, backend: str):
    """The run through the public API, with the switches of the preset ``variant``."""
    switches = PRESETS[variant]
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Conv2d(3, 6, 3, bias=False), nn.BatchNorm2d(6), nn.ReLU())
    model = ReIDModel(
        trunk,
        feat_dim=6,
        sample_scale=switches["metabn_scale"],
        share_lambda=switches["share_lambda"],
    ).double()
    model.neck.generator = torch.Generator().manual_seed(11)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=LR, weight_decay=5e-4)
    learner = MetaLearner(
        model,
        optimizer,
        inner_optimizer=switches["inner_optimizer"],
        inner_state=switches["inner_state"],
        inner_eps_root=switches["inner_eps_root"],
        first_order=switches["first_order"],
        backend=backend,
        generator=torch.Generator().manual_seed(7),
    )
    banks = [
        MemoryBank(NUM_IDS, 6, momentum=0.2, update=switches["memory_update"], dtype=torch.float64)
        for _ in range(NUM_DOMAINS)
    ]
    objective = M3LObjective(
        banks,
        NUM_DOMAINS,
        memory_loss=MemoryIDLoss(temperature=0.05),
        triplet_loss=HardTripletLoss(margin=0.3),
        metabn=True,
        memory_update_timing=switches["memory_update_timing"],
    )
    return model, optimizer, learner, banks, objective


def build_reference(model: ReIDModel) -> ref.State:
    """The transcription's state, from the same initial weights (copied, not shared)."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    names = {
        "conv.weight": "backbone.0.weight",
        "bn.weight": "backbone.1.weight",
        "bn.bias": "backbone.1.bias",
        "neck.weight": "neck.weight",
    }
    params = {k: sd[v].clone().requires_grad_() for k, v in names.items()}
    buffers = {
        "bn.running_mean": sd["backbone.1.running_mean"],
        "bn.running_var": sd["backbone.1.running_var"],
        "bn.num_batches_tracked": sd["backbone.1.num_batches_tracked"],
        "neck.running_mean": sd["neck.running_mean"],
        "neck.running_var": sd["neck.running_var"],
        "neck.num_batches_tracked": sd["neck.num_batches_tracked"],
    }
    opt = torch.optim.Adam([params[k] for k in ref.TRAINABLE], lr=LR, weight_decay=5e-4)
    return ref.State(
        params,
        sd["neck.bias"],
        buffers,
        [],
        opt,
        torch.Generator().manual_seed(11),
        torch.Generator().manual_seed(7),
    )


def run_both(variant: str, backend: str, iterations: int, inner_eps_root=None):
    init_sets, batch_sets = make_data()
    model, optimizer, learner, banks, objective = build_metareid(variant, backend)
    if inner_eps_root is not None:
        learner.inner_eps_root = inner_eps_root
    state = build_reference(model)
    # Memory initialisation: eval-mode features, class means, L2-normalised.
    model.eval()
    with torch.no_grad():
        for bank, (imgs, pids) in zip(banks, init_sets):
            bank.init_from(model(imgs), pids)
    ref.init_memories(state, init_sets, NUM_IDS)
    model.train()
    results = []
    for it in range(iterations):
        batches = [{"img": x, "pid": y} for x, y in batch_sets[it]]
        results.append(objective.step(model, batches, optimizer, learner))
        ref.iteration(state, batch_sets[it], LR, variant)
    return model, optimizer, banks, state, results


def assert_same(model, optimizer, banks, state):
    names = {
        "backbone.0.weight": "conv.weight",
        "backbone.1.weight": "bn.weight",
        "backbone.1.bias": "bn.bias",
        "neck.weight": "neck.weight",
    }
    got = dict(model.named_parameters())
    for ours, theirs in names.items():
        torch.testing.assert_close(got[ours].detach(), state.params[theirs].detach(), **TOL)
        s_ours, s_ref = optimizer.state[got[ours]], state.optimizer.state[state.params[theirs]]
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(s_ours[key], s_ref[key], **TOL)
        assert float(s_ours["step"]) == float(s_ref["step"])
    buffers = dict(model.named_buffers())
    for ours, theirs in (("backbone.1", "bn"), ("neck", "neck")):
        for b in ("running_mean", "running_var"):
            torch.testing.assert_close(
                buffers[f"{ours}.{b}"], state.buffers[f"{theirs}.{b}"], **TOL
            )
        assert int(buffers[f"{ours}.num_batches_tracked"]) == int(
            state.buffers[f"{theirs}.num_batches_tracked"]
        )
    for bank, memory in zip(banks, state.memories):
        torch.testing.assert_close(bank.features, memory, **TOL)


@pytest.mark.parametrize("backend", ["higher", "func"])
@pytest.mark.parametrize("iterations", [1, 3])
def test_published_configuration_equals_the_published_code(backend, iterations):
    model, optimizer, banks, state, results = run_both("published", backend, iterations)
    assert [int(r["meta_test_domain"]) for r in results] == [e["meta_test"] for e in state.log]
    for r, e in zip(results, state.log):
        assert r["meta_train_loss"] == pytest.approx(e["l_mtr"], rel=1e-9)
        assert r["meta_test_loss"] == pytest.approx(e["l_mte"], rel=1e-9)
    assert_same(model, optimizer, banks, state)


@pytest.mark.parametrize("backend", ["higher", "func"])
def test_paper_configuration_equals_the_paper_equations(backend):
    model, optimizer, banks, state, _ = run_both("paper", backend, 3)
    assert_same(model, optimizer, banks, state)


def test_the_exact_adam_inner_step_is_not_the_published_one():
    # Negative control: yesterday's default (torch.optim.Adam's inner step) fails parity.
    model, optimizer, banks, state, _ = run_both("published", "func", 1, inner_eps_root=0.0)
    with pytest.raises(AssertionError):
        assert_same(model, optimizer, banks, state)


def test_the_trainer_builds_these_components_from_the_presets(tmp_path):
    # The Trainer wires the same public components with the preset's switches.
    from metareid.data import prepare_synthetic_benchmark
    from metareid.engine import Trainer

    root = tmp_path / "syn"
    prepare_synthetic_benchmark(
        root,
        num_domains=3,
        train_ids_per_domain=2,
        test_ids_per_domain=1,
        num_junk=0,
        image_size=(16, 8),
    )
    for variant in ("published", "paper"):
        cfg = TrainConfig.from_dict(
            dict(
                preset=variant,
                data_dir=str(root),
                sources=["synthetic:0", "synthetic:1"],
                target="synthetic:2",
                arch="resnet10",
                pretrained="none",
                height=16,
                width=8,
                num_identities=2,
                num_instances=2,
                workers=0,
                output_dir=str(tmp_path / variant),
            )
        )
        tr = Trainer(cfg, log=lambda _m: None)
        sw = PRESETS[variant]
        assert tr.objective.memory_update_timing == sw["memory_update_timing"]
        assert all(m.update_mode == sw["memory_update"] for m in tr.memories)
        assert tr.model.neck.sample_scale == sw["metabn_scale"]
        assert tr.model.neck.share_lambda == sw["share_lambda"]
        assert tr.learner is not None
        assert tr.learner.inner_eps_root == sw["inner_eps_root"]
        assert tr.learner.first_order is sw["first_order"]
        assert tr.learner.inner_state == sw["inner_state"]
