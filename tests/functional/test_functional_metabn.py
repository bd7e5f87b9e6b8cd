"""Tests for metareid.functional.metabn_mix / metabn_mixtures (Eqs. 5-7)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from metareid.functional import metabn_mix, metabn_mixtures

B, C, K = 6, 3, 2


def _inputs(dtype: torch.dtype = torch.float64, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, generator=gen, dtype=dtype)
    means = torch.randn(K, C, generator=gen, dtype=dtype)
    variances = torch.rand(K, C, generator=gen, dtype=dtype) + 0.5
    return x, means, variances


def test_mixtures_follow_eqs_5_and_6_with_fixed_draws() -> None:
    x, means, variances = _inputs()
    noise = torch.randn(K, B, C, dtype=torch.float64)
    lambdas = torch.tensor([0.3, 0.8], dtype=torch.float64)
    for scale_name, scale in (("std", variances.sqrt()), ("var", variances)):
        out = metabn_mixtures(x, means, variances, scale_name, noise=noise, lambdas=lambdas)
        for i in range(K):
            z = means[i] + scale[i] * noise[i]
            torch.testing.assert_close(out[i], lambdas[i] * x + (1 - lambdas[i]) * z)


def test_mix_normalises_each_mixture_as_eq_7() -> None:
    x, means, variances = _inputs()
    noise = torch.randn(K, B, C, dtype=torch.float64)
    lambdas = torch.tensor([0.5], dtype=torch.float64)
    weight = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    bias = torch.tensor([0.0, -1.0, 3.0], dtype=torch.float64)
    out = metabn_mix(x, means, variances, weight, bias, 1e-5, noise=noise, lambdas=lambdas)
    mixtures = metabn_mixtures(x, means, variances, noise=noise, lambdas=lambdas)
    assert out.shape == (K * B, C)
    for i in range(K):
        expected = torch.nn.functional.batch_norm(
            mixtures[i], None, None, weight, bias, training=True, eps=1e-5
        )
        torch.testing.assert_close(out[i * B : (i + 1) * B], expected)


def test_chunk_statistics_are_bias_and_weight_squared() -> None:
    x, means, variances = _inputs()
    weight = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    bias = torch.tensor([0.0, -1.0, 3.0], dtype=torch.float64)
    out = metabn_mix(x, means, variances, weight, bias, eps=1e-12)
    for chunk in out.split(B):
        torch.testing.assert_close(chunk.mean(0), bias)
        torch.testing.assert_close(chunk.var(0, unbiased=False), weight**2)


@pytest.mark.parametrize(("sample_scale", "expected_std"), [("std", 2.0), ("var", 4.0)])
def test_sample_scale_spread(sample_scale: str, expected_std: float) -> None:
    x = torch.zeros(4000, 2)
    means, variances = torch.tensor([[1.0, -1.0]]), torch.full((1, 2), 4.0)
    gen = torch.Generator().manual_seed(0)
    zero = torch.zeros(1)  # lambda = 0: the mixture is the sampled feature itself
    z = metabn_mixtures(x, means, variances, sample_scale, generator=gen, lambdas=zero)[0]
    torch.testing.assert_close(z.std(0), torch.full((2,), expected_std), rtol=0.05, atol=0)
    torch.testing.assert_close(z.mean(0), means[0], rtol=0, atol=0.1 * expected_std)


def test_generator_reproducible_and_draw_order() -> None:
    x, means, variances = _inputs(torch.float32)
    a = metabn_mix(x, means, variances, generator=torch.Generator().manual_seed(7))
    b = metabn_mix(x, means, variances, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    gen = torch.Generator().manual_seed(7)
    lambdas = torch.rand(1, generator=gen)  # documented order: lambdas, then noise
    noise = torch.randn(K, B, C, generator=gen)
    c = metabn_mix(x, means, variances, noise=noise, lambdas=lambdas)
    torch.testing.assert_close(a, c, rtol=0, atol=0)


@pytest.mark.parametrize(("share", "count"), [(True, 1), (False, K)])
def test_share_lambda(share: bool, count: int) -> None:
    x, means, variances = _inputs(torch.float32)
    gen = torch.Generator().manual_seed(3)
    lambdas = torch.rand(count, generator=gen)
    noise = torch.randn(K, B, C, generator=gen)
    expected = metabn_mixtures(x, means, variances, noise=noise, lambdas=lambdas)
    out = metabn_mixtures(
        x, means, variances, share_lambda=share, generator=torch.Generator().manual_seed(3)
    )
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_gradcheck_with_fixed_noise() -> None:
    x, means, variances = _inputs()
    noise = torch.randn(K, B, C, dtype=torch.float64)
    lambdas = torch.tensor([0.4, 0.7], dtype=torch.float64)
    weight = torch.rand(C, dtype=torch.float64, requires_grad=True)
    bias = torch.rand(C, dtype=torch.float64, requires_grad=True)
    x.requires_grad_(True)

    def fn(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        return metabn_mix(x, means, variances, weight, bias, noise=noise, lambdas=lambdas)

    assert torch.autograd.gradcheck(fn, (x, weight, bias))


def test_statistics_receive_no_gradient() -> None:
    x, means, variances = _inputs()
    x.requires_grad_(True)
    means.requires_grad_(True)
    variances.requires_grad_(True)
    metabn_mix(x, means, variances).sum().backward()
    assert x.grad is not None and means.grad is None and variances.grad is None


@pytest.mark.parametrize("sample_scale", ["std", "var"])
def test_zero_variance_and_constant_batch_stay_finite(sample_scale: str) -> None:
    x = torch.ones(B, C, requires_grad=True)  # constant meta-test batch
    means, variances = torch.ones(K, C), torch.zeros(K, C)  # constant meta-train batches
    out = metabn_mix(x, means, variances, sample_scale=sample_scale)
    out.sum().backward()
    assert x.grad is not None
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    tiny = torch.full((K, C), 1e-30)
    assert torch.isfinite(metabn_mix(x, means, tiny, sample_scale=sample_scale)).all()


def test_sampling_follows_input_dtype() -> None:
    x, means, variances = _inputs(torch.float64)
    assert metabn_mix(x, means.float(), variances.float()).dtype == torch.float64


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"x": torch.randn(1, C)}, ValueError, "at least 2 samples"),
        ({"x": torch.randn(B, C, 1)}, ValueError, r"x must have shape \(B, D\)"),
        ({"means": torch.randn(K, C + 1)}, ValueError, rf"means must have shape \(k, {C}\)"),
        ({"means": torch.randn(0, C)}, ValueError, "k >= 1"),
        ({"variances": torch.rand(K + 1, C)}, ValueError, "same shape"),
        ({"weight": torch.ones(C + 1)}, ValueError, rf"weight must have shape \({C},\)"),
        ({"bias": torch.ones(1, C)}, ValueError, "bias"),
        ({"eps": 0.0}, ValueError, "eps must be a finite real number > 0"),
        ({"sample_scale": "sigma"}, ValueError, r"sample_scale must be one of \['std', 'var'\]"),
        ({"share_lambda": 1}, TypeError, "share_lambda must be a bool"),
        ({"generator": 0}, TypeError, "generator must be a torch.Generator"),
        ({"noise": torch.randn(B, C)}, ValueError, rf"noise must have shape \({K}, {B}, {C}\)"),
        ({"lambdas": torch.rand(3)}, ValueError, "lambdas"),
    ],
)
def test_errors(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    x, means, variances = _inputs()
    args = {"x": x, "means": means, "variances": variances} | kwargs
    with pytest.raises(error, match=match):
        metabn_mix(**args)


def test_generator_on_another_device_is_rejected() -> None:
    x = torch.empty(B, C, device="meta")  # shapes only: the check runs before any draw
    stats = torch.empty(K, C, device="meta")
    with pytest.raises(
        ValueError, match=r"generator must live on the device of the input \(meta\)"
    ):
        metabn_mix(x, stats, stats, generator=torch.Generator())
