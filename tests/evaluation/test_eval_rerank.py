"""k-reciprocal re-ranking against a dense, loop-based transcription of the published algorithm."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metareid.evaluation import KReciprocalReranker, k_reciprocal_rerank


def dense_rerank(qf, gf, k1, k2, lam, metric="euclidean"):
    """Step by step on the dense (N, N) matrices, stable argsort for the neighbour ranks."""
    x = np.concatenate([qf, gf]).astype(np.float32)
    n, nq = x.shape[0], qf.shape[0]
    if metric == "euclidean":
        sq = (x * x).sum(1)
        d = (sq[:, None] + sq[None, :] - 2 * x @ x.T).astype(np.float32)
    else:
        unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        d = (1 - unit @ unit.T).astype(np.float32)
    d = np.transpose(d / np.max(d, axis=0))  # column max, as the published code
    rank = np.argsort(d, axis=1, kind="stable")
    half = int(np.around(k1 / 2.0))
    v = np.zeros_like(d)
    for i in range(n):
        forward = rank[i, : k1 + 1]
        recip = forward[np.where(rank[forward, : k1 + 1] == i)[0]]
        expansion = recip
        for c in recip:
            c_forward = rank[c, : half + 1]
            c_recip = c_forward[np.where(rank[c_forward, : half + 1] == c)[0]]
            if len(np.intersect1d(c_recip, recip)) > 2.0 / 3 * len(c_recip):
                expansion = np.append(expansion, c_recip)
        expansion = np.unique(expansion)
        weight = np.exp(-d[i, expansion])
        v[i, expansion] = weight / np.sum(weight)
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(0) for i in range(n)])
    jaccard = np.zeros((nq, n), np.float32)
    for i in range(nq):
        overlap = np.minimum(v[i][None, :], v).sum(1)
        jaccard[i] = 1 - overlap / (2 - overlap)
    return (jaccard * (1 - lam) + d[:nq] * lam)[:, nq:]


@pytest.mark.parametrize("seed", range(12))
def test_matches_dense_reference_on_exact_features(seed):
    # small integer features: distances are exact, ties are frequent (tie rule exercised)
    rng = np.random.default_rng(seed)
    nq, ng, dim = int(rng.integers(1, 12)), int(rng.integers(2, 50)), int(rng.integers(2, 6))
    k1, k2 = int(rng.integers(1, 12)), int(rng.integers(1, 8))
    qf = rng.integers(-3, 4, (nq, dim)).astype(np.float32)
    gf = rng.integers(-3, 4, (ng, dim)).astype(np.float32)
    expected = dense_rerank(qf, gf, k1, k2, 0.3)
    got = k_reciprocal_rerank(
        torch.from_numpy(qf), torch.from_numpy(gf), k1=k1, k2=k2, chunk_size=int(rng.integers(1, 9))
    )
    # documented deviation: float32 sums in another order (a few units in the last place)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_matches_dense_reference_on_random_features_with_default_k(metric):
    rng = np.random.default_rng(42)
    qf = rng.standard_normal((15, 8)).astype(np.float32)
    gf = rng.standard_normal((70, 8)).astype(np.float32)
    expected = dense_rerank(qf, gf, 20, 6, 0.3, metric=metric)
    got = k_reciprocal_rerank(torch.from_numpy(qf), torch.from_numpy(gf), metric=metric)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=2e-6)


def test_lambda_one_gives_the_normalised_original_distance():
    gen = torch.Generator().manual_seed(0)
    qf, gf = torch.randn(4, 3, generator=gen), torch.randn(9, 3, generator=gen)
    got = k_reciprocal_rerank(qf, gf, k1=3, k2=2, lambda_value=1.0)
    x = torch.cat([qf, gf])
    d = torch.cdist(x, x) ** 2
    expected = (d / d.max(1, keepdim=True).values)[:4, 4:]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_streamed_rows_equal_the_full_matrix_and_memory_is_sparse():
    rng = np.random.default_rng(5)
    qf = torch.from_numpy(rng.integers(-3, 4, (10, 4)).astype(np.float32))
    gf = torch.from_numpy(rng.integers(-3, 4, (60, 4)).astype(np.float32))
    reranker = KReciprocalReranker(qf, gf, k1=6, k2=3, chunk_size=7)
    full = k_reciprocal_rerank(qf, gf, k1=6, k2=3)
    assert torch.equal(torch.cat([reranker.rows(0, 3), reranker.rows(3, 10)]), full)
    assert reranker.neighbours.shape == (70, 7)  # max(k1 + 1, k2) neighbours per sample
    _, cols, _ = reranker._vectors
    assert cols.numel() <= 70 * 7 * (1 + 7 * 4) * 3  # bounded by N * k1 * k2, not N^2


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"k1": 0}, ValueError, r"k1 must be an int >= 1, got 0"),
        ({"k2": 1.5}, TypeError, r"k2 must be an int >= 1"),
        ({"lambda_value": -0.1}, ValueError, r"lambda_value must be a real number in \[0, 1\]"),
        ({"metric": "l2"}, ValueError, r"metric must be one of"),
        ({"chunk_size": 0}, ValueError, r"chunk_size must be an int >= 1, got 0"),
        ({"gallery_feats": torch.ones(3, 2)}, ValueError, r"gallery_feats must have 4 columns"),
        ({"query_feats": torch.ones(2, 4)}, ValueError, r"distance <= 0 from every sample"),
    ],
)
def test_bad_input_raises_naming_the_argument(kwargs, error, match):
    args = {"query_feats": torch.eye(4)[:2], "gallery_feats": torch.ones(3, 4)} | kwargs
    with pytest.raises(error, match=match):
        k_reciprocal_rerank(**args)


def test_rows_out_of_range():
    reranker = KReciprocalReranker(torch.eye(3)[:2], torch.eye(3), k1=2, k2=1)
    with pytest.raises(ValueError, match=r"0 <= start < stop <= 2, got start=1, stop=3"):
        reranker.rows(1, 3)
