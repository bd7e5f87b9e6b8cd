"""An independent reference of the M3L meta-gradient, written without the library.

The model runs functionally with ``torch.func.functional_call`` (buffers cloned: the
meta-test moves no running statistics), the inner step is the textbook Adam formula
(bias-corrected moments, eps_root inside and eps outside the square root) or SGD, and
``L_mtr(Theta) + L_mte(Theta'(Theta))`` is differentiated by autograd as one function, for
the three meta-gradients of ``MetaLearner(meta_test_grad=...)``. Batches are
``(inputs, labels)``; ``criterion(outputs, labels)`` is the loss of one batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call


def reference_objective(
    model: nn.Module,
    theta: list[Tensor],
    batches,
    t: int,
    *,
    inner: str,
    lr: float,
    wd: float,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    betas=(0.9, 0.999),
    state: list[dict] | None = None,
    mode: str = "full",
    criterion: Callable[[Tensor, Tensor], Tensor],
) -> tuple[Tensor, list[Tensor]]:
    """Return (J, dJ/dtheta) of J = L_mtr(theta) + L_mte(theta'(theta)), by autograd.

    ``mode``: ``"full"`` (theta' a function of theta), ``"first_order"`` (the update a
    constant), ``"second_order_only"`` (theta' = sg(theta) - upd(g(theta) + wd sg(theta))).
    """
    first_order = mode == "first_order"
    names = [n for n, _ in model.named_parameters()]
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}

    def loss_at(params, batch):
        x, y = batch
        out = functional_call(model, {**dict(zip(names, params)), **buffers}, (x,))
        return criterion(out, y)

    train = [d for d in range(len(batches)) if d != t]
    l_mtr = sum(loss_at(theta, batches[d]) for d in train) / len(train)
    grads = torch.autograd.grad(l_mtr, theta, create_graph=not first_order, retain_graph=True)
    new = []
    for i, (p, g) in enumerate(zip(theta, grads)):
        p_in = p if mode == "full" else p.detach()
        gp = g + wd * p_in
        if inner == "sgd":
            upd = lr * gp
        else:
            st = (state or [{}] * len(theta))[i]
            m0 = st.get("exp_avg", torch.zeros_like(p))
            v0 = st.get("exp_avg_sq", torch.zeros_like(p))
            step = float(st.get("step", 0)) + 1
            m = betas[0] * m0 + (1 - betas[0]) * gp
            v = betas[1] * v0 + (1 - betas[1]) * gp * gp
            m_hat = m / (1 - betas[0] ** step)
            v_hat = v / (1 - betas[1] ** step)
            upd = lr * m_hat / ((v_hat + eps_root).sqrt() + eps)
        new.append(p - upd.detach() if first_order else p_in - upd)
    l_mte = loss_at(new, batches[t])
    total = l_mtr + l_mte
    return total, list(torch.autograd.grad(total, theta))
