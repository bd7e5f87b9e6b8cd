"""adam_step / sgd_step against torch.optim, and their gradients."""

from __future__ import annotations

import pytest
import torch

from metareid.functional import adam_step, sgd_step


def _torch_step(opt_cls, params, grads, state=None, **kw):
    ps = [p.detach().clone().requires_grad_() for p in params]
    opt = opt_cls(ps, **kw)
    if state is not None:
        opt.load_state_dict(state)
    for p, g in zip(ps, grads):
        p.grad = g.clone()
    opt.step()
    return [p.detach() for p in ps], opt


@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_adam_step_equals_torch_adam_fresh_and_continued(wd):
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]
    grads1 = [torch.randn_like(p) for p in params]
    grads2 = [torch.randn_like(p) for p in params]
    kw = dict(lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=wd)
    expected, opt = _torch_step(torch.optim.Adam, params, grads1, **kw)
    got = adam_step(params, grads1, **kw)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
    # continue from the torch state
    # copies first: load_state_dict may share (and the next step update) these tensors
    st = [{k: v.clone() for k, v in opt.state[p].items()} for p in opt.param_groups[0]["params"]]
    expected2, _ = _torch_step(torch.optim.Adam, expected, grads2, state=opt.state_dict(), **kw)
    got2 = adam_step(
        expected,
        grads2,
        exp_avgs=[s["exp_avg"] for s in st],
        exp_avg_sqs=[s["exp_avg_sq"] for s in st],
        steps=[int(s["step"]) for s in st],
        **kw,
    )
    for a, b in zip(got2, expected2):
        torch.testing.assert_close(a, b)


def test_sgd_step_equals_torch_sgd():
    params = [torch.randn(4, 2), torch.randn(3)]
    grads = [torch.randn_like(p) for p in params]
    expected, _ = _torch_step(torch.optim.SGD, params, grads, lr=0.1, weight_decay=0.02)
    got = sgd_step(params, grads, lr=0.1, weight_decay=0.02)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


def test_none_gradients_leave_parameters_untouched():
    p = torch.randn(3)
    assert adam_step([p], [None], lr=0.1)[0] is p
    assert sgd_step([p], [None], lr=0.1)[0] is p


def test_adam_step_gradcheck_through_the_gradient():
    # d p'/d g in float64 against finite differences (second-order path of the inner step)
    p = torch.randn(6, dtype=torch.float64)
    g0 = torch.randn(6, dtype=torch.float64).requires_grad_()
    torch.autograd.gradcheck(lambda g: adam_step([p], [g], lr=0.1, eps=1e-2)[0], (g0,))
    p0 = torch.randn(6, dtype=torch.float64).requires_grad_()
    torch.autograd.gradcheck(
        lambda q: adam_step([q], [q.sin()], lr=0.1, eps=1e-2, weight_decay=0.1)[0], (p0,)
    )


def test_zero_gradient_coordinate_gives_zero_not_nan():
    q = torch.randn(4, requires_grad=True)
    g = q * torch.tensor([1.0, 0.0, 1.0, 0.0])  # exactly zero in two coordinates
    out = adam_step([q.detach()], [g], lr=0.1)[0]
    (grad,) = torch.autograd.grad(out.sum(), q)
    assert torch.isfinite(grad).all()
    assert grad[1] == 0 and grad[3] == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(lr=[0.1, 0.2]), "lr must be a number or have one entry per parameter"),
        (dict(lr=0.1, betas=(1.0, 0.9)), r"betas must lie in \[0, 1\)"),
        (dict(lr=0.1, exp_avgs=[]), "exp_avgs must have one entry per parameter"),
    ],
)
def test_adam_step_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        adam_step([torch.zeros(2)], [torch.ones(2)], **kwargs)
