"""Self-checks of the paper-transcribed M3L reference (``paper_m3l.py``), without metareid."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from tests.parity.paper_m3l import (
    PaperM3L,
    adam_first_step,
    backbone,
    bn_prefixes,
    meta_bn,
    param_names,
)

LR = 3.5e-4
B = 8  # 4 identities x 2 images
N_IDS = 6  # identities per domain (memory slots)


def make_weights(seed: int = 0) -> dict[str, Tensor]:
    """Random float64 weights under the reference's names (He-normal convs, BN near 1/0)."""
    gen = torch.Generator().manual_seed(seed)
    shapes: dict[str, tuple[int, ...]] = {
        "conv1.weight": (64, 3, 7, 7),
        "bn1": (64,),
        "neck": (512,),
    }
    for layer, (cin, cout) in {1: (64, 64), 2: (64, 128), 3: (128, 256), 4: (256, 512)}.items():
        p = f"layer{layer}.0"
        shapes.update({f"{p}.conv1.weight": (cout, cin, 3, 3), f"{p}.bn1": (cout,)})
        shapes.update({f"{p}.conv2.weight": (cout, cout, 3, 3), f"{p}.bn2": (cout,)})
        if layer > 1:
            shapes.update(
                {f"{p}.downsample.0.weight": (cout, cin, 1, 1), f"{p}.downsample.1": (cout,)}
            )
    weights: dict[str, Tensor] = {}
    for name in [*param_names(), "neck.bias"]:
        if name in shapes:  # conv
            shape = shapes[name]
            std = (2.0 / (shape[0] * shape[2] * shape[3])) ** 0.5
            weights[name] = std * torch.randn(shape, generator=gen, dtype=torch.float64)
        else:  # BN affine
            prefix, kind = name.rsplit(".", 1)
            base = 1.0 if kind == "weight" else 0.0
            noise = torch.randn(shapes[prefix], generator=gen, dtype=torch.float64)
            weights[name] = base + 0.1 * noise
    return weights


def make_buffers(weights: dict[str, Tensor], seed: int = 1) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    buffers: dict[str, Tensor] = {}
    for p in bn_prefixes():
        n = weights[f"{p}.weight"].numel()
        buffers[f"{p}.running_mean"] = 0.1 * torch.randn(n, generator=gen, dtype=torch.float64)
        buffers[f"{p}.running_var"] = 1.0 + 0.1 * torch.rand(n, generator=gen, dtype=torch.float64)
    return buffers


def make_data(n_domains: int, seed: int = 2):
    gen = torch.Generator().manual_seed(seed)
    train_sets = []
    batches = []
    for _ in range(n_domains):
        pids_all = torch.arange(N_IDS).repeat_interleave(2)
        train_sets.append(
            (torch.randn(2 * N_IDS, 3, 32, 16, generator=gen, dtype=torch.float64), pids_all)
        )
        ids = torch.randperm(N_IDS, generator=gen)[:4]
        batches.append(
            (
                torch.randn(B, 3, 32, 16, generator=gen, dtype=torch.float64),
                ids.repeat_interleave(2),
            )
        )
    lambdas = torch.rand(n_domains - 1, generator=gen, dtype=torch.float64)
    noise = torch.randn(n_domains - 1, B, 512, generator=gen, dtype=torch.float64)
    return train_sets, batches, lambdas, noise


def make_model(n_domains: int = 3, **kwargs):
    weights = make_weights()
    buffers = make_buffers(weights)
    train_sets, batches, lambdas, noise = make_data(n_domains)
    model = PaperM3L(weights, buffers, lr=LR, **kwargs)
    model.init_memories(train_sets)
    return model, train_sets, batches, lambdas, noise


def rel_diff(a: list[Tensor], b: list[Tensor]) -> float:
    num = sum(float((x - y).pow(2).sum()) for x, y in zip(a, b)) ** 0.5
    den = sum(float(y.pow(2).sum()) for y in b) ** 0.5
    return num / den


