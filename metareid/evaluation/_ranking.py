"""Exact ranks of each query's true matches without sorting whole rows (private).

Vocabulary, for one query (one row of a distance matrix of shape (Q, G)):

- *same-id entries*: gallery entries with the query's id. Those taken by the query's camera
  are *junk* and removed (Market protocol); the others are the *positives*.
- *valid entries*: every gallery entry except the junk. Distractors (any other id, pid 0
  included) are valid negatives.
- *order*: valid entries are ranked by (distance, gallery index), i.e. a stable sort of the
  row by distance; ties go to the lower gallery index.
- *rank* of a positive: how many valid entries precede it in that order (0-based).

How the rows are ranked (all steps vectorised; a "block" is about a million distances, a
size that stays in cache):

1. Per block: the positives' distances are gathered; their per-row minimum and maximum
   set the range of the bins.
2. Per block: every distance is mapped to one of ``B`` bins by
   ``f(d) = int(clamp((d - o) * s, 0, B-1))``, per-row ``o`` and ``s > 0``. Each step is a
   correctly rounded, monotone operation, so ``f`` is non-decreasing: an entry in a lower
   bin than a positive is strictly closer, one in a higher bin strictly farther. One
   ``bincount`` and a cumulative sum give, for every positive, the number of entries in
   lower bins. The entries that share a bin with a positive are undecided; they are found
   with a lookup table of the positives' bins (a gather and a ``nonzero``), about
   ``m * G / B`` per row for ``m`` positives.
3. Per chunk of rows: the positives are sorted by (distance, index) into thresholds
   ``(t_s, j_s)`` and every undecided entry ``(d, k)`` is compared exactly,
   lexicographically, with the thresholds of its bin.
4. The junk entries were counted like all others; their contribution is subtracted exactly
   (they are known per query and few).

The bins are taken from the same tensor that is counted, so rounding cannot make a threshold
and its own bin disagree. The result equals a per-query stable ``argsort`` exactly, ties
included, at a cost of a few elementwise passes per distance instead of a sort.

On the CPU, the accumulators split the rows of a chunk among worker threads, each running
single-threaded torch operations (see :func:`metareid.evaluation._threads.run_workers`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from metareid.evaluation._threads import run_workers

__all__ = [
    "Cuhk03Accumulator",
    "GalleryIndex",
    "MarketAccumulator",
    "Workspace",
    "positive_ranks",
]

# A callback that finalises rows [start, stop) of a distance chunk in place before they are
# read (used by evaluate_features to add the norm terms while the rows are in cache).
Finalize = Callable[[int, int], None]

_BLOCK_ELEMENTS = 1 << 20  # distances per block: about 4 MB of float32, cache-resident
_MAX_BINS = 1 << 16
_MAX_WORKERS = 8


class GalleryIndex:
    """Gallery entries grouped by id, so that each query finds its same-id entries quickly.

    Args:
        g_pids: gallery ids, shape (G,), int64 on the CPU.
        g_camids: gallery camera ids, shape (G,), int64 on the CPU.
    """

    def __init__(self, g_pids: Tensor, g_camids: Tensor) -> None:
        self.num = int(g_pids.shape[0])
        self.pids = g_pids
        self.camids = g_camids
        self.order = torch.argsort(g_pids, stable=True)  # same-id entries in gallery order
        self.unique, self.counts = torch.unique_consecutive(g_pids[self.order], return_counts=True)
        self.starts = self.counts.cumsum(0) - self.counts
        # group (position in ``unique``) of every gallery entry, shape (G,)
        self.group = torch.empty(self.num, dtype=torch.int64)
        self.group[self.order] = torch.repeat_interleave(
            torch.arange(len(self.unique)), self.counts
        )

    def locate(self, q_pids: Tensor) -> tuple[Tensor, Tensor]:
        """Group of each query id and whether the gallery holds it, shapes (c,) and (c,)."""
        loc = torch.searchsorted(self.unique, q_pids).clamp(max=len(self.unique) - 1)
        return loc, self.unique[loc] == q_pids

    def same_id(self, q_pids: Tensor, q_camids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Same-id gallery columns of each query, padded, and which are positives and junk.

        Args:
            q_pids: shape (c,).
            q_camids: shape (c,).

        Returns:
            ``(cols, is_pos, is_junk)``, each of shape (c, M) with M the largest same-id
            count; columns are in increasing gallery order, padding has both masks False.
        """
        loc, found = self.locate(q_pids)
        count = torch.where(found, self.counts[loc], 0)
        width = int(count.max()) if count.numel() else 0
        offsets = torch.arange(width)
        inside = offsets < count[:, None]
        flat = (self.starts[loc][:, None] + offsets).clamp(max=self.num - 1)
        cols = torch.where(inside, self.order[flat], 0)
        same_cam = self.camids[cols] == q_camids[:, None]
        return cols, inside & ~same_cam, inside & same_cam


