"""The published inner step (eps_root), auxiliary loss outputs, phases and the grad scaler.

The published-step reference is a literal transcription of the formulas in
``official-code-notes.md`` (``update_params(solver='adam')``): zero moments, beta1 0.9,
beta2 0.999, ``m = 0.1 g'``, ``v = 0.001 g'^2 + 1e-8``,
``theta' = theta - (lr / 0.1) * m / (sqrt(v) / sqrt(0.001) + 1e-8)``.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import Tensor, nn

from metareid import MetaBN, MetaLearner, Phase
from metareid.functional import adam_step

BACKENDS = ["higher", "func"]


def published_update_params(theta: Tensor, grad: Tensor, lr: float, wd: float = 5e-4) -> Tensor:
    g = grad + wd * theta
    m = 0.1 * g
    v = 0.001 * g * g + 1e-8
    return theta - (lr / 0.1) * m / (torch.sqrt(v) / math.sqrt(0.001) + 1e-8)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 6, bias=False)
        self.bn = MetaBN(6, generator=torch.Generator().manual_seed(3))
        self.fc2 = nn.Linear(6, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.tanh(self.bn(self.fc1(x))))


def make(seed: int = 0) -> tuple[nn.Module, list[tuple[Tensor, Tensor]]]:
    torch.manual_seed(seed)
    model = Net().double()
    g = torch.Generator().manual_seed(seed)
    batches = [
        (
            torch.randn(8, 5, generator=g, dtype=torch.float64) + d,
            torch.randint(0, 4, (8,), generator=g),
        )
        for d in range(3)
    ]
    return model, batches


def ce(model: nn.Module, batch, domain: int, phase) -> Tensor:
    x, y = batch
    out = model(x)
    return nn.functional.cross_entropy(out, y.repeat(out.shape[0] // y.shape[0]))


def published_theta_prime(model: nn.Module, batches, lr: float) -> list[Tensor]:
    """Theta' of update_params on meta-train domains 0 and 2, computed on a copy."""
    ref = copy.deepcopy(model)
    loss = (ce(ref, batches[0], 0, "meta_train") + ce(ref, batches[2], 2, "meta_train")) / 2
    grads = torch.autograd.grad(loss, list(ref.parameters()), allow_unused=True)
    return [
        p.detach() if g is None else published_update_params(p.detach(), g, lr)
        for p, g in zip(ref.parameters(), grads)
    ]


def theta_prime_of(learner: MetaLearner, batches) -> list[Tensor]:
    """The weights the meta-test call sees (meta-test domain 1), in parameter order."""
    seen: list[Tensor] = []

    def spy(m, batch, domain, phase):
        if phase == Phase.META_TEST:
            seen.extend(p.detach().clone() for p in m.parameters())
        return ce(m, batch, domain, phase)

    learner.meta_backward(batches, spy, meta_test=1)
    return seen


@pytest.mark.parametrize("backend", BACKENDS)
def test_default_inner_step_is_the_published_update_params(backend):
    model, batches = make()
    lr = 3.5e-4
    expected = published_theta_prime(model, batches, lr)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=5e-4)
    learner = MetaLearner(model, opt, backend=backend)  # default inner_eps_root=1e-5
    assert learner.inner_eps_root == 1e-5
    got = theta_prime_of(learner, batches)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-13)


def test_exact_adam_inner_step_differs_from_the_published_one():
    # Guard: the parity above would not pass with torch.optim.Adam's step (eps_root=0).
    theta = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    grad = torch.tensor([1e-4, -2e-3, 5e-2], dtype=torch.float64)
    exact = adam_step([theta], [grad], lr=1e-3, weight_decay=5e-4)[0]
    published = published_update_params(theta, grad, 1e-3)
    assert (exact - published).abs().max() > 1e-4
    ours = adam_step([theta], [grad], lr=1e-3, weight_decay=5e-4, eps_root=1e-5)[0]
    torch.testing.assert_close(ours, published, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_higher_eps_placement_3162e7_is_not_the_published_step(backend):
    # The docs once called inner_eps=3.162e-7 (eps / sqrt(1 - beta2), higher's placement
    # rescaled) "exactly the published code's step"; it is not.
    model, batches = make()
    lr = 3.5e-4
    expected = published_theta_prime(model, batches, lr)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=5e-4)
    learner = MetaLearner(model, opt, inner_eps=3.162e-7, inner_eps_root=0.0, backend=backend)
    got = theta_prime_of(learner, batches)
    worst = max(float((g - e).abs().max()) for g, e in zip(got, expected, strict=True))
    assert worst > 1e-6  # far from the published step's Theta'


def test_published_step_derivative_is_bounded_and_exact_adams_is_not():
    # d theta' / d g at g = 0: lr / (sqrt(1e-5) + 1e-8) for eps_root 1e-5, lr / eps for Adam.
    lr = 1e-3
    for root, bound in ((1e-5, lr / (math.sqrt(1e-5) + 1e-8)), (0.0, lr / 1e-8)):
        g = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        out = adam_step([torch.zeros(1, dtype=torch.float64)], [g], lr=lr, eps_root=root)[0]
        (d,) = torch.autograd.grad(out.sum(), g)
        if root:
            torch.testing.assert_close(-d, torch.tensor([bound], dtype=torch.float64))
        else:  # the safe square root gives 0 at exactly 0; just off zero it is huge
            g2 = torch.full((1,), 1e-9, dtype=torch.float64, requires_grad=True)
            out2 = adam_step([torch.zeros(1, dtype=torch.float64)], [g2], lr=lr)[0]
            (d2,) = torch.autograd.grad(out2.sum(), g2)
            assert -d2.item() > 1e3 * (lr / math.sqrt(1e-5))


