"""Inner step and meta-test forward of :class:`metareid.MetaLearner`, per backend.

Two backends compute the same thing:

* ``higher``: the inner step with ``higher.optim.DifferentiableAdam``/``DifferentiableSGD``
  and the meta-test on a ``higher``-patched copy of the model. Its pitfalls are handled
  here: eps is rescaled to ``torch.optim.Adam``'s placement, the state handed to it is a
  stand-in (fresh) or the outer state (which ``higher`` copies, never modifies), the
  stand-in's parameter list is not deep-copied, buffers of the patched copy are clones
  (so the meta-test never moves the original running statistics), and the first-order
  path is reconnected by the caller.
* ``func``: the inner step with :mod:`metareid.functional.optim` and the meta-test on the
  model itself, re-parametrised with ``torch.func.functional_call``.

Both take the meta-gradient ``mode`` of :class:`metareid.MetaLearner` (``meta_test_grad``):
``"full"`` keeps ``Theta`` in the graph of ``Theta'``; ``"second_order_only"`` builds
``Theta'`` from a detached copy of ``Theta`` (the published code's ``copyModel``), so that the
meta-test reaches ``Theta`` only through the meta-train gradient; ``"first_order"`` records no
graph for the update (the caller reconnects ``Theta`` with an identity Jacobian).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import higher
import torch
from torch import Tensor, nn

from metareid.functional.optim import adam_step, sgd_step
from metareid.layers.metabn import metabn_phase
from metareid.meta.phase import Phase

InnerStep = tuple[tuple[Tensor | None, ...], list[Tensor]]
"""``(raw gradients, Theta')`` of one inner step."""
MODES = ("full", "first_order", "second_order_only")
"""Accepted values of ``mode`` (``MetaLearner(meta_test_grad=...)``)."""
GradTransform = Callable[[list[Tensor | None]], list[Tensor | None]]
"""Maps the meta-train gradients to the ones the inner step uses (differentiably)."""


@dataclass
class InnerParam:
    """One parameter that the inner step updates, with its effective hyper-parameters."""

    index: int  # position in the list of trainable model parameters
    lr: float
    weight_decay: float
    eps: float
    eps_root: float
    betas: tuple[float, float]
    state: dict[str, Any] = field(default_factory=dict)  # outer Adam state, if continued

    @property
    def step(self) -> float:
        s = self.state.get("step", 0)
        return float(s.item()) if isinstance(s, Tensor) else float(s)


# ---------------------------------------------------------------------------- func
def func_inner_step(
    loss: Tensor,
    params: list[Tensor],
    inner: list[InnerParam],
    optimizer: str,
    mode: str,
    grad_transform: GradTransform | None = None,
    transformed_out: list[list[Tensor | None]] | None = None,
) -> InnerStep:
    """Gradient of ``loss`` and ``Theta'`` with :mod:`metareid.functional.optim`.

    Returns the raw gradients of ``loss`` (for ``.grad``) and ``Theta'``, computed from the
    gradients mapped by ``grad_transform`` (identity when ``None``); the mapped gradients
    are appended to ``transformed_out`` when given. ``mode`` is one of :data:`MODES`.
    """
    first_order = mode == "first_order"
    grads = torch.autograd.grad(loss, params, create_graph=not first_order, allow_unused=True)
    used: list[Tensor | None] = list(grads)
    if grad_transform is not None:
        used = list(grad_transform(used))
    if transformed_out is not None:
        transformed_out.append(list(used))
    if first_order:
        used = [None if g is None else g.detach() for g in used]
    base = [p.detach() for p in params] if mode != "full" else params
    fast = inner_update(base, used, inner, optimizer)
    if first_order:  # unchanged entries are the original parameters, not detached copies
        fast = [p if f is b else f for f, b, p in zip(fast, base, params, strict=True)]
    return grads, fast


def inner_update(
    base: Sequence[Tensor],
    grads: Sequence[Tensor | None],
    inner: list[InnerParam],
    optimizer: str,
) -> list[Tensor]:
    """``Theta'``: one ``optimizer`` step (``"adam"`` or ``"sgd"``) from ``base`` with ``grads``.

    Differentiable in ``base`` and ``grads`` wherever they carry a graph. Entries without a
    gradient (or not in ``inner``) are ``base``'s own tensors.
    """
    fast = list(base)
    sel = [ip for ip in inner if grads[ip.index] is not None]
    ps = [base[ip.index] for ip in sel]
    gs = [cast(Tensor, grads[ip.index]) for ip in sel]
    if optimizer == "sgd":
        new = sgd_step(
            ps, gs, lr=[ip.lr for ip in sel], weight_decay=[ip.weight_decay for ip in sel]
        )
    else:
        new = list(ps)
        for betas in dict.fromkeys(ip.betas for ip in sel):  # adam_step takes one betas pair
            idx = [k for k, ip in enumerate(sel) if ip.betas == betas]
            stepped = adam_step(
                [ps[k] for k in idx],
                [gs[k] for k in idx],
                lr=[sel[k].lr for k in idx],
                betas=betas,
                eps=[sel[k].eps for k in idx],
                eps_root=[sel[k].eps_root for k in idx],
                weight_decay=[sel[k].weight_decay for k in idx],
                exp_avgs=[_detached(sel[k].state.get("exp_avg")) for k in idx],
                exp_avg_sqs=[_detached(sel[k].state.get("exp_avg_sq")) for k in idx],
                steps=[sel[k].step for k in idx],
            )
            for k, t in zip(idx, stepped, strict=True):
                new[k] = t
    for ip, t in zip(sel, new, strict=True):
        fast[ip.index] = t
    return fast


class _LossCall(nn.Module):
    """Runs ``loss_fn(model, ...)`` as a module call, so functional_call can swap weights."""

    def __init__(self, model: nn.Module, loss_fn: Callable[..., Tensor]) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any, domain: int, phase: str) -> Any:
        return self.loss_fn(self.model, batch, domain, phase)


