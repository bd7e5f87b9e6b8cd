"""compute_distance and iter_distance_chunks against direct formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metareid.evaluation import compute_distance, iter_distance_chunks


def test_squared_euclidean_matches_the_direct_formula():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 5, generator=gen), torch.randn(9, 5, generator=gen)
    expected = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    torch.testing.assert_close(compute_distance(x, y), expected, rtol=1e-5, atol=1e-5)


def test_cosine_matches_the_direct_formula():
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 4, generator=gen), torch.randn(8, 4, generator=gen)
    expected = (
        1.0 - torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(y, dim=1).T
    )
    torch.testing.assert_close(
        compute_distance(x, y, metric="cosine"), expected, rtol=1e-5, atol=1e-6
    )


def test_euclidean_does_not_normalise_the_features():
    x = torch.tensor([[3.0, 4.0]])
    assert compute_distance(x, torch.zeros(1, 2)).item() == 25.0


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_chunking_does_not_change_the_values(metric):
    # integer-valued features: every product is exact, so any chunking gives the same bits
    gen = torch.Generator().manual_seed(2)
    x = torch.randint(-3, 4, (23, 6), generator=gen).float()
    y = torch.randint(-3, 4, (17, 6), generator=gen).float()
    x[0] = 0.0  # a zero vector: cosine clamps its norm
    full = compute_distance(x, y, metric=metric, chunk_size=100)
    for size in (1, 5, 23):
        assert torch.equal(compute_distance(x, y, metric=metric, chunk_size=size), full)
        chunks = list(iter_distance_chunks(x, y, metric=metric, chunk_size=size))
        assert [start for start, _ in chunks] == list(range(0, 23, size))
        assert torch.equal(torch.cat([c for _, c in chunks]), full)


def test_numpy_and_float64_inputs():
    x = np.array([[1.0, 2.0]])
    out = compute_distance(x, x.astype(np.float32))
    assert out.dtype == torch.float64 and out.item() == 0.0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"metric": "l1"},
            ValueError,
            r"metric must be one of \['cosine', 'euclidean'\], got 'l1'",
        ),
        ({"chunk_size": 0}, ValueError, r"chunk_size must be an int >= 1, got 0"),
        ({"y": torch.zeros(3, 5)}, ValueError, r"y must have 4 columns .* got shape \(3, 5\)"),
        ({"x": torch.zeros(4)}, ValueError, r"x must be a 2-D .* got shape \(4,\)"),
        ({"x": torch.zeros(2, 4, dtype=torch.int64)}, TypeError, r"x must be a 2-D floating"),
        ({"x": torch.full((2, 4), float("nan"))}, ValueError, r"x must be finite"),
        ({"y": torch.zeros(0, 4)}, ValueError, r"y must have N, D >= 1"),
    ],
)
def test_bad_input_raises_naming_the_argument(kwargs, error, match):
    args = {"x": torch.ones(2, 4), "y": torch.ones(3, 4)} | kwargs
    with pytest.raises(error, match=match):
        compute_distance(**args)
    with pytest.raises(error, match=match):
        next(iter_distance_chunks(**args))
