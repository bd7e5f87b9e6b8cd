"""evaluate_rank against per-query loops written the textbook way (stable argsort)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metareid.evaluation import RankResult, evaluate_rank
from metareid.evaluation._ranking import GalleryIndex, Workspace, positive_ranks


def reference_market(dist, q_pids, g_pids, q_camids, g_camids, max_rank):
    """Per-query loop: stable argsort, drop same id + camera, cumulative matches."""
    dist = np.asarray(dist, dtype=np.float64)
    cmcs, aps, inps = [], [], []
    for i in range(dist.shape[0]):
        order = np.argsort(dist[i], kind="stable")
        junk = (g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i])
        matches = (g_pids[order][~junk] == q_pids[i]).astype(np.int64)
        if not matches.any():
            continue
        hit = np.minimum(np.cumsum(matches), 1)
        cmc = np.ones(max_rank)
        cmc[: min(max_rank, hit.size)] = hit[:max_rank]
        cmcs.append(cmc)
        precision_at_hits = np.cumsum(matches) / np.arange(1, matches.size + 1)
        aps.append(float(np.sum(precision_at_hits * matches) / matches.sum()))
        last = np.flatnonzero(matches)[-1]
        inps.append(matches.sum() / (last + 1))
    num_valid = len(cmcs)
    if num_valid == 0:
        return None, None, None, 0, dist.shape[0]
    return np.mean(cmcs, 0), np.mean(aps), np.mean(inps), num_valid, dist.shape[0] - num_valid


def reference_ranks(dist, q_pids, g_pids, q_camids, g_camids):
    """0-based positions of each query's positives among its valid gallery entries."""
    out = []
    for i in range(dist.shape[0]):
        order = np.argsort(dist[i], kind="stable")
        keep = ~((g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i]))
        out.append(np.flatnonzero(g_pids[order][keep] == q_pids[i]))
    return out


def reference_cuhk03(dist, q_pids, g_pids, q_camids, g_camids, max_rank, num_repeats, seed):
    """Single-gallery-shot loop with the documented sampling (keys drawn for all pairs)."""
    num_q, num_g = dist.shape
    keys = [np.random.default_rng([seed, r]).random((num_q, num_g)) for r in range(num_repeats)]
    cmcs = []
    for i in range(num_q):
        valid = ~((g_pids == q_pids[i]) & (g_camids == q_camids[i]))
        if not (valid & (g_pids == q_pids[i])).any():
            continue
        cmc = np.zeros(max_rank)
        for r in range(num_repeats):
            kept = []
            for pid in np.unique(g_pids[valid]):
                members = np.flatnonzero(valid & (g_pids == pid))
                kept.append(members[np.argmax(keys[r][i, members])])
            kept = np.sort(np.array(kept))
            order = kept[np.argsort(dist[i, kept], kind="stable")]
            first = int(np.flatnonzero(g_pids[order] == q_pids[i])[0])
            cmc[first:] += 1.0
        cmcs.append(cmc / num_repeats)
    return np.mean(cmcs, 0)


def random_case(rng, num_q, num_g, num_ids, num_cams, integer):
    q_pids = rng.integers(0, num_ids, num_q)
    g_pids = rng.integers(0, num_ids, num_g)
    q_camids = rng.integers(0, num_cams, num_q)
    g_camids = rng.integers(0, num_cams, num_g)
    if integer:  # many exact ties
        dist = rng.integers(0, 4, (num_q, num_g)).astype(np.float32)
    else:
        dist = rng.random((num_q, num_g)).astype(np.float32)
    return dist, q_pids, g_pids, q_camids, g_camids


def assert_same(result, expected):
    cmc, mean_ap, mean_inp, num_valid, num_skipped = expected
    np.testing.assert_array_equal(result.cmc, cmc)
    assert result.mAP == pytest.approx(mean_ap, rel=1e-12, abs=1e-15)
    assert result.mINP == pytest.approx(mean_inp, rel=1e-12, abs=1e-15)
    assert (result.num_valid, result.num_skipped) == (num_valid, num_skipped)