def func_meta_test(
    model: nn.Module,
    params: list[Tensor],
    fast: list[Tensor],
    loss_fn: Callable[..., Any],
    batch: Any,
    domain: int,
    keep_buffers: bool = False,
) -> Any:
    """``loss_fn``'s meta-test output with ``model`` at ``Theta'`` and cloned buffers.

    With ``keep_buffers`` the model's buffers are replaced by the clones afterwards, so
    that what the meta-test forward did to them (BatchNorm running statistics) stays.
    """
    name_of = {id(p): name for name, p in model.named_parameters()}
    state: dict[str, Tensor] = {}
    for p, f in zip(params, fast, strict=True):
        if f is not p:
            state["model." + name_of[id(p)]] = f
    clones: dict[str, Tensor] = {}
    for name, b in model.named_buffers():
        clones[name] = state["model." + name] = b.clone()  # the copy's running statistics
    call = _LossCall(model, loss_fn)
    with metabn_phase(model, "meta_test"):
        out = torch.func.functional_call(
            call, state, (batch, domain, Phase.META_TEST), tie_weights=True, strict=False
        )
    if keep_buffers:
        for name, clone in clones.items():
            owner, _, leaf = name.rpartition(".")
            model.get_submodule(owner)._buffers[leaf] = clone
    return out


# ---------------------------------------------------------------------------- higher
class _NoDeepCopyList(list[Tensor]):
    """A parameter list that ``copy.deepcopy`` copies shallowly.

    ``higher`` deep-copies the param groups it is given; deep-copying the parameters would
    copy every weight of the model at every step for nothing.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Tensor]:
        return list(self)


@dataclass
class _OptimizerView:
    """The two attributes ``higher``'s differentiable optimisers read from an optimiser."""

    param_groups: list[dict[str, Any]]
    state: dict[Tensor, dict[str, Any]]


