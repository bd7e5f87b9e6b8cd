"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) with memory linear in the number of samples.

The published algorithm, on the N = Q + G query and gallery samples together:

1. ``d(i, j)``: the original distance (squared Euclidean on the features, as the
   published feature-based code; or cosine), divided by its maximum over the column
   ``max_k d(k, i)`` -- for a symmetric distance the maximum of row ``i``.
2. ``N(i, k)``: the ``k`` nearest samples of ``i`` (itself included) under that distance.
3. ``R(i)``: the k-reciprocal neighbours, ``j in N(i, k1 + 1)`` with ``i in N(j, k1 + 1)``.
4. Expansion: for each ``c in R(i)``, its half-size set ``R_h(c)`` (the same with
   ``round(k1 / 2) + 1`` neighbours, rounding half to even as numpy does) is added when
   more than 2/3 of it lies in ``R(i)``. ``E(i)`` is the union.
5. ``V[i, j] = exp(-d(i, j)) / sum_{l in E(i)} exp(-d(i, l))`` for ``j in E(i)``, else 0.
6. Local query expansion: ``V[i] <- mean of V[j] over the k2 nearest j of i``.
7. Jaccard distance ``1 - s / (2 - s)`` with ``s = sum_j min(V[q, j], V[g, j])``.
8. Final distance ``(1 - lambda) * jaccard + lambda * d(q, g)``, query rows, gallery columns.

Instead of the N x N matrices of the published code (27 GB of float32 at MSMT17 scale),
this implementation keeps the ``max(k1 + 1, k2)`` nearest neighbours of every sample, the
sparse rows of ``V`` and an inverted index of the gallery rows, so memory grows as N times
a constant that depends on ``k1`` and ``k2`` only. The distances are streamed in chunks of
rows twice: once for the neighbour lists and the row maxima, once for the final query rows.

Deviations from the published code, all below float32 round-off except the first:

- Ties in the neighbour ranking are broken by index (a stable sort), where the published
  code's ``np.argsort`` leaves them unspecified.
- ``d(i, j)`` for a ``j`` of ``E(i)`` outside the stored neighbour list of ``i`` is
  recomputed from the two feature vectors (a dot product, where the first pass used a
  matrix product): the two can differ by a few units in the last place.
- Sums (the normalisation of ``V``, the query expansion, the Jaccard overlap) are
  accumulated in another order than numpy's; each differs by a few float32 units.

Only the published ranklist variant squares the distances it receives; the feature variant,
followed here, uses the squared Euclidean distance once.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from metareid._validation import (
    as_feature_pair,
    check_choice,
    check_positive_int,
    check_unit_interval,
)
from metareid.evaluation._threads import single_threaded
from metareid.evaluation.distance import METRICS, Metric, PairwiseDistance

__all__ = ["KReciprocalReranker", "k_reciprocal_rerank"]

_PAIR_BUDGET = 1 << 21  # pairs handled at once in the sparse stages (~100 MB of indices)
_GATHER_PAIRS = 1 << 12  # feature pairs gathered at once (2 x 4096 x D values)


