"""The meta step of M3L (Algorithm 1) for any ``nn.Module``."""

from __future__ import annotations

import contextlib
import copy
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from metareid.layers.metabn import MetaBN, metabn_phase
from metareid.meta import _backends
from metareid.meta.phase import Phase

__all__ = [
    "GradTransform",
    "LossFn",
    "MetaLearner",
    "MetaStepResult",
    "OuterGradTransform",
    "Phase",
    "RecomputedLoss",
    "missing_second_derivative",
]

GradTransform = Callable[[list[Tensor | None]], Sequence[Tensor | None]]
"""``grad_transform(grads) -> grads``: see :class:`MetaLearner`, "Gradient hooks"."""

OuterGradTransform = Callable[[list[Tensor]], None]
"""``outer_grad_transform(params) -> None``: see :class:`MetaLearner`, "Gradient hooks"."""

LossFn = Callable[[nn.Module, Any, int, Phase], "Tensor | tuple[Tensor, Any]"]
"""``loss_fn(model, batch, domain, phase) -> loss`` or ``-> (loss, aux)``.

``loss`` is a scalar Tensor; ``aux`` is anything (tensors, dicts, lists or tuples of them)
that the caller wants back in :class:`MetaStepResult`, detached.
"""


@runtime_checkable
class RecomputedLoss(Protocol):
    """A loss that gives its gradient and Hessian-vector products instead of a graph.

    :meth:`MetaLearner.step` accepts one in place of ``loss_fn`` and then never holds a
    graph across calls: it builds the meta-gradient from gradients and one Hessian-vector
    product per meta-train domain (docs/meta_learner.md, "Recomputed chunks").
    :class:`metareid.engine.M3LStep` passes one for a split with ``recompute=True``, whose
    chunks are recomputed one at a time.
    """

    def value_and_grad(
        self,
        batch: Any,
        domain: int,
        phase: Phase,
        params: Sequence[Tensor],
        weights: dict[str, Tensor] | None,
        loss_weight: float,
    ) -> tuple[Tensor, list[Tensor | None], Any, Any]:
        """``(loss, grad of loss_weight * loss in params, aux, state for hvp)``.

        ``weights`` (``{name: tensor}``) replaces those parameters of the model in the
        forward, and ``params`` are then its values; ``None``: the model as it is.
        """
        ...

    def hvp(self, state: Any, vector: Sequence[Tensor | None]) -> list[Tensor | None]:
        """The Hessian of ``loss_weight * loss`` in ``params`` times ``vector``."""
        ...


_INNER_OPTIMIZERS = ("adam", "sgd")
_INNER_STATES = ("fresh", "continue")
_BACKENDS = ("higher", "func")
#: Accepted values of ``meta_test_grad``.
META_TEST_GRADS = _backends.MODES
_NO_SECOND_DERIVATIVE = re.compile(r"derivative for (\S+) is not implemented")


def _float_tensors(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, list | tuple):
        return [t for item in out for t in _float_tensors(item)]
    return []


def missing_second_derivative(model: nn.Module, inputs: Tensor) -> str | None:
    """The operation of ``model`` whose backward has no derivative, or ``None``.

    The exact meta step (``meta_test_grad="full"`` or ``"second_order_only"``)
    differentiates the meta-train gradient, so every operation's backward must itself be
    differentiable; a few are not in torch (``hardsigmoid``, the
    squeeze-excitation gate of MobileNetV3). This probe runs one train-mode forward of a copy of
    ``model`` on ``inputs``, takes the gradient of the squared outputs with
    ``create_graph=True`` and differentiates its squared norm: what the meta step does
    (attention on the math kernel, as :meth:`MetaLearner.step` runs it at second order),
    on a copy, so ``model`` (buffers included) is unchanged.

    Args:
        model: the network.
        inputs: one input batch for it (at least 2 samples when it has BatchNorm).

    Returns:
        The name torch gives the backward without a derivative (e.g.
        ``"aten::hardsigmoid_backward"``), or ``None`` when the second order goes through.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.Hardsigmoid(), nn.Linear(4, 2))
        >>> missing_second_derivative(net, torch.randn(3, 4))
        'aten::hardsigmoid_backward'
        >>> missing_second_derivative(nn.Sequential(nn.Linear(4, 2), nn.GELU()), torch.randn(3, 4))
    """
    probe = copy.deepcopy(model).train()
    params = [p for p in probe.parameters() if p.requires_grad]
    try:
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            outputs = _float_tensors(probe(inputs))
            loss = sum(((t.float() ** 2).sum() for t in outputs), torch.zeros(()))
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            norm = sum(
                ((g**2).sum() for g in grads if g is not None and g.requires_grad),
                torch.zeros(()),
            )
            if norm.requires_grad:
                torch.autograd.grad(norm, params, allow_unused=True)
    except RuntimeError as err:
        missing = _NO_SECOND_DERIVATIVE.search(str(err))
        if missing is None:
            raise
        return missing.group(1)
    return None


#: Accepted values of ``meta_test_bn_stats``.
META_TEST_BN_STATS = ("frozen", "update")


