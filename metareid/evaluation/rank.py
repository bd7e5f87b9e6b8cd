"""CMC, mAP and mINP of a retrieval ranking (Market and CUHK03 protocols).

Definitions, per query, with the gallery ranked by increasing distance:

- *junk*: gallery entries with the query's id AND camera; they are removed before ranking
  (Market-1501 protocol). Entries of other ids are kept, distractors (pid 0) included; no
  other id is special (dataset loaders drop Market's pid -1 "junk" images beforehand).
- *positives*: the remaining gallery entries with the query's id. A query without any is
  skipped and counted in ``num_skipped``.
- *ties*: entries at equal distance are ordered by gallery index, as a stable sort would.
- ``cmc[k]``: fraction of valid queries whose first positive is within the top ``k + 1``.
- AP: mean over the positives of (its index among the positives + 1) / (its rank + 1).
- INP (inverse negative penalty): (number of positives) / (rank of the last positive + 1).

All values are fractions in [0, 1] (multiply by 100 for the usual percentages).

The ranks are computed without sorting whole rows (see ``_ranking``): for each query only
its positives are sorted and every other distance is counted against them. The result is
exactly that of a per-query stable ``argsort``, ties included.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from metareid._validation import (
    as_distances,
    as_feature_pair,
    as_ids,
    check_choice,
    check_finite,
    check_nonnegative_int,
    check_positive_int,
    check_unit_interval,
)
from metareid.evaluation._ranking import Cuhk03Accumulator, GalleryIndex, MarketAccumulator
from metareid.evaluation.distance import METRICS, Metric, PairwiseDistance

__all__ = ["PROTOCOLS", "Protocol", "RankResult", "evaluate_features", "evaluate_rank"]

Protocol = Literal["market", "cuhk03"]
PROTOCOLS: tuple[str, ...] = ("market", "cuhk03")
_CUHK03_CHUNK_ELEMENTS = 1 << 22
_RANK_CHUNK_ELEMENTS = 1 << 24  # bounds the per-chunk bookkeeping (a few bytes per entry)


class RankResult(NamedTuple):
    """Retrieval metrics returned by :func:`evaluate_rank` and :func:`evaluate_features`.

    Attributes:
        cmc: cumulative matching characteristic, shape (max_rank,): ``cmc[0]`` is rank-1.
        mAP: mean average precision over the valid queries.
        mINP: mean inverse negative penalty over the valid queries.
        num_valid: queries with at least one positive (those averaged).
        num_skipped: queries without a positive in the gallery (ignored).

    Example:
        >>> from metareid.evaluation import RankResult
        >>> import numpy as np
        >>> r = RankResult(np.array([0.5, 1.0]), 0.75, 0.6, 2, 0)
        >>> r.cmc[0], r.mAP
        (np.float64(0.5), 0.75)
    """

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_valid: int
    num_skipped: int


def _check_options(
    max_rank: object, protocol: object, num_repeats: object, seed: object
) -> tuple[int, str, int, int]:
    return (
        check_positive_int("max_rank", max_rank),
        check_choice("protocol", protocol, PROTOCOLS),
        check_positive_int("num_repeats", num_repeats),
        check_nonnegative_int("seed", seed),
    )


def _check_ids(
    q_pids: object, g_pids: object, q_camids: object, g_camids: object, num_q: int, num_g: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return (
        as_ids("q_pids", q_pids, num_q, "the number of queries"),
        as_ids("g_pids", g_pids, num_g, "the number of gallery entries"),
        as_ids("q_camids", q_camids, num_q, "the number of queries"),
        as_ids("g_camids", g_camids, num_g, "the number of gallery entries"),
    )


def evaluate_rank(
    distmat: Tensor | np.ndarray,
    q_pids: Tensor | np.ndarray,
    g_pids: Tensor | np.ndarray,
    q_camids: Tensor | np.ndarray,
    g_camids: Tensor | np.ndarray,
    max_rank: int = 50,
    protocol: Protocol = "market",
    num_repeats: int = 10,
    seed: int = 0,
) -> RankResult:
    """CMC, mAP and mINP from a query-gallery distance matrix.

    Protocols:

    - ``"market"`` (default, used by the published M3L code for every target): junk
      (same id and camera as the query) removed, distractors kept, queries without a
      positive skipped. See the module notes for the exact definitions and the tie rule.
    - ``"cuhk03"``: classic single-gallery-shot CMC. For each query and each of
      ``num_repeats`` samplings, one gallery entry per id is drawn among the valid ones
      (junk removed as above); the CMC is averaged over the samplings. Sampling ``r``
      uses ``numpy.random.default_rng([seed, r])``, which draws a uniform key for every
      (query, gallery entry) pair, row by row; the entry with the largest key of each id is
      kept. mAP and mINP are not part of this protocol; they are reported on the full
      valid gallery, exactly as under ``"market"``.

    Args:
        distmat: distances, shape (Q, G); a tensor (any device) or a numpy array, finite.
            Integer matrices are converted to float64.
        q_pids: query ids, shape (Q,).
        g_pids: gallery ids, shape (G,).
        q_camids: query camera ids, shape (Q,).
        g_camids: gallery camera ids, shape (G,).
        max_rank: length of the returned CMC, >= 1. Default 50. It may exceed G.
        protocol: ``"market"`` (default) or ``"cuhk03"``.
        num_repeats: samplings of the ``"cuhk03"`` protocol, >= 1. Default 10.
        seed: seed of the ``"cuhk03"`` samplings, >= 0. Default 0.

    Returns:
        A :class:`RankResult`; metrics are fractions in [0, 1].

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: shapes disagree, ``distmat`` is not finite, an option is out of range,
            or no query has a positive.

    Example:
        >>> import numpy as np
        >>> from metareid.evaluation import evaluate_rank
        >>> distmat = np.array([[0.1, 0.5, 0.3], [0.4, 0.2, 0.6]])
        >>> r = evaluate_rank(distmat, [1, 2], [1, 2, 1], [0, 0], [1, 1, 1], max_rank=3)
        >>> r.cmc.tolist(), round(r.mAP, 4), round(r.mINP, 4), r.num_valid
        ([1.0, 1.0, 1.0], 1.0, 1.0, 2)
    """
    max_rank, protocol_name, num_repeats, seed = _check_options(
        max_rank, protocol, num_repeats, seed
    )
    dist = as_distances("distmat", distmat)
    num_q, num_g = dist.shape
    if num_q == 0 or num_g == 0:
        raise ValueError(f"distmat must have Q, G >= 1, got shape {tuple(dist.shape)}")
    q_pids_t, g_pids_t, q_cams_t, g_cams_t = _check_ids(
        q_pids, g_pids, q_camids, g_camids, num_q, num_g
    )
    check_finite("distmat", dist)
    gallery = GalleryIndex(g_pids_t, g_cams_t)
    market = MarketAccumulator(gallery, max_rank)
    step = max(1, _RANK_CHUNK_ELEMENTS // num_g)
    for start in range(0, num_q, step):
        stop = min(start + step, num_q)
        market.update(dist[start:stop], q_pids_t[start:stop], q_cams_t[start:stop])
    if protocol_name == "cuhk03":
        cuhk03 = Cuhk03Accumulator(gallery, max_rank, num_repeats, seed)
        step = max(1, _CUHK03_CHUNK_ELEMENTS // num_g)
        for start in range(0, num_q, step):
            stop = min(start + step, num_q)
            cuhk03.update(dist[start:stop], q_pids_t[start:stop], q_cams_t[start:stop])
    _, mean_ap, mean_inp, num_valid, num_skipped = market.result()
    cmc = cuhk03.cmc(num_valid) if protocol_name == "cuhk03" else market.result()[0]
    return RankResult(cmc, mean_ap, mean_inp, num_valid, num_skipped)


def evaluate_features(
    query_feats: Tensor | np.ndarray,
    gallery_feats: Tensor | np.ndarray,
    q_pids: Tensor | np.ndarray,
    g_pids: Tensor | np.ndarray,
    q_camids: Tensor | np.ndarray,
    g_camids: Tensor | np.ndarray,
    metric: Metric = "euclidean",
    max_rank: int = 50,
    protocol: Protocol = "market",
    num_repeats: int = 10,
    seed: int = 0,
    chunk_size: int = 256,
    rerank: bool = False,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> RankResult:
    """CMC, mAP and mINP from features, streaming the queries so that memory stays bounded.

    The queries are processed ``chunk_size`` at a time: the distances of a chunk to the
    whole gallery are computed (one ``torch.mm``, then the norm terms, see
    :mod:`metareid.evaluation.distance`), ranked exactly, and reduced to per-query
    contributions, which are combined at the end exactly as :func:`evaluate_rank` combines
    them. The full (Q, G) matrix never exists: beyond the features, memory is one chunk
    of ``chunk_size * G`` distances plus buffers (under 250 MB measured at MSMT17 scale
    with the default chunk size and float32, instead of 3.8 GB). With the same distances,
    the result is identical to
    ``evaluate_rank(compute_distance(query_feats, gallery_feats, metric), ...)`` (see
    :mod:`metareid.evaluation.distance` on BLAS summation order).

    Features are used as given (not normalised here): the published M3L protocol is
    ``metric="euclidean"`` on L2-normalised features, as :func:`extract_features` returns
    them by default.

    Args:
        query_feats: shape (Q, D); a tensor (any device) or a numpy array, finite.
        gallery_feats: shape (G, D), same device as ``query_feats``.
        q_pids: query ids, shape (Q,).
        g_pids: gallery ids, shape (G,).
        q_camids: query camera ids, shape (Q,).
        g_camids: gallery camera ids, shape (G,).
        metric: ``"euclidean"`` (squared, default) or ``"cosine"``.
        max_rank: length of the returned CMC, >= 1. Default 50.
        protocol: ``"market"`` (default) or ``"cuhk03"``, see :func:`evaluate_rank`.
        num_repeats: samplings of the ``"cuhk03"`` protocol, >= 1. Default 10.
        seed: seed of the ``"cuhk03"`` samplings, >= 0. Default 0.
        chunk_size: queries per chunk, >= 1. Default 256.
        rerank: rank by the k-reciprocal re-ranked distance (see
            :func:`k_reciprocal_rerank`) instead of the plain one. Default False.
        k1: re-ranking neighbourhood size, >= 1. Default 20.
        k2: re-ranking query-expansion size, >= 1. Default 6.
        lambda_value: re-ranking weight of the original distance, in [0, 1]. Default 0.3.

    Returns:
        A :class:`RankResult`; metrics are fractions in [0, 1].

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: shapes disagree, features are not finite, an option is out of range,
            or no query has a positive.

    Example:
        >>> import torch
        >>> from metareid.evaluation import evaluate_features
        >>> q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> g = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.7, 0.7]])
        >>> r = evaluate_features(q, g, [1, 2], [1, 2, 1], [0, 0], [1, 1, 1], max_rank=2)
        >>> r.cmc.tolist(), r.mAP, r.num_valid
        ([1.0, 1.0], 1.0, 2)
    """
    max_rank, protocol_name, num_repeats, seed = _check_options(
        max_rank, protocol, num_repeats, seed
    )
    check_choice("metric", metric, METRICS)
    chunk_size = check_positive_int("chunk_size", chunk_size)
    if not isinstance(rerank, bool):
        raise TypeError(f"rerank must be a bool, got {type(rerank).__name__} {rerank!r}")
    k1 = check_positive_int("k1", k1)
    k2 = check_positive_int("k2", k2)
    lambda_value = check_unit_interval("lambda_value", lambda_value)
    qf, gf = as_feature_pair("query_feats", query_feats, "gallery_feats", gallery_feats)
    num_q, num_g = qf.shape[0], gf.shape[0]
    q_pids_t, g_pids_t, q_cams_t, g_cams_t = _check_ids(
        q_pids, g_pids, q_camids, g_camids, num_q, num_g
    )

    gallery = GalleryIndex(g_pids_t, g_cams_t)
    market = MarketAccumulator(gallery, max_rank)
    cuhk03 = Cuhk03Accumulator(gallery, max_rank, num_repeats, seed)
    if rerank:
        from metareid.evaluation.rerank import KReciprocalReranker

        reranker = KReciprocalReranker(
            qf, gf, k1=k1, k2=k2, lambda_value=lambda_value, metric=metric
        )
        for start in range(0, num_q, chunk_size):
            stop = min(start + chunk_size, num_q)
            dist = reranker.rows(start, stop)
            check_finite("re-ranked distances", dist)
            market.update(dist, q_pids_t[start:stop], q_cams_t[start:stop])
            if protocol_name == "cuhk03":
                cuhk03.update(dist, q_pids_t[start:stop], q_cams_t[start:stop])
    else:
        engine = PairwiseDistance(qf, gf, metric)
        _check_distance_range(engine)
        buffer = torch.empty(min(chunk_size, num_q), num_g, dtype=qf.dtype, device=qf.device)
        for start in range(0, num_q, chunk_size):
            stop = min(start + chunk_size, num_q)
            dist = engine.products(start, stop, buffer[: stop - start])

            def finalize(a: int, b: int, dist: Tensor = dist, start: int = start) -> None:
                engine.finalize(dist[a:b], start + a)

            market.update(dist, q_pids_t[start:stop], q_cams_t[start:stop], finalize=finalize)
            if protocol_name == "cuhk03":
                cuhk03.update(dist, q_pids_t[start:stop], q_cams_t[start:stop])
    _, mean_ap, mean_inp, num_valid, num_skipped = market.result()
    cmc = cuhk03.cmc(num_valid) if protocol_name == "cuhk03" else market.result()[0]
    return RankResult(cmc, mean_ap, mean_inp, num_valid, num_skipped)


def _check_distance_range(engine: PairwiseDistance) -> None:
    """Raise if some distance could overflow (features are finite, checked before)."""
    limit = torch.finfo(engine.x.dtype).max
    if engine.metric == "euclidean":
        bound = 4.0 * max(float(engine.x_aux.max()), float(engine.y_aux.max()))
    else:  # |x.y| <= |x| |y|, then scaled by both inverse norms
        x_norm = float(1.0 / engine.x_aux.min())
        y_norm = float(1.0 / engine.y_aux.min())
        bound = x_norm * y_norm
    if not np.isfinite(bound) or bound >= limit / 4:
        raise ValueError(
            f"features are too large for {engine.x.dtype} distances (squared norms up to "
            f"{bound:.3g}); rescale them or use float64"
        )