def test_inner_step_is_torch_adam_first_step():
    model, _, batches, lambdas, noise = make_model()
    loss_mtr, _, _, fast = model.meta_objective(batches, 0, lambdas, noise)
    theta = list(model.params.values())
    grads = torch.autograd.grad(loss_mtr, theta, retain_graph=True)
    copies = [t.detach().clone().requires_grad_(True) for t in theta]
    opt = torch.optim.Adam(copies, lr=LR, weight_decay=5e-4)
    for c, g in zip(copies, grads):
        c.grad = g.detach().clone()
    opt.step()
    for name, c in zip(model.params, copies):
        torch.testing.assert_close(fast[name].detach(), c.detach(), rtol=1e-12, atol=1e-12)
    # standalone, with exact zeros in the gradient (finite derivative there)
    t = torch.randn(50, dtype=torch.float64, requires_grad=True)
    g = torch.randn(50, dtype=torch.float64)
    g[:5] = -5e-4 * t.detach()[:5]
    out = adam_first_step(t, g, LR, 5e-4)
    (d,) = torch.autograd.grad(out.sum(), t)
    assert torch.isfinite(d).all()


def test_meta_bn_with_unit_lambda_is_plain_bn():
    gen = torch.Generator().manual_seed(3)
    f_t = torch.randn(B, 512, generator=gen, dtype=torch.float64) * 2 + 1
    mu = torch.randn(512, generator=gen, dtype=torch.float64)
    var = torch.rand(512, generator=gen, dtype=torch.float64) + 0.5
    noise = torch.randn(B, 512, generator=gen, dtype=torch.float64)
    gamma = 1 + 0.1 * torch.randn(512, generator=gen, dtype=torch.float64)
    beta = 0.1 * torch.randn(512, generator=gen, dtype=torch.float64)
    one = torch.tensor(1.0, dtype=torch.float64)
    out = meta_bn(f_t, mu, var, one, noise, gamma, beta)
    ref = F.batch_norm(f_t, None, None, gamma, beta, training=True, eps=1e-5)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    # lambda = 0: plain BN of Z = mu + sqrt(var) * noise (Eq. 5, sigma read as the std)
    out0 = meta_bn(f_t, mu, var, 0 * one, noise, gamma, beta)
    ref0 = F.batch_norm(mu + var.sqrt() * noise, None, None, gamma, beta, training=True, eps=1e-5)
    torch.testing.assert_close(out0, ref0, rtol=1e-12, atol=1e-12)


def test_meta_gradient_is_second_order():
    """Alg. 1 line 15 differentiates L_mte(Theta') through Theta' = Theta - alpha * step(g(Theta)):
    the full meta-gradient differs from both the one with Theta and g detached in the inner step
    (L_mte then contributes nothing) and the first-order one (only g detached)."""
    model, _, batches, lambdas, noise = make_model()

    def meta_grad(mode: str) -> tuple[float, float, list[Tensor]]:
        m = copy.deepcopy(model)
        theta = list(m.params.values())
        l_mtr, l_mte, _, _ = m.meta_objective(batches, 1, lambdas, noise, _inner_detach=mode)
        grads = torch.autograd.grad(l_mtr + l_mte, theta, allow_unused=True)
        grads = [torch.zeros_like(t) if g is None else g for t, g in zip(theta, grads)]
        return l_mtr.item(), l_mte.item(), grads

    full = meta_grad("none")
    detached = meta_grad("all")
    first_order = meta_grad("grad")
    assert full[:2] == detached[:2] == first_order[:2]  # same forward values
    assert rel_diff(full[2], detached[2]) > 1e-2
    assert rel_diff(full[2], first_order[2]) > 1e-2
    assert rel_diff(first_order[2], detached[2]) > 1e-6