def _smallest_k(values: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` smallest entries of each row in (value, column) order, ties to lower columns.

    Args:
        values: shape (n, L), with ``k <= L``.
        k: number of entries kept.

    Returns:
        ``(vals, cols)``, each of shape (n, k).
    """
    length = values.shape[1]
    take = min(k + 1, length)
    vals, cols = torch.topk(values, take, dim=1, largest=False, sorted=True)
    if take > k:
        ambiguous = vals[:, k] == vals[:, k - 1]  # a tie straddles the cut: topk chose freely
        vals, cols = vals[:, :k].clone(), cols[:, :k].clone()
        for row in ambiguous.nonzero().squeeze(1).tolist():
            cut = vals[row, k - 1]
            candidates = (values[row] <= cut).nonzero().squeeze(1)  # increasing columns
            order = torch.sort(values[row, candidates], stable=True).indices[:k]
            cols[row] = candidates[order]
            vals[row] = values[row, cols[row]]
    return _lexsort_rows(vals, cols)


def _lexsort_rows(vals: Tensor, cols: Tensor) -> tuple[Tensor, Tensor]:
    """Sort each row by (value, column)."""
    by_col = torch.argsort(cols, dim=1)
    vals, cols = vals.gather(1, by_col), cols.gather(1, by_col)
    by_val = torch.sort(vals, dim=1, stable=True).indices
    return vals.gather(1, by_val), cols.gather(1, by_val)


def _reciprocal(neighbours: Tensor, k: int, chunk: int = 4096) -> Tensor:
    """``mask[i, a]``: ``i`` is among the first ``k`` neighbours of ``neighbours[i, a]``.

    Args:
        neighbours: shape (N, K) with ``k <= K``; only the first ``k`` columns are used.
        k: neighbourhood size.

    Returns:
        Boolean mask of shape (N, k).
    """
    num = neighbours.shape[0]
    first = neighbours[:, :k]
    out = torch.empty(num, k, dtype=torch.bool)
    for start in range(0, num, chunk):
        rows = torch.arange(start, min(start + chunk, num))
        back = first[first[rows]]  # (n, k, k)
        out[rows] = (back == rows[:, None, None]).any(2)
    return out


def _segment_ids(lengths: Tensor) -> tuple[Tensor, Tensor]:
    """For segments of the given lengths: the segment of every element and its offset."""
    seg = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    starts = torch.cumsum(lengths, 0) - lengths
    return seg, torch.arange(seg.numel()) - starts[seg]


class KReciprocalReranker:
    """k-reciprocal re-ranked query-gallery distances, streamed by chunks of queries.

    The constructor does the expensive part (the neighbour lists of all Q + G samples and
    the sparse k-reciprocal vectors); :meth:`rows` then returns the final distances of any
    range of queries to the whole gallery. See the module notes for the algorithm and the
    documented deviations from the published code. Memory: the features, two chunks of
    distances (``chunk_size * (Q + G)`` values) and O((Q + G) * k1 * k2) sparse entries.

    Args:
        query_feats: shape (Q, D); a tensor (any device) or a numpy array, finite.
        gallery_feats: shape (G, D).
        k1: neighbourhood size of the k-reciprocal sets, >= 1. Default 20.
        k2: query-expansion size, >= 1 (1 disables it). Default 6.
        lambda_value: weight of the original distance in the final one, in [0, 1].
            Default 0.3.
        metric: original distance, ``"euclidean"`` (squared, default) or ``"cosine"``.
            Features are used as given (not normalised).
        chunk_size: rows of distances computed at a time, >= 1. Default 256.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: shapes do not match, features are not finite, an option is out of
            range, or a sample is at distance <= 0 from all samples (its normalisation is
            undefined).

    Example:
        >>> import torch
        >>> from metareid.evaluation import KReciprocalReranker
        >>> q, g = torch.eye(4)[:2], torch.eye(4)
        >>> reranker = KReciprocalReranker(q, g, k1=2, k2=1)
        >>> reranker.rows(0, 2).shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        query_feats: Tensor | np.ndarray,
        gallery_feats: Tensor | np.ndarray,
        k1: int = 20,
        k2: int = 6,
        lambda_value: float = 0.3,
        metric: Metric = "euclidean",
        chunk_size: int = 256,
    ) -> None:
        self.k1 = check_positive_int("k1", k1)
        self.k2 = check_positive_int("k2", k2)
        self.lambda_value = check_unit_interval("lambda_value", lambda_value)
        self.metric = check_choice("metric", metric, METRICS)
        self.chunk_size = check_positive_int("chunk_size", chunk_size)
        qf, gf = as_feature_pair("query_feats", query_feats, "gallery_feats", gallery_feats)
        self.num_query, self.num_gallery = qf.shape[0], gf.shape[0]
        num = self.num_query + self.num_gallery
        # distance engines: (rows of q or g) x (columns of q or g)
        self._engines = {
            (a, b): PairwiseDistance(x, y, self.metric)
            for a, x in (("q", qf), ("g", gf))
            for b, y in (("q", qf), ("g", gf))
        }
        self._features = {"q": qf, "g": gf}
        width = min(max(self.k1 + 1, self.k2), num)
        self.neighbours, self._neighbour_dist, self.row_max = self._neighbour_lists(width)
        # many small, mostly serial operations: no OpenMP barriers (see _threads)
        single_threaded(self._build_vectors)

    # --- pass 1: nearest neighbours and row maxima ----------------------------------------
    def _block(self, side: str, start: int, stop: int) -> tuple[Tensor, Tensor]:
        """Original distances of rows ``start..stop`` of ``side`` to all queries, all gallery."""
        to_q = self._engines[(side, "q")].rows(start, stop)
        to_g = self._engines[(side, "g")].rows(start, stop)
        return to_q, to_g

    def _neighbour_lists(self, width: int) -> tuple[Tensor, Tensor, Tensor]:
        num = self.num_query + self.num_gallery
        neighbours = torch.empty(num, width, dtype=torch.int64)
        neighbour_dist = torch.empty(num, width, dtype=torch.float64)
        row_max = torch.empty(num, dtype=torch.float64)
        offset = 0
        for side, count in (("q", self.num_query), ("g", self.num_gallery)):
            for start in range(0, count, self.chunk_size):
                stop = min(start + self.chunk_size, count)
                to_q, to_g = self._block(side, start, stop)
                peak = torch.maximum(to_q.amax(1), to_g.amax(1))
                if not bool((peak > 0).all()):
                    bad = offset + start + int((peak <= 0).nonzero()[0, 0])
                    raise ValueError(
                        f"sample {bad} of the concatenated query+gallery set is at distance "
                        "<= 0 from every sample, so the max-normalisation of re-ranking is "
                        "undefined (are all features identical?)"
                    )
                to_q.div_(peak[:, None])
                to_g.div_(peak[:, None])
                kq, kg = min(width, self.num_query), min(width, self.num_gallery)
                vq, cq = _smallest_k(to_q, kq)
                vg, cg = _smallest_k(to_g, kg)
                vals = torch.cat([vq, vg], 1)
                cols = torch.cat([cq, cg + self.num_query], 1)
                vals, cols = _lexsort_rows(vals, cols)
                rows = slice(offset + start, offset + stop)
                neighbours[rows] = cols[:, :width].cpu()
                neighbour_dist[rows] = vals[:, :width].double().cpu()
                row_max[rows] = peak.double().cpu()
            offset += count
        return neighbours, neighbour_dist, row_max

    # --- steps 3-5: sparse k-reciprocal vectors --------------------------------------------
    def _build_vectors(self) -> None:
        self._vectors = self._expanded_vectors(self._reciprocal_vectors())
        self._gallery_index = self._inverted_gallery_index()

    def _pair_distance(self, rows: Tensor, cols: Tensor) -> Tensor:
        """Normalised original distance of sample pairs (global indices), shape (P,)."""
        out = torch.empty(rows.numel(), dtype=torch.float64)
        nq = self.num_query
        for a in ("q", "g"):
            for b in ("q", "g"):
                sel = ((rows < nq) if a == "q" else (rows >= nq)) & (
                    (cols < nq) if b == "q" else (cols >= nq)
                )
                idx = sel.nonzero().squeeze(1)
                if idx.numel() == 0:
                    continue
                r = rows[idx] - (0 if a == "q" else nq)
                c = cols[idx] - (0 if b == "q" else nq)
                engine = self._engines[(a, b)]
                for s in range(0, idx.numel(), _GATHER_PAIRS):
                    rr, cc = r[s : s + _GATHER_PAIRS], c[s : s + _GATHER_PAIRS]
                    dev = engine.x.device
                    rr_d, cc_d = rr.to(dev), cc.to(dev)
                    dot = (engine.x[rr_d] * engine.y[cc_d]).sum(1)
                    if engine.metric == "euclidean":
                        d = dot.mul(-2.0).add(engine.y_aux[cc_d]).add(engine.x_aux[rr_d])
                    else:
                        d = dot.mul(engine.y_aux[cc_d]).mul(engine.x_aux[rr_d]).neg().add(1.0)
                    part = idx[s : s + _GATHER_PAIRS]
                    peak = self.row_max[rows[part]].to(d.dtype).to(dev)
                    out[part] = d.div(peak).double().cpu()
        return out

    def _reciprocal_vectors(self) -> tuple[Tensor, Tensor, Tensor]:
        """CSR rows of ``V`` (step 5): row pointers (N + 1,), columns and weights (nnz,)."""
        num = self.num_query + self.num_gallery
        k_full = min(self.k1 + 1, num)
        k_half = min(round(self.k1 / 2) + 1, num)  # Python and numpy round half to even
        neighbours = self.neighbours
        recip = _reciprocal(neighbours, k_full)
        recip_half = _reciprocal(neighbours, k_half)
        half = neighbours[:, :k_half]
        lengths, cols_parts, vals_parts = [], [], []
        width = k_full + k_full * k_half
        step = max(1, (1 << 22) // (k_full * k_half * k_full + width * k_full))
        for start in range(0, num, step):
            stop = min(start + step, num)
            n = stop - start
            cand = neighbours[start:stop, :k_full]  # (n, K)
            r_set = torch.where(recip[start:stop], cand, -1)  # R(i)
            h_nb = half[cand]  # (n, K, Kh): R_h candidates of each neighbour
            h_ok = recip_half[cand]
            in_r = (h_nb[..., None] == r_set[:, None, None, :]).any(3)
            inter = (in_r & h_ok).sum(2).double()
            size = h_ok.sum(2).double()
            accept = recip[start:stop] & (inter > (2.0 / 3.0) * size)
            added = torch.where(accept[..., None] & h_ok, h_nb, -1).reshape(n, -1)
            members = torch.sort(torch.cat([r_set, added], 1), dim=1).values
            keep = members >= 0
            keep[:, 1:] &= members[:, 1:] != members[:, :-1]
            row_len = keep.sum(1)
            rows_g = torch.repeat_interleave(torch.arange(start, stop), row_len)
            cols_g = members[keep]
            dist = self._lookup_distance(rows_g, cols_g)
            weight = torch.exp(-dist.to(torch.float32))
            seg = rows_g - start
            total = torch.zeros(n, dtype=torch.float32).index_add_(0, seg, weight)
            lengths.append(row_len)
            cols_parts.append(cols_g)
            vals_parts.append(weight / total[seg])
        row_len = torch.cat(lengths)
        indptr = torch.zeros(num + 1, dtype=torch.int64)
        indptr[1:] = torch.cumsum(row_len, 0)
        return indptr, torch.cat(cols_parts), torch.cat(vals_parts)

    def _lookup_distance(self, rows: Tensor, cols: Tensor) -> Tensor:
        """Normalised distances of pairs, from the neighbour lists when stored, else computed."""
        stored = self.neighbours[rows]  # (P, K)
        hit = stored == cols[:, None]
        found = hit.any(1)
        out = torch.empty(rows.numel(), dtype=torch.float64)
        slot = hit[found].to(torch.int8).argmax(1)
        out[found] = self._neighbour_dist[rows[found], slot]
        missing = (~found).nonzero().squeeze(1)
        if missing.numel():
            out[missing] = self._pair_distance(rows[missing], cols[missing])
        return out

    # --- step 6: local query expansion ------------------------------------------------------
    def _expanded_vectors(
        self, csr: tuple[Tensor, Tensor, Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        indptr, cols, vals = csr
        if self.k2 == 1:
            return csr
        num = self.num_query + self.num_gallery
        k2 = min(self.k2, num)
        row_len = indptr[1:] - indptr[:-1]
        out_len, out_cols, out_vals = [], [], []
        avg = max(1.0, float(row_len.float().mean()))
        step = max(1, int(_PAIR_BUDGET / (k2 * avg)))
        for start in range(0, num, step):
            stop = min(start + step, num)
            src = self.neighbours[start:stop, :k2].reshape(-1)  # (n * k2,)
            seg, pos = _segment_ids(row_len[src])
            flat = indptr[src][seg] + pos
            owner = torch.div(seg, k2, rounding_mode="floor")  # local row
            keys = owner * num + cols[flat]
            uniq, inverse = torch.unique(keys, sorted=True, return_inverse=True)
            summed = torch.zeros(uniq.numel(), dtype=torch.float32).index_add_(
                0, inverse, vals[flat]
            )
            local = torch.div(uniq, num, rounding_mode="floor")
            out_len.append(torch.bincount(local, minlength=stop - start))
            out_cols.append(uniq - local * num)
            out_vals.append(summed / k2)
        new_ptr = torch.zeros(num + 1, dtype=torch.int64)
        new_ptr[1:] = torch.cumsum(torch.cat(out_len), 0)
        return new_ptr, torch.cat(out_cols), torch.cat(out_vals)

    def _inverted_gallery_index(self) -> tuple[Tensor, Tensor, Tensor]:
        """Column-wise index of the gallery rows of ``V``: pointers, gallery rows, weights."""
        indptr, cols, vals = self._vectors
        num = self.num_query + self.num_gallery
        start = int(indptr[self.num_query])
        g_cols, g_vals = cols[start:], vals[start:]
        g_rows = torch.repeat_interleave(
            torch.arange(self.num_gallery),
            indptr[self.num_query + 1 :] - indptr[self.num_query : -1],
        )
        order = torch.argsort(g_cols, stable=True)
        colptr = torch.zeros(num + 1, dtype=torch.int64)
        colptr[1:] = torch.cumsum(torch.bincount(g_cols, minlength=num), 0)
        return colptr, g_rows[order], g_vals[order]

    # --- steps 7-8: final distances of a range of queries -----------------------------------
    def _jaccard_overlap(self, start: int, stop: int) -> Tensor:
        """``s = sum_j min(V[q, j], V[g, j])`` for queries ``start..stop``, shape (n, G)."""
        indptr, cols, vals = self._vectors
        colptr, g_rows, g_vals = self._gallery_index
        n = stop - start
        overlap = torch.zeros(n * self.num_gallery, dtype=torch.float32)
        q_len = indptr[start + 1 : stop + 1] - indptr[start:stop]
        q_seg, q_pos = _segment_ids(q_len)
        q_flat = indptr[start:stop][q_seg] + q_pos
        q_cols, q_vals = cols[q_flat], vals[q_flat]
        fan = colptr[q_cols + 1] - colptr[q_cols]
        bounds = torch.cumsum(fan, 0)
        first = 0
        while first < q_cols.numel():
            last = int(torch.searchsorted(bounds, bounds[first] - fan[first] + _PAIR_BUDGET))
            last = max(last, first + 1)
            e_seg, e_pos = _segment_ids(fan[first:last])
            e_seg += first
            src = colptr[q_cols[e_seg]] + e_pos
            value = torch.minimum(q_vals[e_seg], g_vals[src])
            target = q_seg[e_seg] * self.num_gallery + g_rows[src]
            overlap.index_add_(0, target, value)
            first = last
        return overlap.view(n, self.num_gallery)

    def rows(self, start: int, stop: int) -> Tensor:
        """Final re-ranked distances of queries ``start..stop`` to all gallery samples.

        Args:
            start: first query, ``0 <= start < stop``.
            stop: one past the last query, ``<= Q``.

        Returns:
            Distances of shape (stop - start, G), on the features' device.

        Example:
            >>> import torch
            >>> from metareid.evaluation import KReciprocalReranker
            >>> reranker = KReciprocalReranker(torch.eye(3)[:1], torch.eye(3), k1=2, k2=1)
            >>> reranker.rows(0, 1).argmin().item()
            0
        """
        if not 0 <= start < stop <= self.num_query:
            raise ValueError(
                f"rows(start, stop) needs 0 <= start < stop <= {self.num_query}, "
                f"got start={start}, stop={stop}"
            )
        original = self._engines[("q", "g")].rows(start, stop)
        peak = self.row_max[start:stop].to(original.dtype).to(original.device)
        original.div_(peak[:, None])
        overlap = single_threaded(lambda: self._jaccard_overlap(start, stop))
        overlap = overlap.to(original.device)
        jaccard = 1.0 - overlap / (2.0 - overlap)
        return jaccard.to(original.dtype) * (1.0 - self.lambda_value) + original * self.lambda_value


def k_reciprocal_rerank(
    query_feats: Tensor | np.ndarray,
    gallery_feats: Tensor | np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    metric: Metric = "euclidean",
    chunk_size: int = 256,
) -> Tensor:
    """k-reciprocal re-ranked query-gallery distance matrix (Zhong et al., CVPR 2017).

    Builds a :class:`KReciprocalReranker` and returns all its rows. The returned (Q, G)
    matrix is the only dense result; to evaluate at MSMT17 scale without it, use
    ``evaluate_features(..., rerank=True)``, which streams the rows.

    Args:
        query_feats: shape (Q, D); a tensor or a numpy array, finite.
        gallery_feats: shape (G, D).
        k1: neighbourhood size, >= 1. Default 20.
        k2: query-expansion size, >= 1. Default 6.
        lambda_value: weight of the original distance, in [0, 1]. Default 0.3.
        metric: ``"euclidean"`` (squared, default) or ``"cosine"``; features are used as
            given.
        chunk_size: rows of distances computed at a time, >= 1. Default 256.

    Returns:
        Re-ranked distances of shape (Q, G).

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: shapes do not match, features are not finite, an option is out of range.

    Example:
        >>> import torch
        >>> from metareid.evaluation import k_reciprocal_rerank
        >>> q, g = torch.eye(4)[:2], torch.eye(4)
        >>> k_reciprocal_rerank(q, g, k1=2, k2=1).argmin(1).tolist()
        [0, 1]
    """
    reranker = KReciprocalReranker(
        query_feats,
        gallery_feats,
        k1=k1,
        k2=k2,
        lambda_value=lambda_value,
        metric=metric,
        chunk_size=chunk_size,
    )
    chunks = [
        reranker.rows(start, min(start + chunk_size, reranker.num_query))
        for start in range(0, reranker.num_query, chunk_size)
    ]
    return torch.cat(chunks, 0)