@pytest.mark.parametrize("seed", range(40))
def test_market_matches_reference_loop_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    case = random_case(
        rng,
        int(rng.integers(1, 40)),
        int(rng.integers(1, 120)),
        int(rng.integers(1, 10)),
        int(rng.integers(1, 4)),
        integer=seed % 2 == 0,
    )
    expected = reference_market(*case, max_rank=12)
    if expected[3] == 0:
        with pytest.raises(ValueError, match="no query has a valid match"):
            evaluate_rank(*case, max_rank=12)
        return
    assert_same(evaluate_rank(*case, max_rank=12), expected)


@pytest.mark.parametrize("seed", range(10))
def test_positive_ranks_equal_stable_argsort_positions(seed):
    rng = np.random.default_rng(100 + seed)
    dist, q_pids, g_pids, q_camids, g_camids = random_case(rng, 30, 400, 6, 3, seed % 2 == 0)
    gallery = GalleryIndex(torch.from_numpy(g_pids), torch.from_numpy(g_camids))
    cols, is_pos, is_junk = gallery.same_id(torch.from_numpy(q_pids), torch.from_numpy(q_camids))
    t = torch.from_numpy(dist)
    ranks, npos = positive_ranks(t, cols, is_pos, is_junk, Workspace(400, t.dtype, t.device))
    for i, expected in enumerate(reference_ranks(dist, q_pids, g_pids, q_camids, g_camids)):
        assert int(npos[i]) == expected.size
        np.testing.assert_array_equal(ranks[i, : expected.size].numpy(), expected)


def test_many_blocks_and_worker_threads_give_the_same_result(monkeypatch):
    from metareid.evaluation import _ranking

    rng = np.random.default_rng(21)
    case = random_case(rng, 45, 300, 6, 3, integer=True)
    expected = reference_market(*case, max_rank=20)
    threads = torch.get_num_threads()
    monkeypatch.setattr(_ranking, "_BLOCK_ELEMENTS", 1000)  # 3 rows per block
    try:
        for workers in (1, 2, 3):
            torch.set_num_threads(workers)
            assert_same(evaluate_rank(*case, max_rank=20), expected)
            assert torch.get_num_threads() == workers  # restored after the worker threads
    finally:
        torch.set_num_threads(threads)


def test_hand_built_ties_go_to_the_lower_gallery_index():
    # query id 1, camera 0; gallery: all at the same distance
    dist = np.zeros((1, 4))
    g_pids = np.array([2, 1, 2, 1])
    g_camids = np.array([1, 1, 1, 1])
    result = evaluate_rank(dist, [1], g_pids, [0], g_camids, max_rank=4)
    # order 0, 1, 2, 3: positives at ranks 1 and 3
    np.testing.assert_array_equal(result.cmc, [0.0, 1.0, 1.0, 1.0])
    assert result.mAP == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert result.mINP == pytest.approx(2 / 4)


def test_hand_built_junk_removed_and_distractors_kept():
    # gallery: junk (same id + camera) closest, then a distractor (pid 0), then the match
    dist = np.array([[0.1, 0.2, 0.3, 0.4]])
    g_pids = np.array([5, 0, 5, 7])
    g_camids = np.array([2, 1, 3, 1])
    result = evaluate_rank(dist, [5], g_pids, [2], g_camids, max_rank=3)
    np.testing.assert_array_equal(result.cmc, [0.0, 1.0, 1.0])
    assert result.mAP == pytest.approx(0.5)
    assert result.mINP == pytest.approx(0.5)
    assert (result.num_valid, result.num_skipped) == (1, 0)


def test_query_without_match_is_skipped_and_counted():
    dist = np.array([[0.3, 0.1], [0.2, 0.9], [0.5, 0.5]])
    # query 1 only has a same-camera match (junk); query 2's id is absent
    result = evaluate_rank(dist, [1, 2, 3], [1, 2], [0, 1, 0], [1, 1], max_rank=2)
    assert (result.num_valid, result.num_skipped) == (1, 2)
    np.testing.assert_array_equal(result.cmc, [0.0, 1.0])