@dataclass(frozen=True)
class MetaStepResult:
    """What one meta step did.

    Attributes:
        meta_train_loss: ``L_mtr``, the mean meta-train loss at ``Theta`` (Eq. 9).
        meta_test_loss: ``L_mte``, the meta-test loss at ``Theta'`` (Eq. 10).
        meta_test_domain: Index of the domain used as meta-test.
        meta_train_domains: Indices of the meta-train domains, in the order they ran.
        meta_train_aux: The ``aux`` that ``loss_fn`` returned for each meta-train domain
            (phase :attr:`Phase.META_TRAIN`, at ``Theta``), in the order of
            ``meta_train_domains``, with every tensor detached; ``None`` entries where
            ``loss_fn`` returned a plain loss.
        meta_test_aux: The detached ``aux`` of the meta-test call (phase
            :attr:`Phase.META_TEST`, at ``Theta'``), or ``None``.
        meta_train_grad_norm: L2 norm, over all trainable parameters, of the meta-train
            gradient that the step added to ``.grad`` (``grad L_mtr(Theta)``, unscaled).
        meta_test_grad_norm: L2 norm of the meta-test term it added,
            ``d/dTheta L_mte(Theta'(Theta))`` under the chosen ``meta_test_grad`` (for
            ``"second_order_only"`` this is the second-order term alone). Both are taken in
            this process, before ``outer_grad_transform``. ``nan`` when not computed.
    """

    meta_train_loss: float
    meta_test_loss: float
    meta_test_domain: int
    meta_train_domains: tuple[int, ...]
    meta_train_aux: tuple[Any, ...] = ()
    meta_test_aux: Any = None
    meta_train_grad_norm: float = math.nan
    meta_test_grad_norm: float = math.nan

    def aux_by_domain(self) -> dict[int, tuple[Phase, Any]]:
        """``{domain: (phase, aux)}`` for every domain of the step.

        Example:
            >>> r = MetaStepResult(1.0, 2.0, 1, (0, 2), ("a", "c"), "b")
            >>> r.aux_by_domain()[1]
            (<Phase.META_TEST: 'meta_test'>, 'b')
        """
        out = {
            d: (Phase.META_TRAIN, a)
            for d, a in zip(self.meta_train_domains, self.meta_train_aux, strict=False)
        }
        out[self.meta_test_domain] = (Phase.META_TEST, self.meta_test_aux)
        return out