def test_adam_step_eps_root_gradcheck():
    p = torch.randn(4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(4, dtype=torch.float64, requires_grad=True)
    m0 = torch.randn(4, dtype=torch.float64)
    v0 = torch.rand(4, dtype=torch.float64)

    def f(p, g):
        return adam_step(
            [p],
            [g],
            lr=0.1,
            eps_root=1e-5,
            weight_decay=0.01,
            exp_avgs=[m0],
            exp_avg_sqs=[v0],
            steps=[3],
        )[0]

    assert torch.autograd.gradcheck(f, (p, g))


@pytest.mark.parametrize("bad", [-1e-5, float("inf"), float("nan")])
def test_adam_step_rejects_bad_eps_root(bad):
    with pytest.raises(ValueError, match="eps_root must be a finite number >= 0"):
        adam_step([torch.ones(2)], [torch.ones(2)], lr=0.1, eps_root=bad)


@pytest.mark.parametrize(
    ("value", "exc"),
    [(-1.0, ValueError), (float("inf"), ValueError), (None, TypeError), ("1", TypeError)],
)
def test_learner_rejects_bad_inner_eps_root(value, exc):
    model, _ = make()
    with pytest.raises(exc, match="inner_eps_root"):
        MetaLearner(model, torch.optim.Adam(model.parameters()), inner_eps_root=value)


def test_higher_backend_needs_beta2_for_eps_root_and_changes_nothing():
    model, batches = make()
    opt = torch.optim.Adam(model.parameters(), betas=(0.9, 0.0))
    before = copy.deepcopy(model.state_dict())
    learner = MetaLearner(model, opt, backend="higher")
    with pytest.raises(ValueError, match="beta2 > 0"):
        learner.step(batches, ce, meta_test=0)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert all(p.grad is None for p in model.parameters())
    # func handles it
    MetaLearner(model, opt, backend="func").step(batches, ce, meta_test=0)


# ---------------------------------------------------------------------------- aux and phase
@pytest.mark.parametrize("backend", BACKENDS)
def test_aux_outputs_come_back_detached_with_their_phase(backend):
    model, batches = make()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    phases: list[tuple[int, Phase]] = []

    def with_aux(m, batch, domain, phase):
        assert isinstance(phase, Phase)
        phases.append((domain, phase))
        x, y = batch
        out = m(x)
        loss = nn.functional.cross_entropy(out, y.repeat(out.shape[0] // y.shape[0]))
        return loss, {"out": out, "domain": domain, "rows": [out[:1]]}

    res = MetaLearner(model, opt, backend=backend).meta_backward(batches, with_aux, meta_test=0)
    assert phases == [(1, Phase.META_TRAIN), (2, Phase.META_TRAIN), (0, Phase.META_TEST)]
    assert [a["domain"] for a in res.meta_train_aux] == [1, 2]
    assert res.meta_test_aux["domain"] == 0
    for aux in (*res.meta_train_aux, res.meta_test_aux):
        assert not aux["out"].requires_grad and aux["out"].grad_fn is None
        assert not aux["rows"][0].requires_grad
    assert res.meta_train_aux[0]["out"].shape == (8, 4)
    # MetaBN with two meta-train domains: the meta-test call saw 2 mixtures of 8 rows.
    assert res.meta_test_aux["out"].shape == (16, 4)
    by_domain = res.aux_by_domain()
    assert by_domain[0][0] is Phase.META_TEST and by_domain[2][0] is Phase.META_TRAIN


@pytest.mark.parametrize("backend", BACKENDS)
def test_aux_does_not_change_the_gradient(backend):
    model, batches = make()
    twin = copy.deepcopy(model)
    for m, fn in ((model, ce), (twin, lambda *a: (ce(*a), None))):
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        m.bn.generator = torch.Generator().manual_seed(5)
        MetaLearner(m, opt, backend=backend).meta_backward(batches, fn, meta_test=2)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)


# ---------------------------------------------------------------------------- grad scaler
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("first_order", [False, True])
def test_grad_scaler_gives_the_unscaled_update(backend, first_order):
    model, batches = make()
    twin = copy.deepcopy(model)
    results = []
    for m, scaler in ((model, None), (twin, torch.amp.GradScaler("cpu", init_scale=2.0**12))):
        opt = torch.optim.Adam(m.parameters(), lr=1e-2, weight_decay=5e-4)
        m.bn.generator = torch.Generator().manual_seed(7)
        learner = MetaLearner(
            m,
            opt,
            backend=backend,
            meta_test_grad="first_order" if first_order else "full",
            grad_scaler=scaler,
        )
        for t in (0, 1):
            results.append(learner.step(batches, ce, meta_test=t))
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert results[0].meta_test_loss == pytest.approx(results[2].meta_test_loss, rel=1e-9)


def test_grad_scaler_skips_the_step_on_overflow_and_lowers_the_scale():
    model, batches = make()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    before = [p.detach().clone() for p in model.parameters()]

    def overflow(m, batch, domain, phase):
        loss = ce(m, batch, domain, phase)
        return loss * float("inf") if phase == Phase.META_TEST else loss

    MetaLearner(model, opt, grad_scaler=scaler).step(batches, overflow, meta_test=0)
    for p, b in zip(model.parameters(), before, strict=True):
        torch.testing.assert_close(p.detach(), b, rtol=0, atol=0)
    assert scaler.get_scale() < 2.0**12


def test_grad_scaler_type_is_checked():
    model, _ = make()
    with pytest.raises(TypeError, match=r"grad_scaler must be a torch\.amp\.GradScaler"):
        MetaLearner(model, torch.optim.Adam(model.parameters()), grad_scaler=object())