def test_all_queries_without_match_raise():
    with pytest.raises(ValueError, match="no query has a valid match"):
        evaluate_rank(np.ones((2, 2)), [1, 2], [3, 4], [0, 0], [1, 1])


def test_max_rank_larger_than_gallery_pads_with_the_final_value():
    result = evaluate_rank(np.array([[0.2, 0.1]]), [1], [1, 2], [0], [1, 1], max_rank=5)
    np.testing.assert_array_equal(result.cmc, [0.0, 1.0, 1.0, 1.0, 1.0])


@pytest.mark.parametrize(
    "convert",
    [
        lambda a: a,
        lambda a: torch.from_numpy(a),
        lambda a: torch.from_numpy(a).double(),
        lambda a: torch.from_numpy(a).half(),
        lambda a: torch.from_numpy(a).t().contiguous().t(),  # non-contiguous
    ],
)
def test_numpy_and_torch_inputs_give_the_same_result(convert):
    rng = np.random.default_rng(7)
    dist, q_pids, g_pids, q_camids, g_camids = random_case(rng, 20, 50, 5, 3, True)
    expected = evaluate_rank(dist, q_pids, g_pids, q_camids, g_camids)
    got = evaluate_rank(
        convert(dist),
        torch.from_numpy(q_pids),
        list(g_pids),
        torch.from_numpy(q_camids).int(),
        g_camids.astype(np.int16),
    )
    assert_same(got, tuple(expected))


def test_integer_distances_are_accepted():
    result = evaluate_rank(np.array([[2, 1]]), [1], [1, 2], [0], [1, 1], max_rank=2)
    np.testing.assert_array_equal(result.cmc, [0.0, 1.0])


def test_result_is_a_named_tuple():
    result = evaluate_rank(np.array([[0.1, 0.2]]), [1], [1, 2], [0], [1, 1], max_rank=2)
    assert isinstance(result, RankResult)
    cmc, mean_ap, mean_inp, num_valid, num_skipped = result
    assert isinstance(mean_ap, float) and isinstance(mean_inp, float)
    assert isinstance(num_valid, int) and isinstance(num_skipped, int)
    assert cmc.dtype == np.float64 and cmc.shape == (2,)


def test_inputs_are_not_modified():
    rng = np.random.default_rng(3)
    case = random_case(rng, 10, 30, 4, 2, False)
    copies = [np.copy(a) for a in case]
    tensor = torch.from_numpy(case[0].copy())
    evaluate_rank(tensor, *case[1:])
    evaluate_rank(*case)
    for before, after in zip(copies, case, strict=True):
        np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(tensor.numpy(), copies[0])


@pytest.mark.parametrize("seed", range(8))
def test_cuhk03_matches_reference_loop_with_the_same_seed_semantics(seed):
    rng = np.random.default_rng(200 + seed)
    case = random_case(rng, 15, 60, 6, 3, integer=seed % 2 == 0)
    if reference_market(*case, max_rank=8)[3] == 0:
        pytest.skip("no valid query in this draw")
    result = evaluate_rank(*case, max_rank=8, protocol="cuhk03", num_repeats=3, seed=seed)
    expected = reference_cuhk03(*case, max_rank=8, num_repeats=3, seed=seed)
    np.testing.assert_allclose(result.cmc, expected, rtol=1e-12, atol=1e-15)
    market = evaluate_rank(*case, max_rank=8)  # mAP/mINP: full valid gallery
    assert (result.mAP, result.mINP, result.num_valid) == (
        market.mAP,
        market.mINP,
        market.num_valid,
    )


def test_cuhk03_chunked_draws_equal_one_draw():
    # more than one chunk of queries: the key stream must continue across chunks
    from metareid.evaluation import rank as rank_module

    rng = np.random.default_rng(11)
    case = random_case(rng, 40, 30, 5, 2, integer=False)
    full = evaluate_rank(*case, max_rank=5, protocol="cuhk03", num_repeats=2, seed=4)
    old = rank_module._CUHK03_CHUNK_ELEMENTS
    try:
        rank_module._CUHK03_CHUNK_ELEMENTS = 7 * 30
        chunked = evaluate_rank(*case, max_rank=5, protocol="cuhk03", num_repeats=2, seed=4)
    finally:
        rank_module._CUHK03_CHUNK_ELEMENTS = old
    np.testing.assert_array_equal(full.cmc, chunked.cmc)


