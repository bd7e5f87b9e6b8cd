"""Retrieval evaluation for person re-identification.

- :func:`evaluate_rank`: CMC, mAP and mINP from a distance matrix (Market or CUHK03
  protocol), exact and without sorting whole rows.
- :func:`evaluate_features`: the same from features, streaming the queries so that the
  full distance matrix never exists (MSMT17 scale in bounded memory), optionally with
  k-reciprocal re-ranking.
- :func:`compute_distance`, :func:`iter_distance_chunks`: squared Euclidean or cosine
  distances, chunk by chunk.
- :func:`k_reciprocal_rerank`, :class:`KReciprocalReranker`: k-reciprocal re-ranking
  (Zhong et al., CVPR 2017) with memory linear in the number of samples.
- :func:`embed`: the evaluation embedding of one batch (a model's features, optionally
  flip-averaged, then L2-normalised); :func:`extract_features`: it over a loader, with
  ids and cameras.
"""

from metareid.evaluation.distance import METRICS, Metric, compute_distance, iter_distance_chunks
from metareid.evaluation.extract import embed, extract_features
from metareid.evaluation.rank import (
    PROTOCOLS,
    Protocol,
    RankResult,
    evaluate_features,
    evaluate_rank,
)
from metareid.evaluation.rerank import KReciprocalReranker, k_reciprocal_rerank

__all__ = [
    "METRICS",
    "PROTOCOLS",
    "KReciprocalReranker",
    "Metric",
    "Protocol",
    "RankResult",
    "compute_distance",
    "embed",
    "evaluate_features",
    "evaluate_rank",
    "extract_features",
    "iter_distance_chunks",
    "k_reciprocal_rerank",
]