def test_meta_gradient_matches_finite_differences():
    """Directional derivative of L_mtr(Theta) + L_mte(Theta'(Theta)) (Eq. 1).

    The saved MetaBN statistics are constants (reading R6) while a finite difference would move
    them, so lambda = 1 takes them out of the objective. The inner step's g / (|g| + eps) is
    very curved where g is small, hence a small step; the first-order (g detached) derivative
    of this objective differs from the full one by a factor of several, far outside tolerance.
    """
    model, _, batches, lambdas, noise = make_model()
    lambdas = torch.ones_like(lambdas)
    names = list(model.params)
    l_mtr, l_mte, _, _ = model.meta_objective(batches, 2, lambdas, noise)
    grads = torch.autograd.grad(l_mtr + l_mte, list(model.params.values()))
    gen = torch.Generator().manual_seed(5)
    direction = {
        n: torch.randn(model.params[n].shape, generator=gen, dtype=torch.float64) for n in names
    }
    norm = sum(float(v.pow(2).sum()) for v in direction.values()) ** 0.5
    analytic = sum(float((g * direction[n]).sum()) for n, g in zip(names, grads)) / norm

    def objective(h: float) -> float:
        probe = copy.deepcopy(model)
        with torch.no_grad():
            for n in names:
                probe.params[n].add_(h * direction[n] / norm)
        a, b, _, _ = probe.meta_objective(batches, 2, lambdas, noise)
        return float((a + b).detach())

    h = 1e-8
    numeric = (objective(h) - objective(-h)) / (2 * h)
    assert abs(numeric - analytic) <= 1e-3 * abs(analytic)


def test_meta_test_leaves_running_statistics():
    model, _, batches, lambdas, noise = make_model()
    twin = copy.deepcopy(model)
    before = {k: v.clone() for k, v in model.buffers.items()}
    model.train_iteration(batches, 1, lambdas, noise)
    for d in (0, 2):  # meta-train forwards only, at Theta, in domain order
        twin.embed(batches[d][0], train=True)
    for k in model.buffers:
        assert torch.equal(model.buffers[k], twin.buffers[k]), k
    assert not torch.equal(model.buffers["neck.running_mean"], before["neck.running_mean"])
    assert not torch.equal(
        model.buffers["layer4.0.bn2.running_var"], before["layer4.0.bn2.running_var"]
    )


def test_memory_init_and_update():
    model, train_sets, batches, lambdas, noise = make_model()
    for mem, (images, pids) in zip(model.memories, train_sets):
        _, feats = copy.deepcopy(model).embed(images, train=False)
        ref = torch.stack([feats[pids == k].mean(0) for k in range(N_IDS)])
        torch.testing.assert_close(mem, F.normalize(ref, dim=1), rtol=1e-12, atol=1e-12)
    twin = copy.deepcopy(model)
    old = [m.clone() for m in model.memories]
    model.train_iteration(batches, 0, lambdas, noise)
    assert torch.equal(model.memories[0], old[0])  # meta-test memory untouched
    for d in (1, 2):
        with torch.no_grad():
            _, feats = twin.embed(batches[d][0], train=True)
        pids = batches[d][1]
        for k in range(N_IDS):
            if (pids == k).any():
                slot = 0.2 * old[d][k] + 0.8 * feats[pids == k].mean(0)
                torch.testing.assert_close(
                    model.memories[d][k], slot / slot.norm(), rtol=1e-12, atol=1e-12
                )
            else:
                assert torch.equal(model.memories[d][k], old[d][k])


@pytest.mark.parametrize(("n_domains", "last_stride"), [(2, 1), (4, 2)])
def test_iteration_runs_for_any_number_of_domains(n_domains: int, last_stride: int):
    model, _, batches, lambdas, noise = make_model(n_domains, last_stride=last_stride)
    before = {n: p.detach().clone() for n, p in model.params.items()}
    out = model.train_iteration(batches, n_domains - 1, lambdas, noise)
    assert set(out) == {"loss_meta_train", "loss_meta_test"}
    assert all(torch.isfinite(torch.tensor(v)) for v in out.values())
    for n, p in model.params.items():
        assert not torch.equal(p.detach(), before[n]), n
    pooled = backbone(
        batches[0][0],
        model.params,
        {k: v.clone() for k, v in model.buffers.items()},
        last_stride=last_stride,
        train=False,
    )
    assert pooled.shape == (B, 512)
