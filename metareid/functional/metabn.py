"""Meta-test feature mixing of MetaBN (Eqs. 5-7 of the M3L paper) as pure functions.

:func:`metabn_mixtures` draws the domain features and mixes them with the meta-test batch
(Eqs. 5-6); :func:`metabn_mix` also batch-normalises every mixture (Eq. 7) and is what
:class:`metareid.MetaBN` runs in its ``"meta_test"`` phase.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metareid._validation import check_choice, check_features, check_positive_finite

__all__ = ["SAMPLE_SCALES", "metabn_mix", "metabn_mixtures"]

#: Accepted values of the ``sample_scale`` argument.
SAMPLE_SCALES = ("std", "var")


def _check_stats(x: Tensor, means: Tensor, variances: Tensor) -> None:
    channels = x.shape[1]
    for name, stats in (("means", means), ("variances", variances)):
        if not isinstance(stats, Tensor):
            raise TypeError(
                f"{name} must be a torch.Tensor of shape (k, {channels}), got {stats!r}"
            )
        if stats.dim() != 2 or stats.shape[0] == 0 or stats.shape[1] != channels:
            raise ValueError(
                f"{name} must have shape (k, {channels}) with k >= 1 recorded domains, "
                f"got shape {tuple(stats.shape)}"
            )
    if means.shape != variances.shape:
        raise ValueError(
            f"means and variances must have the same shape (k, C), got {tuple(means.shape)} "
            f"and {tuple(variances.shape)}"
        )


def _check_optional_shape(
    name: str, value: Tensor | None, shapes: tuple[tuple[int, ...], ...]
) -> None:
    if value is None:
        return
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {value!r}")
    if tuple(value.shape) not in shapes:
        expected = " or ".join(str(s) for s in shapes)
        raise ValueError(f"{name} must have shape {expected}, got shape {tuple(value.shape)}")


def _check_generator(generator: torch.Generator | None, x: Tensor) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {generator!r}")
    if torch.device(generator.device).type != x.device.type:
        raise ValueError(
            f"generator must live on the device of the input ({x.device}), "
            f"got a generator on {generator.device}"
        )


def metabn_mixtures(
    x: Tensor,
    means: Tensor,
    variances: Tensor,
    sample_scale: str = "std",
    share_lambda: bool = True,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    lambdas: Tensor | None = None,
) -> Tensor:
    """Mix a meta-test batch with features drawn from k meta-train domains (Eqs. 5-6).

    For every recorded domain i, draws ``Z_i = mu_i + s_i * N(0, 1)`` of shape (B, C)
    (Eq. 5, reparametrised) and returns ``F_i = lambda_i * x + (1 - lambda_i) * Z_i``
    (Eq. 6) with ``lambda_i ~ Beta(1, 1)``, i.e. Uniform(0, 1).

    The scale ``s_i`` is ``sqrt(var_i)`` for ``sample_scale="std"`` (the paper's
    ``N(mu_i, sigma_i)``, default) or ``var_i`` itself for ``sample_scale="var"`` (the
    published code, which passes the variance where torch expects a standard deviation).
    Variances are clamped at 0, and a zero scale simply gives ``Z_i = mu_i``: unlike
    ``torch.distributions.Normal`` in the published code, nothing raises for a channel with
    zero variance.

    The statistics are treated as constants (detached) and cast to the dtype and device of
    ``x``; the gradient reaches ``x`` only. Random draws use ``generator`` on the device and
    in the dtype of ``x``: first the lambdas (1 value, or k with ``share_lambda=False``),
    then the noise (k, B, C). ``noise`` and ``lambdas`` replace those draws when given.

    Args:
        x: meta-test features, shape (B, C).
        means: batch means of the k meta-train domains, shape (k, C).
        variances: biased batch variances of the k domains, shape (k, C).
        sample_scale: ``"std"`` (default, paper) or ``"var"`` (published code).
        share_lambda: draw one lambda shared by the k mixtures (default, published code) or
            one per mixture.
        generator: random generator on the device of ``x``; ``None`` (default) uses torch's
            global generator.
        noise: standard-normal draws to use instead of sampling, shape (k, B, C).
        lambdas: mixing coefficients to use instead of sampling, shape (k,) or (1,).

    Returns:
        The mixtures ``F_i`` before normalisation, shape (k, B, C).

    Raises:
        ValueError: for a bad shape, an unknown ``sample_scale`` or a generator on another
            device.
        TypeError: for arguments of the wrong type.

    Example:
        >>> import torch
        >>> from metareid.functional import metabn_mixtures
        >>> x = torch.zeros(4, 2)
        >>> means, variances = torch.ones(1, 2), torch.zeros(1, 2)
        >>> metabn_mixtures(x, means, variances, lambdas=torch.tensor([0.25]))[0]
        tensor([[0.7500, 0.7500],
                [0.7500, 0.7500],
                [0.7500, 0.7500],
                [0.7500, 0.7500]])
    """
    check_features("x", x)
    _check_stats(x, means, variances)
    check_choice("sample_scale", sample_scale, SAMPLE_SCALES)
    if not isinstance(share_lambda, bool):
        raise TypeError(f"share_lambda must be a bool, got {share_lambda!r}")
    _check_generator(generator, x)
    num_domains, (batch, channels) = means.shape[0], x.shape
    _check_optional_shape("noise", noise, ((num_domains, batch, channels),))
    _check_optional_shape("lambdas", lambdas, ((num_domains,), (1,)))

    dtype, device = x.dtype, x.device
    means = means.detach().to(device=device, dtype=dtype)
    variances = variances.detach().to(device=device, dtype=dtype).clamp(min=0.0)
    scale = variances.sqrt() if sample_scale == "std" else variances
    if lambdas is None:
        num_lambdas = 1 if share_lambda else num_domains
        lambdas = torch.rand(num_lambdas, generator=generator, device=device, dtype=dtype)
    if noise is None:
        noise = torch.randn(
            num_domains, batch, channels, generator=generator, device=device, dtype=dtype
        )
    noise = noise.to(device=device, dtype=dtype)
    lam = lambdas.to(device=device, dtype=dtype).reshape(-1, 1, 1)
    sampled = means.unsqueeze(1) + scale.unsqueeze(1) * noise  # Eq. 5
    return lam * x.unsqueeze(0) + (1.0 - lam) * sampled  # Eq. 6


def metabn_mix(
    x: Tensor,
    means: Tensor,
    variances: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    sample_scale: str = "std",
    share_lambda: bool = True,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    lambdas: Tensor | None = None,
) -> Tensor:
    """MetaBN's meta-test output: mix, then batch-normalise every mixture (Eqs. 5-7).

    Builds the k mixtures of :func:`metabn_mixtures` and normalises each one with its own
    batch statistics (biased variance), ``f_i = weight * (F_i - mean(F_i)) /
    sqrt(var(F_i) + eps) + bias`` (Eq. 7). No running statistics are involved. The result
    stacks the k normalised mixtures along the batch, so the matching labels are
    ``labels.repeat(k)``. The published code additionally L2-normalises each output; that
    belongs to the model, not to this function.

    Args:
        x: meta-test features, shape (B, C) with B >= 2.
        means: batch means of the k meta-train domains, shape (k, C).
        variances: biased batch variances of the k domains, shape (k, C).
        weight: gamma, shape (C,), or ``None`` (default) for 1.
        bias: beta, shape (C,), or ``None`` (default) for 0.
        eps: added to the variance, finite and > 0. Default 1e-5 (as nn.BatchNorm1d).
        sample_scale: ``"std"`` (default, paper) or ``"var"`` (published code); see
            :func:`metabn_mixtures`.
        share_lambda: one lambda for all mixtures (default, published code) or one each.
        generator: random generator on the device of ``x``, or ``None`` (default).
        noise: standard-normal draws to use instead of sampling, shape (k, B, C).
        lambdas: mixing coefficients to use instead of sampling, shape (k,) or (1,).

    Returns:
        Shape (k * B, C); rows ``i * B`` to ``(i + 1) * B - 1`` come from domain i.

    Raises:
        ValueError: for a bad shape, a batch of one sample, a bad ``eps``, an unknown
            ``sample_scale`` or a generator on another device.
        TypeError: for arguments of the wrong type.

    Example:
        >>> import torch
        >>> from metareid.functional import metabn_mix
        >>> x = torch.randn(8, 3)
        >>> means, variances = torch.zeros(2, 3), torch.ones(2, 3)
        >>> metabn_mix(x, means, variances, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([16, 3])
    """
    check_features("x", x)
    if x.shape[0] < 2:
        raise ValueError(
            "x must hold at least 2 samples to be batch-normalised (Eq. 7), "
            f"got shape {tuple(x.shape)}"
        )
    check_positive_finite("eps", eps)
    channels = x.shape[1]
    _check_optional_shape("weight", weight, ((channels,),))
    _check_optional_shape("bias", bias, ((channels,),))

    mixtures = metabn_mixtures(
        x, means, variances, sample_scale, share_lambda, generator, noise, lambdas
    )
    var, mean = torch.var_mean(mixtures, dim=1, correction=0, keepdim=True)
    out = (mixtures - mean) * torch.rsqrt(var + eps)  # Eq. 7
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out.reshape(-1, channels)
