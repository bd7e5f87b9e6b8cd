"""Top-k retrieval of a query set in a gallery, streamed in chunks of queries.

The distances are those of evaluation (the engine of
:func:`metareid.evaluation.iter_distance_chunks` and :func:`~metareid.evaluation.compute_distance`:
squared Euclidean on the embeddings, or cosine), computed for a few queries at a time into
one reused buffer; each
chunk is reduced to its top-k before the next one is computed, so beyond the features the
memory is one chunk of about :data:`CHUNK_ELEMENTS` distances, whatever the gallery size
(``benchmarks/search_memory.py`` measures it). The order is that of
:func:`metareid.evaluation.evaluate_rank`: increasing distance, ties by gallery index (a
stable sort), computed exactly.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from metareid._validation import as_feature_pair, check_choice, check_positive_int
from metareid.data.datasets.generic import MARKET_NAME_PATTERN
from metareid.evaluation.distance import METRICS, Metric, PairwiseDistance

__all__ = ["CHUNK_ELEMENTS", "SearchResult", "names_to_ids", "search_grid", "topk_search"]

#: Distances per query chunk when ``chunk_size`` is not given (16 MB of float32).
CHUNK_ELEMENTS = 1 << 22


class SearchResult(NamedTuple):
    """What :func:`topk_search` returns.

    Attributes:
        indices: gallery index of the ``k`` nearest entries of each query, int64 (Q, k),
            nearest first.
        distances: their distances, (Q, k), the features' dtype.
    """

    indices: Tensor
    distances: Tensor


def topk_search(
    query_feats: Tensor | np.ndarray,
    gallery_feats: Tensor | np.ndarray,
    topk: int = 10,
    metric: Metric = "euclidean",
    chunk_size: int | None = None,
) -> SearchResult:
    """The ``topk`` nearest gallery entries of every query, in bounded memory.

    Args:
        query_feats: (Q, D), finite; tensor (any device) or numpy array.
        gallery_feats: (G, D), same device.
        topk: entries per query, >= 1; ``min(topk, G)`` are returned. Default 10.
        metric: ``"euclidean"`` (squared, default, as evaluation) or ``"cosine"``.
        chunk_size: queries per distance chunk, >= 1; ``None`` (default):
            ``CHUNK_ELEMENTS // G`` (at least 1, at most 1024).

    Returns:
        :class:`SearchResult` ``(indices (Q, k), distances (Q, k))`` on the features'
        device, ranked by increasing distance, ties by gallery index.

    Raises:
        TypeError, ValueError: for bad features (shapes, dtype, non-finite values) or
            options, naming the argument.

    Example:
        >>> import torch
        >>> q = torch.tensor([[1.0, 0.0]])
        >>> g = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
        >>> res = topk_search(q, g, topk=2)
        >>> res.indices.tolist(), res.distances.tolist()
        ([[1, 0]], [[0.0, 2.0]])
    """
    k = check_positive_int("topk", topk)
    check_choice("metric", metric, METRICS)
    num_g = int(gallery_feats.shape[0]) if hasattr(gallery_feats, "shape") else 0
    if chunk_size is None:
        chunk_size = max(1, min(1024, CHUNK_ELEMENTS // max(num_g, 1)))
    chunk_size = check_positive_int("chunk_size", chunk_size)
    indices: list[Tensor] = []
    distances: list[Tensor] = []
    qf, gf = as_feature_pair("query_feats", query_feats, "gallery_feats", gallery_feats)
    # the engine of iter_distance_chunks / compute_distance, writing into one reused buffer
    engine = PairwiseDistance(qf, gf, metric)
    num_q, num_g = qf.shape[0], gf.shape[0]
    buffer = torch.empty(min(chunk_size, num_q), num_g, dtype=qf.dtype, device=qf.device)
    for start in range(0, num_q, chunk_size):
        stop = min(start + chunk_size, num_q)
        dist = engine.rows(start, stop, out=buffer[: stop - start])
        vals, idx = _chunk_topk(dist, min(k, num_g))
        indices.append(idx)
        distances.append(vals)
    return SearchResult(torch.cat(indices), torch.cat(distances))


def _chunk_topk(dist: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k of every row of ``dist`` (c, G) by (distance, index), exactly."""
    # One more than asked: when the (k+1)-th distance equals the k-th, more than k entries
    # are <= the k-th and topk chose among the tied ones arbitrarily: those rows are sorted
    # whole. Otherwise the selected set is exact and only its order needs fixing. (No
    # temporary of the chunk's size: a comparison mask summed in int64 would be 8x it.)
    extra = min(k + 1, dist.shape[1])
    vals, idx = torch.topk(dist, extra, dim=1, largest=False, sorted=True)
    if extra > k:
        ambiguous = (vals[:, k] == vals[:, k - 1]).nonzero().squeeze(1)
        vals, idx = vals[:, :k], idx[:, :k]
    else:
        ambiguous = torch.empty(0, dtype=torch.int64, device=dist.device)
    idx, perm = idx.sort(dim=1)
    vals, perm = vals.gather(1, perm).sort(dim=1, stable=True)
    idx = idx.gather(1, perm)
    if ambiguous.numel():
        sorted_vals, order = torch.sort(dist[ambiguous], dim=1, stable=True)
        vals[ambiguous] = sorted_vals[:, :k]
        idx[ambiguous] = order[:, :k]
    return vals, idx


