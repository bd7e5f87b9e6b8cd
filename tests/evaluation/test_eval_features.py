"""evaluate_features (streamed) against evaluate_rank on the full distance matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metareid.evaluation import (
    compute_distance,
    evaluate_features,
    evaluate_rank,
    k_reciprocal_rerank,
)


def make_case(seed, num_q=37, num_g=90, dim=8, num_ids=7, integer=True):
    rng = np.random.default_rng(seed)
    if integer:  # exact products: chunked and full distances agree bit for bit
        qf = torch.from_numpy(rng.integers(-2, 3, (num_q, dim)).astype(np.float32))
        gf = torch.from_numpy(rng.integers(-2, 3, (num_g, dim)).astype(np.float32))
    else:
        qf = torch.from_numpy(rng.standard_normal((num_q, dim)).astype(np.float32))
        gf = torch.from_numpy(rng.standard_normal((num_g, dim)).astype(np.float32))
    ids = (
        rng.integers(0, num_ids, num_q),
        rng.integers(0, num_ids, num_g),
        rng.integers(0, 3, num_q),
        rng.integers(0, 3, num_g),
    )
    return qf, gf, ids


def assert_identical(a, b):
    np.testing.assert_array_equal(a.cmc, b.cmc)
    assert (a.mAP, a.mINP, a.num_valid, a.num_skipped) == (
        b.mAP,
        b.mINP,
        b.num_valid,
        b.num_skipped,
    )


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("chunk_size", [1, 4, 37, 256])
def test_streamed_equals_full_matrix(metric, chunk_size):
    qf, gf, ids = make_case(0)
    full = evaluate_rank(compute_distance(qf, gf, metric=metric), *ids, max_rank=10)
    streamed = evaluate_features(qf, gf, *ids, metric=metric, max_rank=10, chunk_size=chunk_size)
    assert_identical(streamed, full)


def test_streamed_equals_full_matrix_on_random_float_features():
    # real-valued features: BLAS may round chunk products differently, so compare closely
    qf, gf, ids = make_case(1, integer=False)
    full = evaluate_rank(compute_distance(qf, gf), *ids)
    streamed = evaluate_features(qf, gf, *ids, chunk_size=5)
    np.testing.assert_allclose(streamed.cmc, full.cmc)
    assert streamed.mAP == pytest.approx(full.mAP, rel=1e-9)


def test_cuhk03_protocol_streamed_equals_full_matrix():
    qf, gf, ids = make_case(2)
    full = evaluate_rank(compute_distance(qf, gf), *ids, protocol="cuhk03", seed=3, max_rank=5)
    streamed = evaluate_features(qf, gf, *ids, protocol="cuhk03", seed=3, max_rank=5, chunk_size=6)
    assert_identical(streamed, full)


def test_rerank_option_equals_ranking_the_reranked_matrix():
    qf, gf, ids = make_case(3, num_q=12, num_g=40)
    reranked = k_reciprocal_rerank(qf, gf, k1=5, k2=3, lambda_value=0.4)
    full = evaluate_rank(reranked, *ids, max_rank=5)
    streamed = evaluate_features(
        qf, gf, *ids, max_rank=5, rerank=True, k1=5, k2=3, lambda_value=0.4, chunk_size=5
    )
    assert_identical(streamed, full)


def test_numpy_features_and_inputs_unchanged():
    qf, gf, ids = make_case(4)
    q_np, g_np = qf.numpy().copy(), gf.numpy().copy()
    a = evaluate_features(q_np, g_np, *ids)
    b = evaluate_features(qf, gf, *ids)
    assert_identical(a, b)
    np.testing.assert_array_equal(q_np, qf.numpy())
    np.testing.assert_array_equal(g_np, gf.numpy())


GOOD = {
    "query_feats": torch.ones(2, 3),
    "gallery_feats": torch.ones(4, 3),
    "q_pids": [1, 2],
    "g_pids": [1, 2, 1, 2],
    "q_camids": [0, 0],
    "g_camids": [1, 1, 1, 1],
}


@pytest.mark.parametrize(
    ("name", "value", "error", "match"),
    [
        ("gallery_feats", torch.ones(4, 2), ValueError, r"gallery_feats must have 3 columns"),
        ("query_feats", torch.ones(3), ValueError, r"query_feats must be a 2-D"),
        ("query_feats", torch.tensor([[1.0, float("inf"), 0.0]] * 2), ValueError, "finite"),
        ("query_feats", torch.full((2, 3), 1e30), ValueError, "too large for torch.float32"),
        ("g_pids", [1, 2], ValueError, r"g_pids must have length 4"),
        ("metric", "manhattan", ValueError, r"metric must be one of"),
        ("chunk_size", 0, ValueError, r"chunk_size must be an int >= 1, got 0"),
        ("max_rank", -3, ValueError, r"max_rank must be an int >= 1, got -3"),
        ("protocol", "viper", ValueError, r"protocol must be one of"),
        ("rerank", 1, TypeError, r"rerank must be a bool, got int 1"),
        ("k1", 0, ValueError, r"k1 must be an int >= 1, got 0"),
        ("k2", 0, ValueError, r"k2 must be an int >= 1, got 0"),
        ("lambda_value", 1.5, ValueError, r"lambda_value must be a real number in \[0, 1\]"),
    ],
)
def test_bad_input_raises_naming_the_argument(name, value, error, match):
    with pytest.raises(error, match=match):
        evaluate_features(**dict(GOOD, **{name: value}))
    assert torch.equal(GOOD["query_feats"], torch.ones(2, 3))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("protocol", ["market", "cuhk03"])
def test_cuda_features_match_cpu(protocol):
    qf, gf, ids = make_case(6)
    cpu = evaluate_features(qf, gf, *ids, protocol=protocol, max_rank=10, chunk_size=7)
    gpu = evaluate_features(
        qf.cuda(), gf.cuda(), *ids, protocol=protocol, max_rank=10, chunk_size=7
    )
    assert_identical(gpu, cpu)
    dist = compute_distance(qf, gf)
    assert_identical(
        evaluate_rank(dist.cuda(), *ids, max_rank=10), evaluate_rank(dist, *ids, max_rank=10)
    )
    rr_cpu = evaluate_features(qf, gf, *ids, rerank=True, k1=5, k2=3)
    rr_gpu = evaluate_features(qf.cuda(), gf.cuda(), *ids, rerank=True, k1=5, k2=3)
    np.testing.assert_allclose(rr_gpu.cmc, rr_cpu.cmc)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "grad"])
def test_works_under_no_grad_inference_mode_and_with_grad_features(mode):
    qf, gf, ids = make_case(7)
    expected = evaluate_features(qf, gf, *ids, max_rank=5)
    if mode == "grad":
        got = evaluate_features(qf.requires_grad_(), gf, *ids, max_rank=5)
    else:
        context = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
        with context:
            got = evaluate_features(qf, gf, *ids, max_rank=5, rerank=False)
            evaluate_features(qf, gf, *ids, max_rank=5, rerank=True, k1=4, k2=2)
            evaluate_rank(compute_distance(qf, gf), *ids, max_rank=5, protocol="cuhk03")
    assert_identical(got, expected)