class MetaLearner:
    """Memory-based multi-source meta-learning step (M3L, Algorithm 1) for any model.

    Each call to :meth:`meta_backward` (or :meth:`step`) does one iteration of
    Algorithm 1 on one mini-batch per source domain:

    1. Pick the meta-test domain ``t`` (``meta_test`` or drawn uniformly from
       ``generator``); the other domains are meta-train, in index order.
    2. **Meta-train** (lines 4-6): ``L_mtr`` = mean over meta-train domains ``d`` of
       ``loss_fn(model, batches[d], d, "meta_train")`` (Eq. 9), computed on ``model``
       itself with every :class:`~metareid.MetaBN` in phase ``"meta_train"`` (their
       statistics are cleared first, so they record this iteration's meta-train domains
       in order).
    3. **Inner step** (lines 7-8): ``Theta' = inner_optimizer(Theta, grad L_mtr)``, one
       differentiable step. ``"adam"`` equals ``torch.optim.Adam.step()`` on the same
       gradient (lr, betas, eps, coupled weight decay); ``"sgd"`` is
       ``Theta - lr * (g + weight_decay * Theta)``.
    4. **Meta-test** (lines 9-12): ``L_mte = loss_fn(model', batches[t], t, "meta_test")``
       where ``model'`` is the model at ``Theta'`` with every MetaBN in phase
       ``"meta_test"`` (Eq. 5-7, 10).
    5. **Meta optimisation** (lines 13-15): ``.grad`` of every trainable model parameter
       receives ``grad L_mtr(Theta)`` plus the meta-test term chosen by ``meta_test_grad``:

       * ``"full"`` (default, the paper's line 15): ``d/dTheta L_mte(Theta'(Theta))``, the
         direct term ``grad L_mte(Theta')`` and the second-order term through the inner
         step;
       * ``"first_order"``: the direct term alone (``dTheta'/dTheta = I``);
       * ``"second_order_only"`` (the published code): the second-order term alone.
         ``Theta'`` is built from a detached copy of ``Theta``,
         ``Theta' = sg(Theta) - inner_step(g(Theta) + wd * sg(Theta))``, as the published
         ``copyModel`` fills the meta-test model with fresh leaves
         (``reid/models/MetaModules.py:116-119``), so the meta-test reaches ``Theta`` only
         through the meta-train gradient ``g``.

       :meth:`step` then calls ``optimizer.step()`` (line 16). See docs/meta_learner.md,
       "The three meta-gradients".

    The inner step takes its hyper-parameters from ``optimizer``'s parameter groups at
    every call, so learning-rate warm-up and decay carry over to ``alpha`` as in the
    published code; ``inner_lr``/``inner_weight_decay``/``inner_eps`` override them.

    Inner Adam step: with zero moments (``inner_state="fresh"``) the update is
    ``Theta' = Theta - alpha * g' / (sqrt(g'^2 + inner_eps_root) + eps)`` with
    ``g' = g + weight_decay * Theta`` (see :func:`metareid.functional.adam_step`). The
    default ``inner_eps_root=1e-5`` is the published code's step (its ``update_params``
    adds 1e-8 to the raw second moment, i.e. ``1e-8 / (1 - beta2)`` to the bias-corrected
    one); ``inner_eps_root=0`` is exactly ``torch.optim.Adam.step()``, whose derivative
    in ``g`` reaches ``alpha / eps`` near ``g = 0`` and made second-order training diverge
    on the synthetic benchmark (docs/meta_learner.md, "Stability").

    ``loss_fn`` may return ``(loss, aux)``: the detached ``aux`` of each call comes back in
    :class:`MetaStepResult` with its phase (``meta_train_aux``, ``meta_test_aux``), e.g.
    the features that a trainer writes into its memories. ``phase`` is a :class:`Phase`.

    Mixed precision: with ``grad_scaler`` (a ``torch.amp.GradScaler``, for fp16) both
    losses are multiplied by the current scale before differentiation, the inner step
    uses the unscaled meta-train gradient (so ``Theta'`` does not depend on the scale),
    and :meth:`step` steps through ``grad_scaler.step``/``update``, which skips the
    update when a gradient overflowed.

    Gradient hooks (for distributed training; identities by default):
        ``grad_transform(grads) -> grads`` maps the meta-train gradients (one entry per
        trainable parameter, ``None`` where ``L_mtr`` does not reach it) before the inner
        step, inside the autograd graph. It sees true (unscaled) gradients, also with a
        ``grad_scaler``, and its output is both what the inner step uses and the meta-train
        gradient added to ``.grad`` (times the scale under a ``grad_scaler``). Under
        ``torchrun`` it is :func:`metareid.distributed.all_reduce_mean`, so that ``Theta'``
        is the same on every rank. With ``meta_test_grad`` other than ``"first_order"`` the
        second-order term differentiates through it. ``outer_grad_transform(params)`` is
        called at the end of
        :meth:`meta_backward`, after both gradient terms were added to ``.grad``, with the
        list of trainable parameters; :func:`metareid.distributed.all_reduce_grads_`
        averages the outer gradient over ranks there, as ``DistributedDataParallel`` would.

    Model state:
        * BatchNorm running statistics of ``model`` are updated by the meta-train forwards
          exactly as a plain training step on those batches would update them. The
          meta-test forward at ``Theta'`` runs on copies of the buffers; with
          ``meta_test_bn_stats="frozen"`` (default) they are discarded, with ``"update"``
          (the published code, whose meta-test model shares the model's buffers,
          ``reid/models/MetaModules.py:120-124``) the model's buffers are replaced by the
          copies afterwards, so the meta-test moves the running statistics too. The
          model's train/eval mode is respected (in eval mode BatchNorm and MetaBN use
          running statistics and MetaBN does not mix).
        * Only parameters with ``requires_grad=True`` receive gradients. Parameters that
          the optimizer tracks are updated in the inner step; a parameter that ``L_mtr``
          does not use keeps its value in ``Theta'`` (as ``torch.optim.Adam`` skips
          parameters without gradient). Trainable parameters that the optimizer does not
          track are not moved by the inner step but still receive the outer gradient.
        * If ``loss_fn`` raises, the model's buffers are restored and no ``.grad`` is
          changed.

    Backends:
        ``"higher"`` (default) runs the meta-test on a ``higher`` monkey-patched copy of
        the model and the inner step with ``higher``'s differentiable optimisers, with
        their pitfalls corrected (eps placement, copied state, cloned buffers, first-order
        path). ``"func"`` runs the meta-test on the model itself, re-parametrised with
        ``torch.func.functional_call``, and the inner step with
        :func:`metareid.functional.adam_step`/``sgd_step``. Both give the same gradients.
        Prefer ``"func"`` when ``loss_fn`` needs the model object itself in the meta-test
        (attributes set after construction, hooks, ``model is my_model`` checks) or when
        building a patched copy every step is noticeable; ``"higher"`` when your code
        already works with ``higher``'s patched modules.

    Args:
        model: The network ``F`` with parameters ``Theta``.
        optimizer: The outer optimiser (Adam in the paper); its parameters must belong to
            ``model``.
        inner_lr: ``alpha``. ``None`` (default) uses each parameter group's current
            ``lr``.
        inner_optimizer: ``"adam"`` (default, the paper) or ``"sgd"``.
        inner_state: ``"fresh"`` (default, the published code): zero Adam moments every
            step, so the first inner step is about ``alpha * sign(g)``. ``"continue"``:
            start from a copy of the outer Adam's moments and step count (the outer state
            is never modified).
        inner_weight_decay: Coupled L2 weight decay of the inner step. ``None`` (default)
            uses each group's ``weight_decay`` (5e-4 in the paper).
        inner_eps: Adam's eps for the inner step (outside the square root). ``None``
            (default) uses each group's ``eps`` (1e-8 by default).
        inner_eps_root: Added to the bias-corrected second moment inside the square root
            of the inner Adam step, ``>= 0``. Default ``1e-5``: the published code's step.
            ``0``: ``torch.optim.Adam``'s step. Ignored by ``inner_optimizer="sgd"``.
        meta_test_grad: Which meta-test gradient reaches ``Theta`` (step 5):
            ``"full"`` (default, the paper), ``"first_order"`` (the inner update is a
            constant, ``dTheta'/dTheta = I``: the meta-test gradient at ``Theta'`` is added
            unchanged, no double backward) or ``"second_order_only"`` (the published code).
        meta_test_bn_stats: ``"frozen"`` (default): the meta-test forward leaves the
            model's buffers as they are; ``"update"`` (the published code): the model
            keeps what the meta-test forward did to its buffers (BatchNorm running
            statistics). Buffers are replaced, not written in place.
        backend: ``"higher"`` (default) or ``"func"``.
        generator: Random generator used to draw the meta-test domain.
        grad_scaler: A ``torch.amp.GradScaler`` for fp16 training, or ``None`` (default).
        grad_transform: ``grads -> grads``, applied differentiably to the meta-train
            gradients before the inner step (see "Gradient hooks"); must return one entry
            per gradient, ``None`` exactly where the input has ``None``, with the same
            shapes. ``None`` (default): the identity.
        outer_grad_transform: ``params -> None``, called at the end of
            :meth:`meta_backward` to change ``.grad`` in place (see "Gradient hooks").
            ``None`` (default): nothing.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from metareid import MetaLearner
        >>> model = nn.Sequential(nn.Linear(4, 3))
        >>> opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        >>> def loss_fn(model, batch, domain, phase):
        ...     x, y = batch
        ...     return nn.functional.cross_entropy(model(x), y)
        >>> batches = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(3)]
        >>> learner = MetaLearner(model, opt, generator=torch.Generator().manual_seed(0))
        >>> result = learner.step(batches, loss_fn)
        >>> result.meta_test_domain in (0, 1, 2)
        True
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        inner_lr: float | None = None,
        inner_optimizer: Literal["adam", "sgd"] = "adam",
        inner_state: Literal["fresh", "continue"] = "fresh",
        inner_weight_decay: float | None = None,
        inner_eps: float | None = None,
        inner_eps_root: float = 1e-5,
        meta_test_grad: Literal["full", "first_order", "second_order_only"] = "full",
        meta_test_bn_stats: Literal["frozen", "update"] = "frozen",
        backend: Literal["higher", "func"] = "higher",
        generator: torch.Generator | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
        grad_transform: GradTransform | None = None,
        outer_grad_transform: OuterGradTransform | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        _check_optional_number("inner_lr", inner_lr, minimum=0.0)
        _check_optional_number("inner_weight_decay", inner_weight_decay, minimum=0.0)
        _check_optional_number("inner_eps", inner_eps, minimum=0.0, strict=True)
        if inner_eps_root is None:
            raise TypeError("inner_eps_root must be a number >= 0, got None")
        _check_optional_number("inner_eps_root", inner_eps_root, minimum=0.0)
        if grad_scaler is not None and not isinstance(grad_scaler, torch.amp.GradScaler):
            raise TypeError(
                f"grad_scaler must be a torch.amp.GradScaler or None, got "
                f"{type(grad_scaler).__name__}"
            )
        for name, hook in (
            ("grad_transform", grad_transform),
            ("outer_grad_transform", outer_grad_transform),
        ):
            if hook is not None and not callable(hook):
                raise TypeError(f"{name} must be callable or None, got {type(hook).__name__}")
        _check_choice("inner_optimizer", inner_optimizer, _INNER_OPTIMIZERS)
        _check_choice("inner_state", inner_state, _INNER_STATES)
        _check_choice("backend", backend, _BACKENDS)
        _check_choice("meta_test_grad", meta_test_grad, META_TEST_GRADS)
        _check_choice("meta_test_bn_stats", meta_test_bn_stats, META_TEST_BN_STATS)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(
                f"generator must be a torch.Generator or None, got {type(generator).__name__}"
            )
        if inner_state == "continue":
            if inner_optimizer != "adam":
                raise ValueError(
                    "inner_state='continue' continues the outer Adam moments and needs "
                    f"inner_optimizer='adam', got inner_optimizer={inner_optimizer!r}"
                )
            for i, group in enumerate(optimizer.param_groups):
                if "betas" not in group:
                    raise ValueError(
                        "inner_state='continue' needs an Adam-family outer optimizer with "
                        f"'betas'; param group {i} of {type(optimizer).__name__} has none"
                    )
                if group.get("amsgrad", False):
                    raise ValueError(
                        "inner_state='continue' does not support amsgrad=True "
                        f"(param group {i}); use inner_state='fresh'"
                    )
        model_params = {id(p) for p in model.parameters()}
        for i, group in enumerate(optimizer.param_groups):
            for p in group["params"]:
                if id(p) not in model_params:
                    raise ValueError(
                        f"optimizer param group {i} holds a parameter of shape "
                        f"{tuple(p.shape)} that is not a parameter of model; the meta-test "
                        "runs the model at Theta', so every optimised parameter (classifiers "
                        "included) must live inside model"
                    )
        if backend == "func":
            _refuse_aliases(model)
        self.model = model
        self.optimizer = optimizer
        self.inner_lr = inner_lr
        self.inner_optimizer = inner_optimizer
        self.inner_state = inner_state
        self.inner_weight_decay = inner_weight_decay
        self.inner_eps = inner_eps
        self.inner_eps_root = float(inner_eps_root)
        self.meta_test_grad = meta_test_grad
        self.meta_test_bn_stats = meta_test_bn_stats
        self.backend = backend
        self.generator = generator
        self.grad_scaler = grad_scaler
        self.grad_transform = grad_transform
        self.outer_grad_transform = outer_grad_transform

    # ------------------------------------------------------------------ public API
    def step(
        self,
        batches: Sequence[Any],
        loss_fn: LossFn | RecomputedLoss,
        meta_test: int | None = None,
    ) -> MetaStepResult:
        """One full meta-iteration: ``zero_grad``, :meth:`meta_backward`, ``optimizer.step``.

        Args:
            batches: One mini-batch per source domain (any object ``loss_fn`` understands),
                at least two.
            loss_fn: ``loss_fn(model, batch, domain, phase)`` returning a scalar Tensor
                or ``(loss, aux)``; ``phase`` is :attr:`Phase.META_TRAIN` or
                :attr:`Phase.META_TEST`.
            meta_test: Index of the meta-test domain; ``None`` draws one uniformly.

        Returns:
            The losses and the domain split of this step.

        Example:
            >>> import torch
            >>> from torch import nn
            >>> model = nn.Linear(2, 1)
            >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
            >>> loss = lambda m, b, d, phase: m(b).pow(2).mean()
            >>> res = MetaLearner(model, opt).step([torch.ones(4, 2)] * 2, loss, meta_test=1)
            >>> res.meta_train_domains, res.meta_test_domain
            ((0,), 1)
        """
        self._check_batches(batches, meta_test)  # before zero_grad: bad input changes nothing
        self.optimizer.zero_grad(set_to_none=True)
        result = self.meta_backward(batches, loss_fn, meta_test)
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()
        return result

    def meta_backward(
        self,
        batches: Sequence[Any],
        loss_fn: LossFn | RecomputedLoss,
        meta_test: int | None = None,
    ) -> MetaStepResult:
        """Accumulate the meta-gradient into ``.grad`` without an optimiser step.

        Gradients are added to existing ``.grad`` values, as ``Tensor.backward`` does.

        Args:
            batches: One mini-batch per source domain, at least two.
            loss_fn: ``loss_fn(model, batch, domain, phase)`` returning a scalar Tensor
                or ``(loss, aux)``.
            meta_test: Index of the meta-test domain; ``None`` draws one uniformly.

        Returns:
            The losses, the domain split and the auxiliary outputs of this step. With a
            ``grad_scaler`` the added gradients are multiplied by its current scale.

        Example:
            >>> import torch
            >>> from torch import nn
            >>> model = nn.Linear(2, 1)
            >>> opt = torch.optim.Adam(model.parameters(), lr=0.1)
            >>> loss = lambda m, b, d, phase: m(b).pow(2).mean()
            >>> _ = MetaLearner(model, opt).meta_backward([torch.ones(4, 2)] * 3, loss, 0)
            >>> model.weight.grad.shape
            torch.Size([1, 2])
        """
        self._check_batches(batches, meta_test)
        if not callable(loss_fn) and not isinstance(loss_fn, RecomputedLoss):
            raise TypeError(
                f"loss_fn must be callable or a RecomputedLoss, got {type(loss_fn).__name__}"
            )
        num_domains = len(batches)
        if meta_test is None:
            meta_test = int(torch.randint(num_domains, (1,), generator=self.generator).item())
        train_domains = tuple(d for d in range(num_domains) if d != meta_test)

        model = self.model
        buffers_before = [b.detach().clone() for b in model.buffers()]
        # Second order differentiates the forwards twice: attention runs on the math kernel,
        # the one whose backward has a derivative (the fused CPU/CUDA kernels have none).
        attention = (
            sdpa_kernel(SDPBackend.MATH)
            if self.meta_test_grad != "first_order"
            else contextlib.nullcontext()
        )
        recomputed = isinstance(loss_fn, RecomputedLoss)
        if recomputed and self.grad_transform is not None:
            raise ValueError(
                "grad_transform is not supported with a RecomputedLoss yet (recomputed "
                "chunks run in one process)"
            )
        try:
            with attention:
                if isinstance(loss_fn, RecomputedLoss):
                    return self._meta_backward_recomputed(
                        batches, loss_fn, meta_test, train_domains
                    )
                return self._meta_backward(batches, loss_fn, meta_test, train_domains)
        except BaseException as err:
            with torch.no_grad():
                for b, saved in zip(model.buffers(), buffers_before, strict=True):
                    b.copy_(saved)
            missing = _NO_SECOND_DERIVATIVE.search(str(err))
            if isinstance(err, RuntimeError) and missing and self.meta_test_grad != "first_order":
                raise RuntimeError(
                    f"the model uses an operation without a second derivative in torch "
                    f"{torch.__version__}: {missing.group(1)} (its backward cannot be "
                    f"differentiated), and meta_test_grad={self.meta_test_grad!r} "
                    "differentiates the meta-train gradient. Use meta_test_grad='first_order', "
                    "or replace the operation by one with a second derivative (for example "
                    "nn.Hardsigmoid/nn.Hardswish by x * relu6(x + 3) / 6 written out). The "
                    "model's buffers and gradients are unchanged."
                ) from err
            raise

    # ------------------------------------------------------------------ internals
    def _meta_backward(
        self,
        batches: Sequence[Any],
        loss_fn: LossFn,
        meta_test: int,
        train_domains: tuple[int, ...],
    ) -> MetaStepResult:
        model = self.model
        for module in model.modules():
            if isinstance(module, MetaBN):
                module.clear_stats()
        params: list[Tensor] = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("model has no parameter with requires_grad=True")
        inner = self._inner_params(params)

        # Meta-train on the model itself: running statistics move as in a plain step.
        train_losses: list[Tensor] = []
        train_aux: list[Any] = []
        with metabn_phase(model, Phase.META_TRAIN):
            for d in train_domains:
                loss, aux = _split_output(loss_fn(model, batches[d], d, Phase.META_TRAIN))
                train_losses.append(_check_loss(loss, d, Phase.META_TRAIN))
                train_aux.append(_detach_tree(aux))
        loss_mtr = torch.stack(train_losses).mean()

        scale = self._loss_scale(loss_mtr)
        user = self.grad_transform
        transform: _backends.GradTransform | None = None
        if scale != 1.0 or user is not None:

            def transform(grads: list[Tensor | None]) -> list[Tensor | None]:
                out = grads if scale == 1.0 else [None if g is None else g / scale for g in grads]
                if user is not None:
                    out = _checked_transform(user, out)
                return out

        inner_step = (
            _backends.higher_inner_step if self.backend == "higher" else _backends.func_inner_step
        )
        transformed: list[list[Tensor | None]] = []
        raw, fast = inner_step(
            loss_mtr * scale if scale != 1.0 else loss_mtr,
            params,
            inner,
            self.inner_optimizer,
            self.meta_test_grad,
            transform,
            transformed,
        )
        if self.meta_test_grad == "first_order":
            # Theta' = Theta + constant: the value of the update, with identity Jacobian.
            fast = [
                p if f is p else f.detach() + (p - p.detach())
                for f, p in zip(fast, params, strict=True)
            ]

        meta_test_fn = (
            _backends.higher_meta_test if self.backend == "higher" else _backends.func_meta_test
        )
        loss_mte, test_aux = _split_output(
            meta_test_fn(
                model,
                params,
                fast,
                loss_fn,
                batches[meta_test],
                meta_test,
                keep_buffers=self.meta_test_bn_stats == "update",
            )
        )
        loss_mte = _check_loss(loss_mte, meta_test, Phase.META_TEST)

        # d/dTheta L_mte(Theta'(Theta)) by backprop through the inner step (the terms that
        # meta_test_grad keeps); the meta-train gradient is known from the inner step.
        test_grads: Sequence[Tensor | None] = [None] * len(params)
        if loss_mte.requires_grad:
            test_grads = torch.autograd.grad(
                loss_mte * scale if scale != 1.0 else loss_mte, params, allow_unused=True
            )
        # Without a grad_transform the raw gradient (scaled, under a grad scaler) is added,
        # as before the hooks existed; with one, its output (re-scaled).
        added = raw if user is None else transformed[0]
        return self._finish(
            params,
            test_grads,
            added,
            scale=scale,
            train_rescale=1.0 if user is None else scale,
            losses=(loss_mtr, loss_mte),
            domains=(meta_test, train_domains),
            aux=(train_aux, test_aux),
        )

    def _meta_backward_recomputed(
        self,
        batches: Sequence[Any],
        loss: RecomputedLoss,
        meta_test: int,
        train_domains: tuple[int, ...],
    ) -> MetaStepResult:
        """The meta step from gradients and Hessian-vector products, no graph kept.

        With ``g = grad L_mtr(Theta)``, ``Theta' = U(Theta, g)`` the inner step and
        ``v = grad L_mte(Theta')``, the chain rule gives
        ``d/dTheta L_mte(Theta') = (dU/dTheta)^T v + H_mtr (dU/dg)^T v``: the two
        vector-Jacobian products of the (elementwise) inner step are taken by autograd on
        ``U`` alone, and ``H_mtr a`` comes from ``loss.hvp``. ``"second_order_only"``
        drops the first term (``U`` starts from ``sg(Theta)``), ``"first_order"`` keeps
        ``v`` alone.
        """
        model = self.model
        _refuse_aliases(model)
        for module in model.modules():
            if isinstance(module, MetaBN):
                module.clear_stats()
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        params: list[Tensor] = [p for _, p in named]
        if not params:
            raise ValueError("model has no parameter with requires_grad=True")
        inner = self._inner_params(params)
        scale = self._loss_scale(params[0])
        share = scale / len(train_domains)

        train_losses: list[Tensor] = []
        train_aux: list[Any] = []
        states: list[Any] = []
        raw: list[Tensor | None] = [None] * len(params)
        with metabn_phase(model, Phase.META_TRAIN):
            for d in train_domains:
                value, grads, aux, state = loss.value_and_grad(
                    batches[d], d, Phase.META_TRAIN, params, None, share
                )
                train_losses.append(_check_loss(value, d, Phase.META_TRAIN, graph=False))
                train_aux.append(_detach_tree(aux))
                states.append(state)
                raw = _summed(raw, grads)
        loss_mtr = torch.stack(train_losses).mean()

        # Theta' = U(Theta, g) with the true (unscaled) meta-train gradient; no graph yet.
        used = [None if g is None else g.detach() if scale == 1.0 else g / scale for g in raw]
        with torch.no_grad():
            fast = _backends.inner_update(
                [p.detach() for p in params], used, inner, self.inner_optimizer
            )
        weights = {n: f.requires_grad_() for (n, _), f in zip(named, fast, strict=True)}

        buffers = [b.detach().clone() for b in model.buffers()]
        with metabn_phase(model, Phase.META_TEST):
            value, v, test_aux, _ = loss.value_and_grad(
                batches[meta_test], meta_test, Phase.META_TEST, fast, weights, scale
            )
        loss_mte = _check_loss(value, meta_test, Phase.META_TEST, graph=False)
        if self.meta_test_bn_stats == "frozen":
            with torch.no_grad():
                for b, saved in zip(model.buffers(), buffers, strict=True):
                    b.copy_(saved)
        del weights, fast, buffers

        test_grads: list[Tensor | None] = list(v)
        if self.meta_test_grad != "first_order" and any(t is not None for t in v):
            # The inner step again, with its (elementwise, cheap) graph, for its two
            # vector-Jacobian products with v.
            with torch.enable_grad():
                base = [p.detach().requires_grad_(self.meta_test_grad == "full") for p in params]
                leaves = [None if u is None else u.detach().requires_grad_() for u in used]
                stepped = _backends.inner_update(base, leaves, inner, self.inner_optimizer)
                pairs = [
                    (f, t)
                    for f, t in zip(stepped, v, strict=True)
                    if t is not None and f.requires_grad
                ]
                inputs = [t for t in (*base, *leaves) if t is not None and t.requires_grad]
                vjp = (
                    torch.autograd.grad(
                        [f for f, _ in pairs], inputs, [t for _, t in pairs], allow_unused=True
                    )
                    if pairs
                    else [None] * len(inputs)
                )
            found = dict(zip((id(t) for t in inputs), vjp, strict=True))
            direct = [found.get(id(b)) for b in base]
            a = [None if u is None else found.get(id(u)) for u in leaves]
            del stepped, pairs, inputs, vjp, found, base, leaves, v
            if scale != 1.0:
                a = [None if x is None else x / scale for x in a]
            curvature: list[Tensor | None] = [None] * len(params)
            for state in states:
                curvature = _summed(curvature, loss.hvp(state, a))
            test_grads = [
                None if d is None and h is None else (d if h is None else h if d is None else d + h)
                for d, h in zip(direct, curvature, strict=True)
            ]
            del direct, curvature, a
        del states

        return self._finish(
            params,
            test_grads,
            raw,
            scale=scale,
            train_rescale=1.0,
            losses=(loss_mtr, loss_mte),
            domains=(meta_test, train_domains),
            aux=(train_aux, test_aux),
        )

    def _finish(
        self,
        params: list[Tensor],
        test_grads: Sequence[Tensor | None],
        train_grads: Sequence[Tensor | None],
        *,
        scale: float,
        train_rescale: float,
        losses: tuple[Tensor, Tensor],
        domains: tuple[int, tuple[int, ...]],
        aux: tuple[Sequence[Any], Any],
    ) -> MetaStepResult:
        """Add both terms to ``.grad``, run ``outer_grad_transform``, make the result.

        ``test_grads`` and ``train_grads`` are the meta-test and meta-train terms (both
        multiplied by the loss ``scale``); ``train_rescale`` multiplies the meta-train
        term before it is added (``scale`` when a ``grad_transform`` saw the unscaled
        gradient, else 1). The norms are reported without the scale.
        """
        squares: list[list[Tensor]] = [[], []]  # meta-train, meta-test terms
        with torch.no_grad():
            for p, t, g in zip(params, test_grads, train_grads, strict=True):
                if t is not None:
                    squares[1].append(t.double().square().sum())
                    _accumulate(p, t)
                if g is None:
                    continue
                g = g.detach()
                squares[0].append(g.double().square().sum() * train_rescale**2)
                if train_rescale != 1.0:
                    g = g * train_rescale
                _accumulate(p, g)
            train_sq, test_sq = (
                float(torch.stack(q).sum()) / scale**2 if q else 0.0 for q in squares
            )
        if self.outer_grad_transform is not None:
            self.outer_grad_transform(params)
        (loss_mtr, loss_mte), (meta_test, train_domains), (train_aux, test_aux) = (
            losses,
            domains,
            aux,
        )
        return MetaStepResult(
            meta_train_loss=float(loss_mtr.detach()),
            meta_test_loss=float(loss_mte.detach()),
            meta_test_domain=meta_test,
            meta_train_domains=train_domains,
            meta_train_aux=tuple(train_aux),
            meta_test_aux=_detach_tree(test_aux),
            meta_train_grad_norm=math.sqrt(train_sq),
            meta_test_grad_norm=math.sqrt(test_sq),
        )

    def _loss_scale(self, loss: Tensor) -> float:
        """The grad scaler's current scale (1 without one or when it is disabled)."""
        scaler = self.grad_scaler
        if scaler is None or not scaler.is_enabled():
            return 1.0
        return float(scaler.scale(torch.ones((), device=loss.device)).item())

    def _inner_params(self, params: list[Tensor]) -> list[_backends.InnerParam]:
        """The optimised parameters with the inner step's hyper-parameters, read now."""
        index = {id(p): i for i, p in enumerate(params)}
        out: list[_backends.InnerParam] = []
        seen: set[int] = set()
        for group in self.optimizer.param_groups:
            lr = _as_float(group["lr"]) if self.inner_lr is None else self.inner_lr
            wd = (
                _as_float(group.get("weight_decay", 0.0))
                if self.inner_weight_decay is None
                else self.inner_weight_decay
            )
            eps = _as_float(group.get("eps", 1e-8)) if self.inner_eps is None else self.inner_eps
            betas = tuple(_as_float(b) for b in group.get("betas", (0.9, 0.999)))
            root = self.inner_eps_root if self.inner_optimizer == "adam" else 0.0
            if root > 0 and self.backend == "higher" and betas[1] <= 0:
                raise ValueError(
                    "backend='higher' reaches inner_eps_root through Adam's second moment "
                    f"and needs beta2 > 0; param group has betas={tuple(betas)}; use "
                    "backend='func' or inner_eps_root=0"
                )
            for p in group["params"]:
                if id(p) not in index or id(p) in seen:
                    continue  # frozen, or listed twice
                seen.add(id(p))
                state: dict[str, Any] = {}
                if self.inner_state == "continue":
                    state = self.optimizer.state.get(p, {})
                out.append(
                    _backends.InnerParam(
                        index[id(p)], lr, wd, eps, root, (betas[0], betas[1]), state
                    )
                )
        return out

    def _check_batches(self, batches: Sequence[Any], meta_test: int | None) -> None:
        if isinstance(batches, str | bytes) or not isinstance(batches, Sequence):
            raise TypeError(
                "batches must be a sequence (list or tuple) with one mini-batch per source "
                f"domain, got {type(batches).__name__}"
            )
        if len(batches) < 2:
            raise ValueError(
                "batches must hold at least two source domains (one meta-train, one "
                f"meta-test), got {len(batches)}"
            )
        if meta_test is not None:
            if isinstance(meta_test, bool) or not isinstance(meta_test, int):
                raise TypeError(f"meta_test must be an int or None, got {meta_test!r}")
            if not 0 <= meta_test < len(batches):
                raise ValueError(
                    f"meta_test must be a domain index in [0, {len(batches)}), got {meta_test}"
                )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={type(self.model).__name__}, "
            f"optimizer={type(self.optimizer).__name__}, inner_lr={self.inner_lr}, "
            f"inner_optimizer={self.inner_optimizer!r}, inner_state={self.inner_state!r}, "
            f"inner_weight_decay={self.inner_weight_decay}, inner_eps={self.inner_eps}, "
            f"inner_eps_root={self.inner_eps_root}, meta_test_grad={self.meta_test_grad!r}, "
            f"meta_test_bn_stats={self.meta_test_bn_stats!r}, backend={self.backend!r})"
        )


def _refuse_aliases(model: nn.Module) -> None:
    """Raise for a model that registers a submodule or a parameter under two names.

    ``torch.func.functional_call`` does not put such aliases back after the call (a known
    torch issue): the model would be left computing with stale tensors.
    """
    seen: dict[int, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if module is model:
            continue
        first = seen.setdefault(id(module), name)
        if first != name:
            raise ValueError(
                f"backend='func' cannot run a model that registers one submodule under two "
                f"names ({first!r} and {name!r}): torch.func.functional_call does not "
                "restore such aliases; use backend='higher' or register the module once"
            )
    seen.clear()
    for name, p in model.named_parameters(remove_duplicate=False):
        first = seen.setdefault(id(p), name)
        if first != name:
            raise ValueError(
                f"backend='func' cannot run a model that registers one parameter under two "
                f"names ({first!r} and {name!r}, tied weights): use backend='higher'"
            )


def _summed(acc: list[Tensor | None], part: Sequence[Tensor | None]) -> list[Tensor | None]:
    """``acc + part`` entry by entry, ``None`` as zero."""
    return [a if b is None else b if a is None else a + b for a, b in zip(acc, part, strict=True)]


def _accumulate(p: Tensor, g: Tensor) -> None:
    """``p.grad += g`` (``p.grad = g`` when there is none yet), as ``Tensor.backward`` does."""
    if p.grad is None:
        p.grad = g
    else:
        p.grad.add_(g)


def _checked_transform(fn: GradTransform, grads: list[Tensor | None]) -> list[Tensor | None]:
    """``fn(grads)`` after checking that it kept the number, the ``None`` s and the shapes."""
    out = fn(list(grads))
    if isinstance(out, Tensor) or not isinstance(out, Sequence) or len(out) != len(grads):
        raise ValueError(
            f"grad_transform must return a sequence of {len(grads)} gradients (one per "
            f"trainable parameter), got {type(out).__name__}"
            + (f" of length {len(out)}" if isinstance(out, Sequence) else "")
        )
    for i, (g, t) in enumerate(zip(grads, out, strict=True)):
        if (g is None) != (t is None) or (
            g is not None and (not isinstance(t, Tensor) or t.shape != g.shape)
        ):
            got = "None" if t is None else getattr(t, "shape", type(t).__name__)
            want = "None" if g is None else f"a tensor of shape {tuple(g.shape)}"
            raise ValueError(f"grad_transform returned {got} for gradient {i}; expected {want}")
    return list(out)


def _split_output(out: Any) -> tuple[Any, Any]:
    """``(loss, aux)`` from what ``loss_fn`` returned (a loss alone gives ``aux=None``)."""
    if isinstance(out, tuple) and len(out) == 2:
        return out[0], out[1]
    return out, None


def _detach_tree(value: Any) -> Any:
    """``value`` with every tensor inside dicts, lists and tuples detached."""
    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, dict):
        return {k: _detach_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_detach_tree(v) for v in value]
    if isinstance(value, tuple):
        items = [_detach_tree(v) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    return value


def _check_loss(loss: Any, domain: int, phase: str, graph: bool = True) -> Tensor:
    phase = str(phase)
    if not isinstance(loss, Tensor):
        raise TypeError(
            f"loss_fn must return a scalar Tensor or (loss, aux); for domain {domain} in "
            f"phase {phase!r} it returned {type(loss).__name__}"
        )
    if loss.numel() != 1 or not loss.is_floating_point():
        raise ValueError(
            f"loss_fn must return a floating-point scalar Tensor; for domain {domain} in "
            f"phase {phase!r} it returned shape {tuple(loss.shape)}, dtype {loss.dtype}"
        )
    if graph and phase == "meta_train" and not loss.requires_grad:
        raise ValueError(
            f"the loss of domain {domain} in phase 'meta_train' does not require grad: "
            "it must be computed from the model's output without torch.no_grad or detach"
        )
    return loss.reshape(())


def _check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def _check_optional_number(
    name: str, value: object, *, minimum: float, strict: bool = False
) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number or None, got {value!r}")
    bad = (value <= minimum) if strict else (value < minimum)
    if bad or not math.isfinite(value):
        op = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {op} {minimum} or None, got {value!r}")


def _as_float(value: Any) -> float:
    return float(value.item()) if isinstance(value, Tensor) else float(value)