def names_to_ids(names: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """Person and camera ids from Market-1501-style file names, or ``None``.

    A name ``<pid>_c<camera>...`` (the pattern of :data:`metareid.data.MARKET_NAME_PATTERN`,
    applied to the file name without its folder) gives ``(pid, camera - 1)``. ``None`` when
    any name does not follow it.

    Example:
        >>> names_to_ids(["0002_c1s1_000451_03.jpg", "cam/0007_c3s3_0001.jpg"])
        (array([2, 7]), array([0, 2]))
        >>> names_to_ids(["crop_1.jpg"]) is None
        True
    """
    pattern = re.compile(MARKET_NAME_PATTERN)
    pids, cams = [], []
    for name in names:
        match = pattern.fullmatch(PurePosixPath(str(name).replace("\\", "/")).name)
        if match is None:
            return None
        pids.append(int(match.group(1)))
        cams.append(int(match.group(2)) - 1)
    return np.array(pids, dtype=np.int64), np.array(cams, dtype=np.int64)


def search_grid(
    query_feats: Tensor | np.ndarray,
    gallery_feats: Tensor | np.ndarray,
    query_paths: Sequence[str | os.PathLike[str]],
    gallery_paths: Sequence[str | os.PathLike[str]],
    path: str | os.PathLike[str],
    *,
    num_queries: int = 8,
    topk: int = 10,
    seed: int = 0,
    image_size: tuple[int, int] = (128, 64),
) -> Path:
    """The retrieval-grid picture (:func:`metareid.viz.retrieval_grid`) of a search.

    Up to ``8 * num_queries`` candidate queries are drawn with
    ``numpy.random.default_rng(seed)``; only their distance rows are computed. When every
    file name follows the Market-1501 pattern (:func:`names_to_ids`), identities are used
    as in the trainer's picture (matches green, mismatches red, same-camera matches
    removed); otherwise the picture is unlabelled (grey frames, nothing removed).

    Returns:
        ``path``.

    Example:
        >>> import tempfile, torch
        >>> from PIL import Image
        >>> tmp = Path(tempfile.mkdtemp())
        >>> files = [tmp / f"{i}.png" for i in range(3)]
        >>> for f in files:
        ...     Image.new("RGB", (8, 16)).save(f)
        >>> out = search_grid(torch.eye(3)[:1], torch.eye(3), files[:1], files, tmp / "g.png",
        ...                   topk=2, image_size=(16, 8))
        >>> out.name
        'g.png'
    """
    from metareid.evaluation import compute_distance
    from metareid.viz import retrieval_grid

    num_q = len(query_paths)
    count = check_positive_int("num_queries", num_queries)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(num_q, size=min(num_q, 8 * count), replace=False))
    qf = _as_tensor(query_feats)[torch.as_tensor(pick, device=_as_tensor(query_feats).device)]
    dist = compute_distance(qf, _as_tensor(gallery_feats))
    q_names = [str(query_paths[i]) for i in pick.tolist()]
    g_names = [str(p) for p in gallery_paths]
    q_ids, g_ids = names_to_ids(q_names), names_to_ids(g_names)
    labels: tuple[Any, Any, Any, Any] = (None, None, None, None)
    if q_ids is not None and g_ids is not None:
        labels = (q_ids[0], g_ids[0], q_ids[1], g_ids[1])
    return retrieval_grid(
        dist,
        q_names,
        g_names,
        *labels,
        path,
        num_queries=count,
        topk=topk,
        seed=seed,
        image_size=image_size,
    )


def _as_tensor(value: Tensor | np.ndarray) -> Tensor:
    """Tensors as they are; numpy arrays without a copy (the checks come later)."""
    return torch.from_numpy(value) if isinstance(value, np.ndarray) else value
