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
- :func:`extract_features`: features, ids and cameras of a loader, optionally
  flip-averaged and L2-normalised.
"""

from metareid.evaluation.distance import METRICS, Metric, compute_distance, iter_distance_chunks
from metareid.evaluation.extract import extract_features
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
    "evaluate_features",
    "evaluate_rank",
    "extract_features",
    "iter_distance_chunks",
    "k_reciprocal_rerank",
]
