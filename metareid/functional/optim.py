"""Differentiable, out-of-place optimiser steps for the inner loop of Algorithm 1.

Algorithm 1, line 8 of the M3L paper computes the fast weights
``Theta' <- Adam(grad L_mtr, Theta, alpha)``. For the meta-gradient to be exact, that
update must be a differentiable function of ``Theta`` (through the gradient, which itself
depends on ``Theta``). The functions here compute such updates with ordinary tensor
operations: nothing is modified in place, so autograd can differentiate through them, and
the numbers equal one ``torch.optim.Adam.step()`` / ``torch.optim.SGD.step()`` (with
coupled L2 weight decay) on the same gradients.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

__all__ = ["adam_step", "sgd_step"]


def _check_lengths(params: Sequence[Tensor], **others: Sequence[object] | None) -> None:
    for name, seq in others.items():
        if seq is not None and len(seq) != len(params):
            raise ValueError(
                f"{name} must have one entry per parameter ({len(params)}), got {len(seq)}"
            )


def _safe_sqrt(x: Tensor) -> Tensor:
    """``sqrt(x)`` whose derivative is 0 (not inf) where ``x == 0``.

    Adam's second moment is exactly zero for a coordinate whose gradient (and state) is
    zero; the plain square root would send ``0 * inf = nan`` into the meta-gradient.
    """
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).sqrt(), 0.0)


def adam_step(
    params: Sequence[Tensor],
    grads: Sequence[Tensor | None],
    *,
    lr: float | Sequence[float],
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float | Sequence[float] = 1e-8,
    eps_root: float | Sequence[float] = 0.0,
    weight_decay: float | Sequence[float] = 0.0,
    exp_avgs: Sequence[Tensor | None] | None = None,
    exp_avg_sqs: Sequence[Tensor | None] | None = None,
    steps: Sequence[int | float] | None = None,
) -> list[Tensor]:
    """One differentiable Adam step (Algorithm 1, line 8), out of place.

    Computes, for every parameter ``p`` with gradient ``g`` (coupled L2 weight decay, as
    ``torch.optim.Adam``)::

        g' = g + weight_decay * p
        m  = beta1 * m0 + (1 - beta1) * g'
        v  = beta2 * v0 + (1 - beta2) * g'^2
        p' = p - lr * m_hat / (sqrt(v_hat + eps_root) + eps)

    with ``t = step + 1``, ``m_hat = m / (1 - beta1^t)`` and ``v_hat = v / (1 - beta2^t)``
    (``eps_root`` inside the square root, ``eps`` outside: torchopt's names and placement).

    * ``eps_root=0`` (default here) is ``torch.optim.Adam(...).step()`` to float rounding.
    * ``eps_root=1e-8 / (1 - beta2)`` (``1e-5`` for beta2 = 0.999) with zero moments is the
      inner step of the published M3L code, whose ``update_params(solver='adam')`` adds
      1e-8 to the raw second moment before the square root: for a fresh step,
      ``p' = p - lr * g' / (sqrt(g'^2 + 1e-5) + 1e-8)``. That step is smooth in ``g'`` and
      its derivative is at most ``lr / sqrt(eps_root)`` (about ``316 * lr``), whereas the
      exact-Adam step is about ``lr * sign(g')`` with a derivative of up to ``lr / eps``.

    Parameters whose gradient is ``None`` are returned unchanged (as torch's Adam skips
    them). With ``eps_root=0``, a coordinate whose second moment is exactly zero
    contributes a zero, never ``nan``, to gradients taken through the step.

    Args:
        params: Parameters ``Theta``, any shapes.
        grads: Their gradients, same shapes, or ``None`` for unused parameters. Keep them
            attached to the graph (``create_graph=True``) for a second-order meta-gradient.
        lr: Learning rate, one value or one per parameter.
        betas: Adam's ``(beta1, beta2)``.
        eps: Term added to the bias-corrected denominator, outside the square root, one
            value or one per parameter.
        eps_root: Term added to the bias-corrected second moment inside the square root,
            ``>= 0``, one value or one per parameter. Default 0 (``torch.optim.Adam``).
        weight_decay: Coupled L2 penalty, one value or one per parameter.
        exp_avgs: Optional first moments to continue from (``None`` entries: zeros).
        exp_avg_sqs: Optional second moments to continue from (``None`` entries: zeros).
        steps: Optional number of steps already taken per parameter (default 0).

    Returns:
        The updated parameters ``Theta'`` as new tensors.

    Example:
        >>> p = torch.tensor([1.0, -2.0], requires_grad=True)
        >>> g = torch.tensor([0.5, 0.0])
        >>> adam_step([p], [g], lr=0.1)[0]
        tensor([ 0.9000, -2.0000], grad_fn=<SubBackward0>)
        >>> q = torch.tensor([0.0], dtype=torch.float64)
        >>> g = torch.tensor([1e-3], dtype=torch.float64)   # published step: smooth near 0
        >>> float(adam_step([q], [g], lr=1.0, eps_root=1e-5)[0])  # -g / (sqrt(g^2+1e-5)+1e-8)
        -0.3015...
    """
    _check_lengths(params, grads=grads, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs, steps=steps)
    beta1, beta2 = betas
    if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
        raise ValueError(f"betas must lie in [0, 1), got {betas}")
    n = len(params)
    lrs = _broadcast("lr", lr, n)
    epss = _broadcast("eps", eps, n)
    roots = _broadcast("eps_root", eps_root, n)
    for i, r in enumerate(roots):
        if not r >= 0 or r == float("inf"):
            raise ValueError(f"eps_root must be a finite number >= 0, got {r!r} (entry {i})")
    wds = _broadcast("weight_decay", weight_decay, n)
    out: list[Tensor] = []
    for i, p, g in _coupled_grads(params, grads, wds):
        if g is None:
            out.append(p)
            continue
        m0 = None if exp_avgs is None else exp_avgs[i]
        v0 = None if exp_avg_sqs is None else exp_avg_sqs[i]
        t = 1 + (0 if steps is None else float(steps[i]))
        m = (1 - beta1) * g if m0 is None else beta1 * m0 + (1 - beta1) * g
        v = (1 - beta2) * (g * g) if v0 is None else beta2 * v0 + (1 - beta2) * (g * g)
        bias1 = 1 - beta1**t
        if roots[i] == 0:  # torch.optim.Adam's arithmetic, operation for operation
            denom = _safe_sqrt(v) / (1 - beta2**t) ** 0.5 + epss[i]
        else:  # eps_root > 0: the square root's argument is never 0
            denom = (v / (1 - beta2**t) + roots[i]).sqrt() + epss[i]
        out.append(p - (lrs[i] / bias1) * m / denom)
    return out


def sgd_step(
    params: Sequence[Tensor],
    grads: Sequence[Tensor | None],
    *,
    lr: float | Sequence[float],
    weight_decay: float | Sequence[float] = 0.0,
) -> list[Tensor]:
    """One differentiable plain SGD step, out of place: ``p' = p - lr * (g + wd * p)``.

    No momentum: this is the inner step of MAML-style meta-learning. Parameters whose
    gradient is ``None`` are returned unchanged.

    Args:
        params: Parameters ``Theta``, any shapes.
        grads: Their gradients, same shapes, or ``None`` for unused parameters.
        lr: Learning rate, one value or one per parameter.
        weight_decay: Coupled L2 penalty, one value or one per parameter.

    Returns:
        The updated parameters as new tensors.

    Example:
        >>> p = torch.tensor([1.0, 2.0])
        >>> sgd_step([p], [torch.tensor([1.0, -1.0])], lr=0.5)[0]
        tensor([0.5000, 2.5000])
    """
    _check_lengths(params, grads=grads)
    n = len(params)
    lrs = _broadcast("lr", lr, n)
    wds = _broadcast("weight_decay", weight_decay, n)
    return [p if g is None else p - lrs[i] * g for i, p, g in _coupled_grads(params, grads, wds)]


def _coupled_grads(
    params: Sequence[Tensor], grads: Sequence[Tensor | None], weight_decays: list[float]
) -> Iterator[tuple[int, Tensor, Tensor | None]]:
    """``(i, p, g + wd * p)`` per parameter (coupled L2 decay); ``g`` stays None if unused."""
    for i, (p, g) in enumerate(zip(params, grads, strict=True)):
        if g is not None and weight_decays[i] != 0:
            g = g + weight_decays[i] * p
        yield i, p, g


def _broadcast(name: str, value: float | Sequence[float], n: int) -> list[float]:
    if isinstance(value, int | float):
        return [float(value)] * n
    values = [float(v) for v in value]
    if len(values) != n:
        raise ValueError(
            f"{name} must be a number or have one entry per parameter ({n}), got {len(values)}"
        )
    return values