class Workspace:
    """Reusable buffers for ranking blocks of rows of width ``G`` (private).

    Args:
        num_gallery: G.
        dtype: floating dtype of the distances.
        device: device of the distances.
    """

    def __init__(self, num_gallery: int, dtype: torch.dtype, device: torch.device) -> None:
        self.num_gallery = num_gallery
        self.dtype = dtype
        self.device = device
        self.rows = self.rows_for(num_gallery)
        # Cost per row ~ a * B (histogram) + b * m * G / B (undecided entries), so B grows
        # like sqrt(G); 16 * sqrt(G) rounded to a power of two in [16, 2**16] was the fastest
        # on random Market- and MSMT-sized inputs.
        bins = 1 << int(np.clip(np.round(np.log2(16.0 * np.sqrt(num_gallery))), 4, 16))
        self.bins = min(bins, _MAX_BINS)
        # bin numbers (row offsets included) must stay exact integers in float32
        while self.rows > 1 and self.rows * self.bins > 1 << 22:
            self.rows //= 2
        size = self.rows * num_gallery
        self.values = torch.empty(self.rows, num_gallery, dtype=dtype, device=device)
        self.bin_of = torch.empty(self.rows, num_gallery, dtype=torch.int32, device=device)
        self.flags = torch.empty(size, dtype=torch.uint8, device=device)
        self.table = torch.zeros(self.rows * self.bins, dtype=torch.uint8, device=device)
        self._first_of_bin = torch.empty(0, dtype=torch.int64, device=device)
        self._count_of_bin = torch.empty(0, dtype=torch.int64, device=device)
        self.row_offset = (
            torch.arange(self.rows, device=device, dtype=torch.float64) * self.bins
        ).to(dtype)[:, None]

    @staticmethod
    def rows_for(num_gallery: int) -> int:
        """Rows per block: about ``_BLOCK_ELEMENTS`` distances, at most 256 rows."""
        return max(1, min(256, _BLOCK_ELEMENTS // max(num_gallery, 1)))

    def bin_tables(self, size: int) -> tuple[Tensor, Tensor]:
        """Two int64 scratch tables of at least ``size`` entries, kept between calls."""
        if self._first_of_bin.numel() < size:
            self._first_of_bin = torch.empty(size, dtype=torch.int64, device=self.device)
            self._count_of_bin = torch.empty(size, dtype=torch.int64, device=self.device)
        return self._first_of_bin, self._count_of_bin


def _junk_before(
    same_d: Tensor, cols: Tensor, is_junk: Tensor, t_vals: Tensor, t_cols: Tensor, t_mask: Tensor
) -> Tensor:
    """Per sorted threshold, the number of junk entries before it in (distance, index) order.

    Each junk entry is placed among its row's sorted thresholds (it precedes thresholds
    ``pos..``); a cumulative sum over the placements gives the counts, shape (c, M).
    """
    n, width = same_d.shape
    rows, slot = is_junk.nonzero(as_tuple=True)
    counts = torch.zeros(n, width + 1, dtype=torch.int64, device=same_d.device)
    if rows.numel() == 0:
        return counts[:, :width]
    jd, jc = same_d[rows, slot][:, None], cols[rows, slot][:, None]
    td, tc = t_vals[rows], t_cols[rows]
    ahead = t_mask[rows] & ((td < jd) | ((td == jd) & (tc < jc)))  # thresholds before the junk
    counts.index_put_((rows, ahead.sum(1)), torch.ones_like(rows), accumulate=True)
    return counts.cumsum(1)[:, :width]


def positive_ranks(
    dist: Tensor,
    cols: Tensor,
    is_pos: Tensor,
    is_junk: Tensor,
    workspace: Workspace,
    finalize: Finalize | None = None,
) -> tuple[Tensor, Tensor]:
    """Exact ranks of the positives of every row of ``dist``.

    Args:
        dist: distances, shape (c, G), contiguous, finite (after ``finalize``).
        cols: same-id gallery columns, shape (c, M), increasing along each row.
        is_pos: positives among ``cols``, shape (c, M).
        is_junk: junk among ``cols``, shape (c, M).
        workspace: buffers for ``G`` and the dtype and device of ``dist``.
        finalize: called as ``finalize(start, stop)`` before rows [start, stop) are read; it
            may modify those rows of ``dist`` in place.

    Returns:
        ``(ranks, npos)``: ``ranks`` of shape (c, M), int64, where row i holds the 0-based
        ranks of its ``npos[i]`` positives in increasing order, followed by G; ``npos`` of
        shape (c,).
    """
    c, num_gallery = dist.shape
    device = dist.device
    cols, is_pos, is_junk = cols.to(device), is_pos.to(device), is_junk.to(device)
    npos = is_pos.sum(1)
    width = cols.shape[1]
    ranks = torch.full((c, width), num_gallery, dtype=torch.int64, device=device)
    bins = workspace.bins
    # per same-id entry: distance, chunk-wide bin and number of entries in lower bins
    same_d = torch.empty(c, width, dtype=dist.dtype, device=device)
    same_bin = torch.zeros(c, width, dtype=torch.int64, device=device)
    same_lower = torch.zeros(c, width, dtype=torch.int64, device=device)
    step = workspace.rows
    starts = list(range(0, c, step))
    undecided: list[tuple[Tensor, Tensor, Tensor] | None] = [None] * len(starts)

    def run_block(index: int, ws: Workspace) -> None:
        start = starts[index]
        stop = min(start + step, c)
        if finalize is not None:
            finalize(start, stop)
        if width == 0:
            return
        d = dist[start:stop]
        same_d[start:stop] = d.gather(1, cols[start:stop])
        if not bool(is_pos[start:stop].any()):
            return
        flat, block_bins, block_lower = _bin_block(
            d, cols[start:stop], is_pos[start:stop], same_d[start:stop], ws
        )
        same_bin[start:stop] = block_bins + start * bins
        same_lower[start:stop] = block_lower
        undecided[index] = (
            flat + start * num_gallery,
            ws.bin_of.view(-1)[flat] + start * bins,
            d.reshape(-1)[flat],
        )

    for index in range(len(starts)):
        run_block(index, workspace)
    parts = [u for u in undecided if u is not None]
    if width == 0 or not parts:
        return ranks, npos

    # --- step 3: exact comparisons inside the threshold bins (whole chunk at once) --------
    t_vals, order = torch.sort(torch.where(is_pos, same_d, float("inf")), dim=1, stable=True)
    t_cols = cols.gather(1, order)
    t_mask = torch.arange(width, device=device) < npos[:, None]
    sel_vals, sel_cols = t_vals[t_mask], t_cols[t_mask]
    sel_bins = same_bin.gather(1, order)[t_mask]  # non-decreasing: rows, then distance
    sel_lower = same_lower.gather(1, order)[t_mask]
    u_flat = torch.cat([u[0] for u in parts])
    u_bins = torch.cat([u[1] for u in parts]).long()
    u_vals = torch.cat([u[2] for u in parts])
    u_cols = u_flat % num_gallery
    # thresholds of each bin: lookup tables over the chunk's bins (sel_bins is sorted); every
    # undecided entry lies in a threshold bin, so the unset entries are never read
    uniq, per_bin = torch.unique_consecutive(sel_bins, return_counts=True)
    first_of_bin, count_of_bin = workspace.bin_tables(c * bins)
    first_of_bin[uniq] = torch.cumsum(per_bin, 0) - per_bin
    count_of_bin[uniq] = per_bin
    first, count = first_of_bin[u_bins], count_of_bin[u_bins]
    # usual case: the bin holds one threshold; the other entries are expanded into pairs
    single = count == 1
    t_idx = first[single]
    pv, pc = u_vals[single], u_cols[single]
    multi = (~single).nonzero().squeeze(1)
    if multi.numel():
        m_count = count[multi]
        u_idx = torch.repeat_interleave(multi, m_count)
        offsets = torch.cumsum(m_count, 0) - m_count
        rank_in_bin = torch.arange(u_idx.numel(), device=device) - torch.repeat_interleave(
            offsets, m_count
        )
        t_idx = torch.cat([t_idx, first[u_idx] + rank_in_bin])
        pv, pc = torch.cat([pv, u_vals[u_idx]]), torch.cat([pc, u_cols[u_idx]])
    tv = sel_vals[t_idx]
    less = (pv < tv) | ((pv == tv) & (pc < sel_cols[t_idx]))
    within = torch.bincount(t_idx[less], minlength=sel_vals.numel())

    # --- step 4: remove the junk ---------------------------------------------------------
    junk = _junk_before(same_d, cols, is_junk, t_vals, t_cols, t_mask)[t_mask]
    ranks[t_mask] = sel_lower + within - junk
    return ranks, npos


def _bin_block(
    d: Tensor, cols: Tensor, is_pos: Tensor, same_d: Tensor, ws: Workspace
) -> tuple[Tensor, Tensor, Tensor]:
    """Steps 2 and 3a for a block of ``n <= ws.rows`` rows.

    Returns:
        ``(flat, same_bin, same_lower)``: the flat positions (in the block) of the entries
        that share a bin with a positive, shape (U,); the block-wide bin of every same-id
        entry, shape (n, M); the number of block entries of the same row in lower bins, for
        every same-id entry, shape (n, M).
    """
    n, num_gallery = d.shape
    bins = ws.bins
    has = is_pos.any(1)
    lo = torch.where(is_pos, same_d, float("inf")).amin(1).double()
    hi = torch.where(is_pos, same_d, float("-inf")).amax(1).double()
    lo, hi = torch.where(has, lo, 0.0), torch.where(has, hi, 0.0)
    span = hi - lo
    # t_min lands near bin 1 and t_max near bin B-2; bin B-1 collects the farther entries
    width_bin = torch.where(span > 0, span / (bins - 3), lo.abs().clamp(min=1e-30) * 2.0**-14)
    origin = torch.where(has, lo - width_bin, 0.0).to(d.dtype)
    scale = torch.where(has, (1.0 / width_bin).clamp(max=1e30), 1.0).to(d.dtype)
    values = ws.values[:n]
    torch.sub(d, origin[:, None], out=values)
    values.mul_(scale[:, None])
    values.clamp_(0, bins - 1)
    values.add_(ws.row_offset[:n])
    bin_of = ws.bin_of[:n]
    bin_of.copy_(values)  # truncation == floor for these non-negative values
    flat_bins = bin_of.view(-1)
    hist = torch.bincount(flat_bins, minlength=n * bins)
    lower = hist.cumsum(0) - hist  # entries in lower bins, earlier rows included
    same_bin = bin_of.gather(1, cols).long()
    row_start = torch.arange(n, device=d.device)[:, None] * num_gallery
    same_lower = lower[same_bin] - row_start
    pos_bins = same_bin[is_pos]
    table = ws.table
    table[pos_bins] = 1
    flags = ws.flags[: n * num_gallery]
    torch.index_select(table, 0, flat_bins, out=flags)
    table[pos_bins] = 0
    if d.device.type == "cpu":
        flat = torch.from_numpy(np.flatnonzero(flags.numpy().view(np.bool_)))
    else:
        flat = flags.nonzero().squeeze(1)
    return flat, same_bin, same_lower


def split_rows(count: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous, balanced, non-empty ranges covering ``range(count)``."""
    parts = max(1, min(parts, count))
    bounds = [count * k // parts for k in range(parts + 1)]
    return [(bounds[k], bounds[k + 1]) for k in range(parts)]


def num_workers(dist: Tensor) -> int:
    """Worker threads for ranking ``dist``: the intra-op thread count on the CPU, else 1."""
    if dist.device.type != "cpu":
        return 1
    return max(1, min(torch.get_num_threads(), _MAX_WORKERS))


class MarketAccumulator:
    """Per-query CMC/AP/INP contributions under the Market protocol, chunk by chunk.

    Args:
        gallery: the gallery ids and cameras.
        max_rank: CMC length.
    """

    def __init__(self, gallery: GalleryIndex, max_rank: int) -> None:
        self.gallery = gallery
        self.max_rank = max_rank
        self.first: list[Tensor] = []
        self.ap: list[Tensor] = []
        self.inp: list[Tensor] = []
        self.workspaces: list[Workspace] = []

    def _workspaces(self, dist: Tensor, count: int) -> list[Workspace]:
        ws = self.workspaces
        if not ws or ws[0].dtype != dist.dtype or ws[0].device != dist.device:
            ws = []
        while len(ws) < count:
            ws.append(Workspace(self.gallery.num, dist.dtype, dist.device))
        self.workspaces = ws
        return ws

    def update(
        self, dist: Tensor, q_pids: Tensor, q_camids: Tensor, finalize: Finalize | None = None
    ) -> None:
        """Add the queries of a chunk: distances (c, G), ids (c,) and cameras (c,).

        The rows are split among worker threads (see :func:`metareid.evaluation._threads.run_workers`); ``finalize`` is
        called with chunk-relative rows.
        """
        workspace_rows = Workspace.rows_for(self.gallery.num)
        parts = split_rows(
            dist.shape[0], min(num_workers(dist), -(-dist.shape[0] // workspace_rows))
        )
        workspaces = self._workspaces(dist, len(parts))
        results: list[tuple[Tensor, Tensor, Tensor]] = [None] * len(parts)  # type: ignore[list-item]

        def task(k: int) -> None:
            lo, hi = parts[k]
            shifted = None
            if finalize is not None:

                def shifted(a: int, b: int) -> None:
                    finalize(lo + a, lo + b)

            results[k] = self._rank_part(
                dist[lo:hi], q_pids[lo:hi], q_camids[lo:hi], workspaces[k], shifted
            )

        run_workers(task, len(parts))
        self.first.append(torch.cat([r[0] for r in results]))
        self.ap.append(torch.cat([r[1] for r in results]))
        self.inp.append(torch.cat([r[2] for r in results]))

    def _rank_part(
        self,
        dist: Tensor,
        q_pids: Tensor,
        q_camids: Tensor,
        workspace: Workspace,
        finalize: Finalize | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """First-positive rank (-1 if none), AP and INP of each query of a range of rows."""
        cols, is_pos, is_junk = self.gallery.same_id(q_pids, q_camids)
        ranks, npos = positive_ranks(dist, cols, is_pos, is_junk, workspace, finalize=finalize)
        ranks, npos = ranks.cpu(), npos.cpu()
        width = ranks.shape[1]
        valid = npos > 0
        position = torch.arange(1, width + 1, dtype=torch.float64)
        mask = position <= npos[:, None]
        precision = torch.where(mask, position / (ranks + 1).double(), 0.0)
        count = npos.clamp(min=1).double()
        last = ranks.gather(1, (npos - 1).clamp(min=0)[:, None])[:, 0] if width else npos
        first = torch.where(valid, ranks[:, 0] if width else npos, -1)
        return first, precision.sum(1) / count, npos.double() / (last + 1).double()

    def valid(self) -> Tensor:
        """Which queries seen so far have a positive, shape (Q,)."""
        return torch.cat(self.first) >= 0 if self.first else torch.zeros(0, dtype=torch.bool)

    def result(self) -> tuple[np.ndarray, float, float, int, int]:
        """``(cmc, mAP, mINP, num_valid, num_skipped)``; raises if no query has a match."""
        first = torch.cat(self.first)
        valid = first >= 0
        num_valid = int(valid.sum())
        if num_valid == 0:
            raise ValueError(
                f"no query has a valid match in the gallery (all {first.numel()} queries "
                "skipped): check that q_pids and g_pids use the same ids and that matches "
                "exist on other cameras"
            )
        hits = torch.bincount(first[valid].clamp(max=self.max_rank), minlength=self.max_rank + 1)
        cmc = hits[: self.max_rank].cumsum(0).numpy().astype(np.float64) / num_valid
        ap = torch.cat(self.ap)[valid].numpy()
        inp = torch.cat(self.inp)[valid].numpy()
        return cmc, float(np.mean(ap)), float(np.mean(inp)), num_valid, first.numel() - num_valid


class Cuhk03Accumulator:
    """CMC under the single-gallery-shot (CUHK03) protocol, chunk by chunk.

    For repeat ``r`` a generator ``numpy.random.default_rng([seed, r])`` draws uniform keys
    ``random((Q, G))`` row by row, queries in order (drawing chunk by chunk consumes the
    stream exactly as one draw would). For each query and each gallery id, the valid entry of
    that id with the largest key is kept (the lowest index on an exact key tie). The query's
    hit position is the number of kept entries before its kept positive in (distance, index)
    order.

    Args:
        gallery: the gallery ids and cameras.
        max_rank: CMC length.
        num_repeats: number of samplings N.
        seed: seed of the samplings.
    """

    def __init__(self, gallery: GalleryIndex, max_rank: int, num_repeats: int, seed: int) -> None:
        self.gallery = gallery
        self.max_rank = max_rank
        self.num_repeats = num_repeats
        self.generators = [np.random.default_rng([seed, r]) for r in range(num_repeats)]
        self.hits = torch.zeros(max_rank + 1, dtype=torch.int64)

    def update(self, dist: Tensor, q_pids: Tensor, q_camids: Tensor) -> None:
        """Add the queries of a chunk: final distances (c, G), ids (c,) and cameras (c,)."""
        dist = dist.cpu()
        c, num_gallery = dist.shape
        parts = split_rows(c, num_workers(dist))
        counts = [torch.zeros(self.max_rank + 1, dtype=torch.int64) for _ in parts]
        for generator in self.generators:
            keys = torch.from_numpy(generator.random((c, num_gallery)))  # rows in query order

            def task(k: int, keys: Tensor = keys) -> None:
                lo, hi = parts[k]
                counts[k] += self._hits(dist[lo:hi], q_pids[lo:hi], q_camids[lo:hi], keys[lo:hi])

            run_workers(task, len(parts))
        for part in counts:
            self.hits += part

    def _hits(self, dist: Tensor, q_pids: Tensor, q_camids: Tensor, keys: Tensor) -> Tensor:
        """Histogram of the hit positions of one sampling for a range of rows."""
        g = self.gallery
        c, num_gallery = dist.shape
        own, found = g.locate(q_pids)
        valid = ~((g.pids[None, :] == q_pids[:, None]) & (g.camids[None, :] == q_camids[:, None]))
        group = g.group[None, :].expand(c, num_gallery)
        columns = torch.arange(num_gallery)[None, :].expand(c, num_gallery)
        rows = torch.arange(c)
        keys = keys.masked_fill(~valid, -1.0)
        best = torch.full((c, len(g.unique)), -1.0, dtype=torch.float64)
        best.scatter_reduce_(1, group, keys, reduce="amax")
        is_best = (keys == best.gather(1, group)) & valid
        kept = torch.full((c, len(g.unique)), num_gallery, dtype=torch.int64)
        kept.scatter_reduce_(1, group, torch.where(is_best, columns, num_gallery), "amin")
        present = kept < num_gallery
        kept_d = dist.gather(1, kept.clamp(max=num_gallery - 1))
        own_col = kept[rows, own]
        has_match = found & present[rows, own]
        own_d = dist[rows, own_col.clamp(max=num_gallery - 1)]
        ahead = present & (
            (kept_d < own_d[:, None]) | ((kept_d == own_d[:, None]) & (kept < own_col[:, None]))
        )
        position = ahead.sum(1)[has_match]
        return torch.bincount(position.clamp(max=self.max_rank), minlength=self.max_rank + 1)

    def cmc(self, num_valid: int) -> np.ndarray:
        """CMC averaged over the repeats and the ``num_valid`` queries, shape (max_rank,)."""
        counts = self.hits[: self.max_rank].cumsum(0).numpy().astype(np.float64)
        return counts / (num_valid * self.num_repeats)
