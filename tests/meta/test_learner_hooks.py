"""MetaLearner's grad_transform and outer_grad_transform hooks (one process).

The reference is Algorithm 1 written out with torch.autograd on a model without
BatchNorm and an SGD inner step: ``t = T(grad L_mtr(theta))``,
``theta' = theta - alpha * t``, ``.grad = t + d/dtheta L_mte(theta'(theta))``.
The distributed use (all-reduce across 2 gloo ranks) is tested in
tests/distributed/test_meta_hooks.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

from metareid import MetaLearner

BACKENDS = ["higher", "func"]
ALPHA = 0.1


def make(seed: int = 0) -> tuple[nn.Module, list[tuple[Tensor, Tensor]]]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4)).double()
    g = torch.Generator().manual_seed(seed)
    batches = [
        (
            torch.randn(8, 5, generator=g, dtype=torch.float64),
            torch.randint(0, 4, (8,), generator=g),
        )
        for _ in range(2)
    ]
    return model, batches


def ce(model: nn.Module, batch, domain: int, phase) -> Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def learner(model: nn.Module, backend: str, **kwargs) -> MetaLearner:
    opt = torch.optim.SGD(model.parameters(), lr=ALPHA)
    return MetaLearner(model, opt, inner_optimizer="sgd", backend=backend, **kwargs)


def reference_grads(model: nn.Module, batches, transform, first_order: bool) -> list[Tensor]:
    names, params = zip(*model.named_parameters())
    train, test = batches

    def loss(values, batch):
        x, y = batch
        return nn.functional.cross_entropy(functional_call(model, dict(zip(names, values)), x), y)

    grads = torch.autograd.grad(loss(params, train), params, create_graph=not first_order)
    t = transform(list(grads))
    if first_order:
        t = [g.detach() for g in t]
        fast = [(p - ALPHA * g).detach().requires_grad_() for p, g in zip(params, t)]
        outer = torch.autograd.grad(loss(fast, test), fast)
    else:
        fast = [p - ALPHA * g for p, g in zip(params, t)]
        outer = torch.autograd.grad(loss(fast, test), params)
    return [a.detach() + b for a, b in zip(t, outer)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("first_order", [False, True])
def test_grad_transform_is_used_by_the_inner_step_and_added_to_grad(backend, first_order):
    model, batches = make()

    def transform(grads):  # non-linear, so that a wrong place of the hook shows
        return [2.0 * g + g.pow(2) for g in grads]

    expected = reference_grads(copy.deepcopy(model), batches, transform, first_order)
    learner(
        model,
        backend,
        grad_transform=transform,
        meta_test_grad="first_order" if first_order else "full",
    ).meta_backward(batches, ce, meta_test=1)
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("first_order", [False, True])
def test_identity_hooks_change_nothing_bitwise(backend, first_order):
    model, batches = make()
    twin = copy.deepcopy(model)
    calls: list[int] = []
    learner(model, backend, meta_test_grad="first_order" if first_order else "full").meta_backward(
        batches, ce, meta_test=1
    )
    learner(
        twin,
        backend,
        meta_test_grad="first_order" if first_order else "full",
        grad_transform=lambda grads: list(grads),
        outer_grad_transform=lambda params: calls.append(len(params)),
    ).meta_backward(batches, ce, meta_test=1)
    assert calls == [len(list(model.parameters()))]
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_outer_grad_transform_runs_last_and_may_change_grad(backend):
    model, batches = make()

    def halve(params):
        for p in params:
            p.grad.mul_(0.5)

    twin = copy.deepcopy(model)
    learner(model, backend).meta_backward(batches, ce, meta_test=1)
    learner(twin, backend, outer_grad_transform=halve).meta_backward(batches, ce, meta_test=1)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(b.grad, 0.5 * a.grad, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_transform_sees_unscaled_gradients_under_a_grad_scaler(backend):
    model, batches = make()
    twin = copy.deepcopy(model)
    seen: dict[str, list[Tensor]] = {}

    def spy(name):
        def transform(grads):
            seen[name] = [g.detach().clone() for g in grads]
            return [g * 0.5 for g in grads]

        return transform

    learner(model, backend, grad_transform=spy("plain")).meta_backward(batches, ce, meta_test=1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    learner(twin, backend, grad_transform=spy("scaled"), grad_scaler=scaler).meta_backward(
        batches, ce, meta_test=1
    )
    for a, b in zip(seen["plain"], seen["scaled"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):  # .grad is scaled
        torch.testing.assert_close(b.grad, 2.0**10 * a.grad, rtol=1e-10, atol=1e-12)


def test_hooks_must_be_callable():
    model, _ = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="grad_transform must be callable or None, got int"):
        MetaLearner(model, opt, grad_transform=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="outer_grad_transform must be callable or None"):
        MetaLearner(model, opt, outer_grad_transform="x")  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("transform", "match"),
    [
        (lambda grads: grads[:-1], "must return a sequence of 4 gradients"),
        (lambda grads: [None, *grads[1:]], r"returned None for gradient 0; expected a tensor"),
        (lambda grads: [g.flatten() for g in grads], "for gradient 0; expected a tensor of shape"),
    ],
)
def test_a_bad_grad_transform_raises_and_changes_nothing(backend, transform, match):
    model, batches = make()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=match):
        learner(model, backend, grad_transform=transform).step(batches, ce, meta_test=1)
    for p, b in zip(model.parameters(), before, strict=True):
        assert p.grad is None and torch.equal(p, b)
