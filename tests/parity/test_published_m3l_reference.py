"""Self-checks of the float64 transcription of the published M3L iteration (published_m3l.py).

These do not involve metareid: they check the transcription against closed forms and
against the properties of the published code that the parity tests rely on.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from published_m3l import (
    FEAT_DIM,
    Draw,
    PublishedM3L,
    bn2d_prefixes,
    forward_replica,
    memory_loss,
    parameter_shapes,
    triplet_loss,
)

F64 = torch.float64
H, W = 32, 16
LR = 3.5e-4


def make_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in parameter_shapes().items():
        if len(shape) == 4:
            fan_out = shape[0] * shape[2] * shape[3]
            weights[name] = torch.randn(shape, generator=g, dtype=F64) * math.sqrt(2.0 / fan_out)
        elif name.endswith(".weight"):
            weights[name] = 1.0 + 0.1 * torch.randn(shape, generator=g, dtype=F64)
        else:
            weights[name] = 0.1 * torch.randn(shape, generator=g, dtype=F64)
    return weights


def make_domain(seed: int, num_ids: int = 4, per_id: int = 3):
    g = torch.Generator().manual_seed(seed)
    pids = torch.arange(num_ids).repeat_interleave(per_id)
    images = torch.randn(num_ids * per_id, 3, H, W, generator=g, dtype=F64)
    return images, pids


def make_draws(images: torch.Tensor, num_gpus: int, seed: int, lam=None) -> list[Draw]:
    g = torch.Generator().manual_seed(seed)
    draws = []
    for chunk in images.chunk(num_gpus):
        value = float(torch.rand((), generator=g, dtype=F64)) if lam is None else lam
        draws.append(
            Draw(
                lam=value,
                noise1=torch.randn(chunk.size(0), FEAT_DIM, generator=g, dtype=F64),
                noise2=torch.randn(chunk.size(0), FEAT_DIM, generator=g, dtype=F64),
            )
        )
    return draws


@pytest.fixture(scope="module")
def data():
    # Three source domains of 4 identities x 3 images (batches of 12, chunks 4/4/4 on 3 "GPUs").
    return [make_domain(10 + d) for d in range(3)]


def make_model(data, num_gpus: int = 1, seed: int = 0) -> PublishedM3L:
    model = PublishedM3L(make_weights(seed), lr=LR, num_gpus=num_gpus)
    model.init_memories(data)
    return model


def test_parameter_names_and_buffers():
    shapes = parameter_shapes()
    assert list(shapes)[:3] == ["conv1.weight", "bn1.weight", "bn1.bias"]
    assert list(shapes)[-2:] == ["feat_bn.weight", "feat_bn.bias"]
    assert "layer1.0.downsample.0.weight" not in shapes
    for stage in ("layer2", "layer3", "layer4"):
        assert f"{stage}.0.downsample.1.bias" in shapes
    model = PublishedM3L(make_weights(), lr=LR)
    for prefix in [*bn2d_prefixes(), "feat_bn"]:
        assert torch.equal(
            model.buffers[f"{prefix}.running_mean"],
            torch.zeros_like(model.buffers[f"{prefix}.running_mean"]),
        )
        assert torch.equal(
            model.buffers[f"{prefix}.running_var"],
            torch.ones_like(model.buffers[f"{prefix}.running_var"]),
        )
        assert int(model.buffers[f"{prefix}.num_batches_tracked"]) == 0
    assert len(model.optimizer.param_groups) == len(shapes)


def test_triplet_loss_matches_brute_force():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 20, generator=g, dtype=F64)
    y = torch.arange(4).repeat_interleave(3)
    d = torch.cdist(x, x)
    same = y[:, None] == y[None, :]
    ap = torch.where(same, d, torch.full_like(d, -math.inf)).amax(1)
    an = torch.where(~same, d, torch.full_like(d, math.inf)).amin(1)
    expected = F.relu(ap - an + 0.3).mean()
    torch.testing.assert_close(triplet_loss(x, y, 0.3), expected, rtol=1e-10, atol=0)


def test_inner_step_closed_form_and_cut(data):
    model = make_model(data)
    g = torch.Generator().manual_seed(2)
    # gradients over several orders of magnitude, so that the 1e-5 inside the sqrt matters
    grads = {
        n: torch.randn(p.shape, generator=g, dtype=F64)
        * 10.0 ** torch.randint(-5, 1, p.shape, generator=g).to(F64)
        for n, p in model.params.items()
    }
    new = model.inner_update(grads, LR)
    for name, p in model.params.items():
        x = grads[name] + 5e-4 * p.detach()
        closed = p.detach() - LR * x / (torch.sqrt(x**2 + 1e-5) + 1e-8)
        torch.testing.assert_close(new[name].detach(), closed, rtol=1e-12, atol=1e-16)
    # The copies are fresh leaves (MetaModules.py:116-119): no path from theta' to theta.
    reached = torch.autograd.grad(
        sum(v.sum() for v in new.values()), list(model.params.values()), allow_unused=True
    )
    assert all(r is None for r in reached)


def test_meta_test_gradient_reaches_theta_only_through_the_meta_train_gradient(data):
    model = make_model(data)
    params = list(model.params.values())
    names = list(model.params)
    images, pids = data[1]
    draws = make_draws(images, 1, seed=3)

    # Meta-train gradient that does not depend on theta: no gradient reaches theta.
    model.reset_meta_statistics()
    loss_mtr = model.meta_train_loss(data, meta_test=1)
    constant = torch.autograd.grad(loss_mtr, params)
    new = model.inner_update(dict(zip(names, constant)), LR)
    loss_mte = model.meta_test_loss(new, images, pids, 1, draws)
    assert all(r is None for r in torch.autograd.grad(loss_mte, params, allow_unused=True))

    # v = dL_mte/dg with g as an independent leaf ...
    g_leaf = [c.detach().clone().requires_grad_(True) for c in constant]
    new = model.inner_update(dict(zip(names, g_leaf)), LR)
    loss_mte = model.meta_test_loss(new, images, pids, 1, draws)
    v = torch.autograd.grad(loss_mte, g_leaf)
    # ... and the full second-order gradient equals (dg/dtheta)^T v: no direct term.
    model.reset_meta_statistics()
    loss_mtr = model.meta_train_loss(data, meta_test=1)
    g_theta = torch.autograd.grad(loss_mtr, params, create_graph=True)
    new = model.inner_update(dict(zip(names, g_theta)), LR)
    loss_mte = model.meta_test_loss(new, images, pids, 1, draws)
    full = torch.autograd.grad(loss_mte, params, retain_graph=True)
    hvp = torch.autograd.grad(g_theta, params, grad_outputs=v)
    assert sum(float(f.abs().sum()) for f in full) > 0
    for f, h in zip(full, hvp):
        torch.testing.assert_close(f, h, rtol=1e-9, atol=1e-14)


def test_data_parallel_chunks(data):
    pids = data[0][1]
    one, three = make_model(data, 1), make_model(data, 3)
    for m in (one, three):
        m.reset_meta_statistics()
    # per-chunk BatchNorm: the meta-train loss differs on a batch of 12 (chunks 4/4/4)
    l1 = one.meta_train_loss(data, meta_test=2).item()
    l3 = three.meta_train_loss(data, meta_test=2).item()
    assert abs(l1 - l3) > 1e-6 * abs(l1)

    # memory loss: mean of chunk means == plain mean for equal chunks, not for 3/3/2
    g = torch.Generator().manual_seed(4)
    f = F.normalize(torch.randn(12, FEAT_DIM, generator=g, dtype=F64))
    plain = memory_loss(f, pids, three.memories[0], three.temp)
    torch.testing.assert_close(three.memory_forward(0, f, pids), plain, rtol=1e-12, atol=0)
    f8, y8 = f[:8], torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    chunked = three.memory_forward(0, f8, y8)
    expected = torch.stack(
        [
            memory_loss(f8[s], y8[s], three.memories[0], 0.05)
            for s in (slice(0, 3), slice(3, 6), slice(6, 8))
        ]
    ).mean()
    torch.testing.assert_close(chunked, expected, rtol=1e-12, atol=0)
    assert abs(float(chunked) - float(memory_loss(f8, y8, three.memories[0], 0.05))) > 1e-9


def test_data_parallel_buffers_from_replica_zero_and_gather_order(data):
    images, _ = data[0]
    three = make_model(data, 3)
    three.reset_meta_statistics()
    out, pooled = three.model_forward(three.params, images, training=True, save_index=1)
    # each replica separately, with its own copy of the initial buffers
    ref = make_model(data, 1)
    ref.reset_meta_statistics()
    chunks = images.chunk(3)
    per_chunk = []
    states = []
    for chunk in chunks:
        buffers = {k: v.clone() for k, v in ref.buffers.items()}
        per_chunk.append(forward_replica(ref.params, buffers, chunk, training=True, save_index=1))
        states.append(buffers)
    torch.testing.assert_close(out, torch.cat([o for o, _ in per_chunk]), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(pooled, torch.cat([p for _, p in per_chunk]), rtol=1e-12, atol=1e-15)
    # buffers after the forward are those of replica 0's chunk only
    for key, value in three.buffers.items():
        torch.testing.assert_close(value, states[0][key], rtol=1e-12, atol=1e-15)
    assert not torch.allclose(states[0]["bn1.running_mean"], states[1]["bn1.running_mean"])
    assert int(three.buffers["feat_bn.num_batches_tracked"]) == 1
    torch.testing.assert_close(
        three.buffers["feat_bn.meta_mean1"],
        per_chunk[0][1].detach().mean(0),
        rtol=1e-12,
        atol=1e-15,
    )

    # meta-test forward: lists gathered element-wise, replica c uses draws[c]
    draws = make_draws(images, 3, seed=5)
    mixes, _ = three.model_forward(three.params, images, training=True, mte="sample", draws=draws)
    for k in range(2):
        parts = []
        for c, chunk in enumerate(chunks):
            buffers = {key: v.clone() for key, v in three.buffers.items()}
            outs, _ = forward_replica(
                three.params, buffers, chunk, training=True, mte="sample", draw=draws[c]
            )
            parts.append(outs[k])
        torch.testing.assert_close(mixes[k], torch.cat(parts), rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError):
        three.model_forward(three.params, images, training=True, mte="sample", draws=draws[:2])


def test_mixture_with_lambda_zero_is_the_plain_neck(data):
    images, _ = data[2]
    model = make_model(data, 1)
    model.reset_meta_statistics()
    model.model_forward(model.params, images, training=True, save_index=1)
    model.model_forward(model.params, images, training=True, save_index=2)
    plain, _ = model.model_forward(model.params, images, training=True)
    mixes, _ = model.model_forward(
        model.params, images, training=True, mte="sample", draws=make_draws(images, 1, 6, lam=0.0)
    )
    for mix in mixes:
        torch.testing.assert_close(mix, plain, rtol=1e-12, atol=1e-15)


def test_meta_test_moves_bn2d_running_stats_only(data):
    model = make_model(data, 3)
    images, pids = data[0]
    model.reset_meta_statistics()
    loss_mtr = model.meta_train_loss(data, meta_test=0)
    names = list(model.params)
    grads = torch.autograd.grad(loss_mtr, list(model.params.values()), create_graph=True)
    new = model.inner_update(dict(zip(names, grads)), LR)
    before = {k: v.clone() for k, v in model.buffers.items()}
    model.meta_test_loss(new, images, pids, 0, make_draws(images, 3, seed=7))
    for prefix in bn2d_prefixes():
        assert not torch.equal(
            model.buffers[f"{prefix}.running_mean"], before[f"{prefix}.running_mean"]
        )
        assert not torch.equal(
            model.buffers[f"{prefix}.running_var"], before[f"{prefix}.running_var"]
        )
        assert int(model.buffers[f"{prefix}.num_batches_tracked"]) == 0
    for key in (
        "running_mean",
        "running_var",
        "meta_mean1",
        "meta_var1",
        "meta_mean2",
        "meta_var2",
    ):
        assert torch.equal(model.buffers[f"feat_bn.{key}"], before[f"feat_bn.{key}"])
    assert int(model.buffers["feat_bn.num_batches_tracked"]) == 3


def test_init_memories(data):
    model = make_model(data, 1)
    images, pids = data[1]
    features = model.extract_features(images)
    # eval mode is per sample: one image at a time gives the same features
    single = torch.cat([model.extract_features(images[i : i + 1]) for i in range(len(images))])
    torch.testing.assert_close(features, single, rtol=1e-10, atol=1e-13)
    expected = F.normalize(torch.stack([features[pids == c].mean(0) for c in range(4)]), dim=1)
    torch.testing.assert_close(model.memories[1], expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("num_gpus", [1, 3])
def test_full_iteration(data, num_gpus):
    model = make_model(data, num_gpus)
    start = {k: v.detach().clone() for k, v in model.params.items()}
    memories = [m.clone() for m in model.memories]
    meta_tests = (1, 2) if num_gpus == 3 else (1,)  # two iterations: meta stats reset
    for it, meta_test in enumerate(meta_tests):
        images, _ = data[meta_test]
        losses = model.train_iteration(data, meta_test, make_draws(images, num_gpus, seed=8 + it))
        assert set(losses) == {"loss_meta_train", "loss_meta_test"}
        assert all(math.isfinite(v) and v > 0 for v in losses.values())
    # 2 meta-train + 1 meta-test + 3 memory-update forwards per iteration
    assert int(model.buffers["feat_bn.num_batches_tracked"]) == 6 * len(meta_tests)
    assert all(int(model.buffers[f"{p}.num_batches_tracked"]) == 0 for p in bn2d_prefixes())
    assert all(not torch.equal(model.params[k].detach(), start[k]) for k in start)
    for new, old in zip(model.memories, memories):
        assert not torch.equal(new, old)
        torch.testing.assert_close(new.norm(dim=1), torch.ones(4, dtype=F64), rtol=1e-12, atol=0)