def test_cuhk03_single_shot_gallery_is_deterministic_given_the_seed():
    rng = np.random.default_rng(12)
    case = random_case(rng, 20, 80, 6, 3, integer=False)
    a = evaluate_rank(*case, protocol="cuhk03", seed=1, max_rank=6)
    b = evaluate_rank(*case, protocol="cuhk03", seed=1, max_rank=6)
    c = evaluate_rank(*case, protocol="cuhk03", seed=2, max_rank=6)
    np.testing.assert_array_equal(a.cmc, b.cmc)
    assert not np.array_equal(a.cmc, c.cmc)
    # one entry per id is easier than the full gallery: CMC at least the Market one
    market = evaluate_rank(*case, max_rank=6)
    assert np.all(a.cmc >= market.cmc - 1e-12)


GOOD = {
    "distmat": np.array([[0.1, 0.2]]),
    "q_pids": [1],
    "g_pids": [1, 2],
    "q_camids": [0],
    "g_camids": [1, 1],
}


@pytest.mark.parametrize(
    ("name", "value", "error", "match"),
    [
        ("distmat", np.zeros((1, 3)), ValueError, r"g_pids must have length 3"),
        ("distmat", np.zeros(2), ValueError, r"distmat must be a 2-D .* got shape \(2,\)"),
        ("distmat", np.array([[0.1, np.nan]]), ValueError, r"distmat must be finite"),
        ("distmat", np.array([[0.1, np.inf]]), ValueError, r"distmat must be finite"),
        ("distmat", "abc", TypeError, r"distmat must be a 2-D"),
        ("distmat", np.zeros((0, 2)), ValueError, r"Q, G >= 1"),
        ("q_pids", [1, 2], ValueError, r"q_pids must have length 1"),
        (
            "g_pids",
            [1.0, 2.0],
            TypeError,
            r"g_pids must be a 1-D integer .*got dtype torch.float64",
        ),
        ("q_camids", [[0]], ValueError, r"q_camids must be a 1-D integer .* shape \(1, 1\)"),
        ("g_camids", [1], ValueError, r"g_camids must have length 2"),
        ("max_rank", 0, ValueError, r"max_rank must be an int >= 1, got 0"),
        ("max_rank", 2.0, TypeError, r"max_rank must be an int >= 1"),
        ("protocol", "duke", ValueError, r"protocol must be one of \['cuhk03', 'market'\]"),
        ("num_repeats", 0, ValueError, r"num_repeats must be an int >= 1, got 0"),
        ("seed", -1, ValueError, r"seed must be an int >= 0, got -1"),
    ],
)
def test_bad_input_raises_naming_the_argument(name, value, error, match):
    kwargs = dict(GOOD, **{name: value})
    snapshot = np.copy(GOOD["distmat"])
    with pytest.raises(error, match=match):
        evaluate_rank(**kwargs)
    np.testing.assert_array_equal(GOOD["distmat"], snapshot)


@pytest.mark.slow
def test_market_scale_matches_reference_loop():
    rng = np.random.default_rng(0)
    num_q, num_g = 300, 15913
    g_pids = rng.integers(1, 752, num_g)
    g_pids[:2800] = 0  # distractors
    q_pids = rng.integers(1, 752, num_q)
    q_camids, g_camids = rng.integers(1, 7, num_q), rng.integers(1, 7, num_g)
    dist = rng.random((num_q, num_g)).astype(np.float32)
    dist[:, ::7] = np.round(dist[:, ::7], 2)  # ties
    expected = reference_market(dist, q_pids, g_pids, q_camids, g_camids, 50)
    assert_same(evaluate_rank(dist, q_pids, g_pids, q_camids, g_camids), expected)