def higher_inner_step(
    loss: Tensor,
    params: list[Tensor],
    inner: list[InnerParam],
    optimizer: str,
    mode: str,
    grad_transform: GradTransform | None = None,
    transformed_out: list[list[Tensor | None]] | None = None,
) -> InnerStep:
    """Gradient of ``loss`` and ``Theta'`` with ``higher``'s differentiable optimisers.

    The gradients mapped by ``grad_transform`` are appended to ``transformed_out`` when
    given. ``mode`` is one of :data:`MODES`. For ``"second_order_only"`` the differentiable
    optimiser steps detached leaf copies of the parameters (the published ``copyModel``)
    with the meta-train gradient taken here, with graph, at the parameters themselves.

    One param group per parameter, so that each gets its own eps correction: ``higher``
    computes ``lr * sqrt(bc2) / bc1 * m / (sqrt(v) + eps)`` while ``torch.optim.Adam``
    computes ``lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)``; both agree when ``higher``
    is given ``eps * sqrt(bc2)`` with ``bc2 = 1 - beta2 ** (step + 1)``.

    ``eps_root`` (added to ``v / bc2`` inside the square root) is not a setting of
    ``higher``'s Adam. It is reached through the state that ``higher`` starts from: a
    second moment of ``v0 + eps_root * bc2 / beta2`` becomes ``v + eps_root * bc2`` after
    ``higher``'s own update ``beta2 * v0 + (1 - beta2) * g^2``, so that
    ``sqrt(v_new) / sqrt(bc2) = sqrt(v / bc2 + eps_root)``. This needs ``beta2 > 0``.
    """
    first_order = mode == "first_order"
    by_index = {ip.index: ip for ip in inner}
    own_grads: tuple[Tensor | None, ...] | None = None
    targets = params
    if mode == "second_order_only":
        own_grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        targets = [p.detach().requires_grad_() for p in params]
    groups: list[dict[str, Any]] = []
    state: dict[Tensor, dict[str, Any]] = {}
    for i, p in enumerate(targets):
        ip = by_index.get(i)
        group: dict[str, Any] = {"params": _NoDeepCopyList([p])}
        if optimizer == "sgd":
            group.update(
                lr=ip.lr if ip else 0.0,
                weight_decay=ip.weight_decay if ip else 0.0,
                momentum=0.0,
                dampening=0.0,
                nesterov=False,
            )
        else:
            betas = ip.betas if ip else (0.9, 0.999)
            step = ip.step if ip else 0.0
            eps = ip.eps if ip else 1e-8
            group.update(
                lr=ip.lr if ip else 0.0,
                betas=betas,
                eps=eps * math.sqrt(1.0 - betas[1] ** (step + 1)),
                weight_decay=ip.weight_decay if ip else 0.0,
                amsgrad=False,
            )
            moments: dict[str, Any] = {}
            if ip is not None and ip.state:
                moments = {
                    k: ip.state[k].detach() for k in ("exp_avg", "exp_avg_sq") if k in ip.state
                }
            if ip is not None and ip.eps_root > 0:
                if betas[1] <= 0:
                    raise ValueError(
                        "backend='higher' reaches eps_root through the second moment and "
                        f"needs beta2 > 0, got betas={betas}; use backend='func'"
                    )
                offset = ip.eps_root * (1.0 - betas[1] ** (step + 1)) / betas[1]
                if len(moments) != 2:  # fresh state: zero moments
                    moments = {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
                moments["exp_avg_sq"] = moments["exp_avg_sq"] + offset
            if len(moments) == 2:
                state[p] = {"step": step, **moments}  # higher copies it
        groups.append(group)
    view = _OptimizerView(groups, state)
    cls = higher.optim.DifferentiableSGD if optimizer == "sgd" else higher.optim.DifferentiableAdam
    diffopt = cls(view, targets, track_higher_grads=not first_order)

    captured: list[tuple[Tensor | None, ...]] = []

    def keep_inner(grads: Sequence[Tensor | None]) -> list[Tensor | None]:
        if own_grads is not None:  # higher differentiated w.r.t. the copies: nothing
            grads = own_grads
        captured.append(tuple(grads))
        used = list(grads) if grad_transform is None else list(grad_transform(list(grads)))
        if transformed_out is not None:
            transformed_out.append(list(used))
        # Trainable parameters the optimizer does not track are not moved.
        return [g if i in by_index else None for i, g in enumerate(used)]

    # First order: the update is a constant, so it is computed without recording a graph
    # (otherwise every Adam intermediate stays alive until the step returns).
    with torch.no_grad() if first_order else contextlib.nullcontext():
        new = diffopt.step(loss, params=targets, grad_callback=keep_inner)
    fast = list(new)
    if first_order:  # higher returns detached leaves; unchanged ones become the originals
        fast = [
            p if i not in by_index or captured[0][i] is None else f
            for i, (f, p) in enumerate(zip(fast, params, strict=True))
        ]
    return captured[0], fast


def higher_meta_test(
    model: nn.Module,
    params: list[Tensor],
    fast: list[Tensor],
    loss_fn: Callable[..., Any],
    batch: Any,
    domain: int,
    keep_buffers: bool = False,
) -> Any:
    """``loss_fn``'s meta-test output on a ``higher``-patched copy holding ``Theta'``.

    With ``keep_buffers`` the model's buffers are replaced by the copy's afterwards.
    """
    fast_of = {id(p): f for p, f in zip(params, fast, strict=True)}
    all_fast = [fast_of.get(id(p), p) for p in model.parameters()]

    def encapsulate(fmodel: Any, module: nn.Module) -> None:
        higher.patch.buffer_sync(module, fmodel)  # clones: the original stats stay put
        fmodel.update_params(all_fast)

    fmodel = higher.patch.make_functional(model, encapsulator=encapsulate)
    with metabn_phase(fmodel, "meta_test"):
        out = loss_fn(fmodel, batch, domain, Phase.META_TEST)
    if keep_buffers:
        _take_buffers(model, fmodel)
    return out


def _take_buffers(module: nn.Module, fmodule: nn.Module) -> None:
    """Replace ``module``'s buffers by those of its patched copy, recursively."""
    for key, value in fmodule._buffers.items():
        if key in module._buffers and isinstance(value, Tensor):
            module._buffers[key] = value
    for name, child in module._modules.items():
        if child is not None:
            _take_buffers(child, cast(nn.Module, fmodule._modules[name]))


def _detached(value: Any) -> Tensor | None:
    return value.detach() if isinstance(value, Tensor) else None
