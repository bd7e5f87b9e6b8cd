"""MetaBN (Sec. 3.4 of the M3L paper): a BatchNorm1d that diversifies meta-test features."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from metareid._validation import check_choice, check_positive_finite
from metareid.functional.metabn import SAMPLE_SCALES, metabn_mix

__all__ = ["PHASES", "MetaBN", "metabn_phase", "mixture_count"]

#: Accepted values of :attr:`MetaBN.phase`.
PHASES = ("normal", "meta_train", "meta_test")


class MetaBN(nn.BatchNorm1d):
    """BatchNorm1d that mixes meta-train domain statistics into meta-test features.

    A drop-in subclass of :class:`torch.nn.BatchNorm1d` (same parameters, buffers,
    ``state_dict`` keys and ``isinstance`` behaviour) for inputs of shape (B, C). M3L puts it
    in place of the last BN, the BNNeck. What it does depends on :attr:`phase`:

    * ``"normal"`` (default), and every phase in eval mode: exactly ``nn.BatchNorm1d``.
    * ``"meta_train"`` (train mode): ``nn.BatchNorm1d`` in train mode, and the detached
      batch mean and biased batch variance, each of shape (C,), are appended to
      :attr:`domain_stats`, one entry per call.
    * ``"meta_test"`` (train mode): for each of the k recorded domains, samples
      ``z ~ N(mu_i, sigma_i)`` (Eq. 5), mixes ``F_i = lambda * x + (1 - lambda) * Z_i`` with
      ``lambda ~ Beta(1, 1)`` (Eq. 6) and normalises every mixture with its own batch
      statistics and this layer's weight and bias (Eq. 7), see
      :func:`metareid.functional.metabn_mix`. Returns the k results stacked along the
      batch, shape (k * B, C), so the labels become ``labels.repeat(k)``. Running
      statistics are not touched. The gradient reaches the input, weight and bias, not the
      recorded statistics.

    Recorded statistics accumulate until :meth:`clear_stats` is called (at the start of every
    meta-learning iteration). Phases are usually set with :func:`metabn_phase`;
    :func:`mixture_count` tells a loss how many rows per sample a model returns now.

    Code that runs one batch in several chunks (:mod:`metareid.engine.chunks`) reads and
    replaces :attr:`domain_stats` and :attr:`generator` around each chunk's forward; the
    layer itself knows nothing of chunks or ranks.

    Args:
        num_features: C, the number of channels.
        eps: added to the variance, finite and > 0. Default 1e-5.
        momentum: running-statistics momentum, or ``None`` for a cumulative average.
            Default 0.1 (as nn.BatchNorm1d).
        affine: learn a weight and bias. Default ``True``.
        track_running_stats: keep running statistics. Default ``True``.
        sample_scale: scale of the Eq. 5 draws. ``"std"`` (default, the paper) samples with
            standard deviation ``sqrt(var_i)``; ``"var"`` uses ``var_i`` as the standard
            deviation, as the published code does. Neither raises for a zero variance, where
            the published code's ``torch.distributions.Normal`` crashes.
        share_lambda: draw one lambda shared by the k mixtures of a call (default ``True``,
            the published code) or one per mixture (``False``).
        generator: ``torch.Generator`` on the device of the inputs used for the meta-test
            draws, or ``None`` (default) for torch's global generator. Also settable later
            through the :attr:`generator` attribute.
        device: device of the parameters and buffers.
        dtype: dtype of the parameters and buffers.

    Attributes:
        domain_stats: recorded ``(mean, var)`` pairs in call order; in ``"meta_test"`` the
            layer mixes with every entry. A list that may be read and replaced.
        generator: the random generator used in ``"meta_test"``.
        sample_scale: see above.
        share_lambda: see above.

    Example:
        >>> import torch
        >>> from metareid.layers import MetaBN, metabn_phase
        >>> bn = MetaBN(4, generator=torch.Generator().manual_seed(0))
        >>> with metabn_phase(bn, "meta_train"):
        ...     _ = bn(torch.randn(8, 4))  # meta-train domain 1
        ...     _ = bn(torch.randn(8, 4))  # meta-train domain 2
        >>> with metabn_phase(bn, "meta_test"):
        ...     out = bn(torch.randn(8, 4))
        >>> out.shape  # two mixtures of the 8 meta-test samples
        torch.Size([16, 4])
        >>> bn.clear_stats()
    """

    domain_stats: list[tuple[Tensor, Tensor]]
    generator: torch.Generator | None
    sample_scale: str
    share_lambda: bool

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        sample_scale: str = "std",
        share_lambda: bool = True,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        check_positive_finite("eps", eps)
        check_choice("sample_scale", sample_scale, SAMPLE_SCALES)
        if not isinstance(share_lambda, bool):
            raise TypeError(f"share_lambda must be a bool, got {share_lambda!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {generator!r}")
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype
        )
        self.sample_scale = sample_scale
        self.share_lambda = share_lambda
        self.generator = generator
        self.domain_stats = []
        self._phase = "normal"

    @property
    def phase(self) -> str:
        """``"normal"``, ``"meta_train"`` or ``"meta_test"``; see the class docstring."""
        return self._phase

    @phase.setter
    def phase(self, value: str) -> None:
        self._phase = check_choice("phase", value, PHASES)

    @classmethod
    def from_batchnorm(
        cls,
        bn: nn.BatchNorm1d,
        sample_scale: str = "std",
        share_lambda: bool = True,
        generator: torch.Generator | None = None,
    ) -> MetaBN:
        """Convert a BatchNorm1d into a MetaBN with the same configuration and state.

        Copies ``eps``, ``momentum``, ``affine``, ``track_running_stats``, the weight and
        bias (with their ``requires_grad`` flags), the running statistics,
        ``num_batches_tracked``, the device, the dtype and the train/eval mode. The result
        starts in phase ``"normal"`` and shares no storage with ``bn``.

        Args:
            bn: the layer to convert (a MetaBN is accepted too).
            sample_scale: see :class:`MetaBN`. Default ``"std"``.
            share_lambda: see :class:`MetaBN`. Default ``True``.
            generator: see :class:`MetaBN`. Default ``None``.

        Returns:
            The new MetaBN.

        Raises:
            TypeError: if ``bn`` is not an ``nn.BatchNorm1d``.

        Example:
            >>> import torch
            >>> from metareid.layers import MetaBN
            >>> bn = torch.nn.BatchNorm1d(16)
            >>> meta_bn = MetaBN.from_batchnorm(bn)
            >>> isinstance(meta_bn, torch.nn.BatchNorm1d), meta_bn.phase
            (True, 'normal')
        """
        if not isinstance(bn, nn.BatchNorm1d):
            raise TypeError(f"bn must be a torch.nn.BatchNorm1d, got {type(bn).__name__}")
        reference = bn.weight if bn.weight is not None else bn.running_mean
        new = cls(
            bn.num_features,
            eps=bn.eps,
            momentum=bn.momentum,
            affine=bn.affine,
            track_running_stats=bn.track_running_stats,
            sample_scale=sample_scale,
            share_lambda=share_lambda,
            generator=generator,
            device=None if reference is None else reference.device,
            dtype=None if reference is None else reference.dtype,
        )
        new.load_state_dict(bn.state_dict())
        if bn.weight is not None and bn.bias is not None:
            new.weight.requires_grad_(bn.weight.requires_grad)
            new.bias.requires_grad_(bn.bias.requires_grad)
        return new.train(bn.training)

    def to_batchnorm(self) -> nn.BatchNorm1d:
        """A plain ``nn.BatchNorm1d`` with this layer's configuration and state.

        Same parameters (values and ``requires_grad``), buffers, device, dtype and
        train/eval mode; no storage is shared. In eval mode, and in phase ``"normal"``, it
        computes what this layer computes. Used for the Table 3 ablations without MetaBN
        and for deployment.

        Example:
            >>> import torch
            >>> bn = MetaBN(4).to_batchnorm()
            >>> type(bn).__name__, bn.num_features
            ('BatchNorm1d', 4)
        """
        plain = nn.BatchNorm1d(
            self.num_features,
            eps=self.eps,
            momentum=self.momentum,
            affine=self.affine,
            track_running_stats=self.track_running_stats,
        )
        ref: Tensor | None = next(iter(self.parameters()), None)
        if ref is None:
            ref = self.running_mean
        if ref is not None:
            plain.to(ref.device, ref.dtype)
        plain.load_state_dict(self.state_dict())
        for name, param in plain.named_parameters():
            param.requires_grad_(getattr(self, name).requires_grad)
        return plain.train(self.training)

    def clear_stats(self) -> None:
        """Forget the recorded meta-train statistics, in place.

        The list is emptied rather than replaced, so copies of this module made by
        ``higher``'s monkeypatching, which share the list, see the change too.

        Example:
            >>> import torch
            >>> from metareid.layers import MetaBN
            >>> bn = MetaBN(2)
            >>> bn.phase = "meta_train"
            >>> _ = bn(torch.randn(4, 2))
            >>> len(bn.domain_stats)
            1
            >>> bn.clear_stats()
            >>> len(bn.domain_stats)
            0
        """
        self.domain_stats.clear()

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 2 or input.shape[1] != self.num_features:
            raise ValueError(
                f"MetaBN expects input of shape (B, {self.num_features}), "
                f"got shape {tuple(input.shape)}"
            )

    def forward(self, input: Tensor) -> Tensor:
        """Normalise ``input`` of shape (B, C) according to :attr:`phase`.

        Returns:
            Shape (B, C), or (k * B, C) in phase ``"meta_test"`` in train mode with k
            recorded domains.

        Raises:
            ValueError: if ``input`` does not have shape (B, C).
            RuntimeError: in phase ``"meta_test"`` (train mode) with no recorded statistics.
        """
        self._check_input_dim(input)
        if not self.training or self._phase == "normal":
            return super().forward(input)
        if self._phase == "meta_train":
            out = super().forward(input)
            with torch.no_grad():
                var, mean = torch.var_mean(input.detach(), dim=0, correction=0)
            self.domain_stats.append((mean, var))
            return out
        if not self.domain_stats:
            raise RuntimeError(
                "MetaBN is in phase 'meta_test' but has no recorded meta-train statistics: "
                "run the meta-train batches through the model in phase 'meta_train' first "
                "(e.g. inside metabn_phase(model, 'meta_train')), or let metareid.MetaLearner "
                "drive the phases"
            )
        means = torch.stack([mean for mean, _ in self.domain_stats])
        variances = torch.stack([var for _, var in self.domain_stats])
        return metabn_mix(
            input,
            means,
            variances,
            self.weight,
            self.bias,
            eps=self.eps,
            sample_scale=self.sample_scale,
            share_lambda=self.share_lambda,
            generator=self.generator,
        )

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, phase={self._phase!r}, "
            f"sample_scale={self.sample_scale!r}, share_lambda={self.share_lambda}"
        )


@contextmanager
def metabn_phase(module: nn.Module, phase: str) -> Iterator[nn.Module]:
    """Set the phase of every :class:`MetaBN` in ``module`` for the duration of a block.

    Covers ``module`` itself and all its submodules. On exit, including exit by an
    exception, each layer gets back the phase it had before. A module without any MetaBN is
    accepted and left as is (so that an ablation without MetaBN runs the same code).

    Args:
        module: the model, or a MetaBN.
        phase: ``"normal"``, ``"meta_train"`` or ``"meta_test"``.

    Yields:
        ``module``.

    Raises:
        ValueError: for an unknown phase (nothing is changed).

    Example:
        >>> import torch
        >>> from metareid.layers import MetaBN, metabn_phase
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), MetaBN(4))
        >>> with metabn_phase(model, "meta_train"):
        ...     model[1].phase
        'meta_train'
        >>> model[1].phase
        'normal'
    """
    check_choice("phase", phase, PHASES)
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    layers = [m for m in module.modules() if isinstance(m, MetaBN)]
    previous = [layer.phase for layer in layers]
    try:
        for layer in layers:
            layer.phase = phase
        yield module
    finally:
        for layer, old in zip(layers, previous, strict=True):
            layer.phase = old


def mixture_count(module: nn.Module) -> int:
    """How many rows per sample ``module`` returns now: its MetaBN mixtures, or 1.

    In train mode, a :class:`MetaBN` in phase ``"meta_test"`` returns one mixture per
    recorded meta-train domain (``k * B`` rows for ``B`` samples, mixture ``i`` in rows
    ``i * B`` to ``(i + 1) * B``); in every other phase, and in eval mode, it returns one row
    per sample. A loss function uses this to repeat its labels (``labels.repeat(k)``)
    instead of guessing ``k`` from the number of domains or from tensor shapes. A module
    without MetaBN returns 1.

    Args:
        module: the model (or its ``higher``-patched copy), or a MetaBN.

    Returns:
        ``k``: 1 unless a layer mixes (``k`` may be 1 for a mixing layer with one recorded
        domain: whether the features are mixtures is told by the phase, see
        :class:`metareid.Phase`; 0 before any meta-train forward, when the layer's forward
        raises).

    Raises:
        RuntimeError: several mixing MetaBN layers hold different numbers of recorded
            domains.

    Example:
        >>> import torch
        >>> from metareid.layers import MetaBN, metabn_phase, mixture_count
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), MetaBN(4))
        >>> with metabn_phase(model, "meta_train"):
        ...     _ = model(torch.randn(8, 4)); _ = model(torch.randn(8, 4))
        >>> with metabn_phase(model, "meta_test"):
        ...     mixture_count(model), model(torch.randn(8, 4)).shape
        (2, torch.Size([16, 4]))
        >>> mixture_count(model.eval())
        1
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    counts = {
        len(m.domain_stats)
        for m in module.modules()
        if isinstance(m, MetaBN) and m.training and m.phase == "meta_test"
    }
    if len(counts) > 1:
        raise RuntimeError(
            f"the MetaBN layers in phase 'meta_test' hold different numbers of recorded "
            f"meta-train domains {sorted(counts)}; every layer must see the same meta-train "
            "forwards"
        )
    return counts.pop() if counts else 1
