"""Query-to-gallery distances for retrieval evaluation, computed chunk by chunk.

Two metrics:

- ``"euclidean"``: the *squared* Euclidean distance ``|x|^2 + |y|^2 - 2 x.y``, as the
  published M3L code uses (on L2-normalised features, which :func:`extract_features`
  produces by default). It is computed from a matrix product, so it can be slightly negative
  (about -1e-7 for float32) for identical vectors; nothing is clamped. The features are
  used as given: this function never normalises them.
- ``"cosine"``: ``1 - x.y / (|x| |y|)`` (norms clamped below at 1e-12), in [0, 2].

Every chunk is one ``torch.mm`` followed by elementwise operations that do not depend on
the chunk's shape, and the norms are computed once on the whole inputs, so chunking does
not change the elementwise arithmetic. The products themselves come from the BLAS library,
which may sum in a different order for different matrix shapes; for float32 features this
moves a distance by a few units in the last place at most.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch
from torch import Tensor

from metareid._validation import as_feature_pair, check_choice, check_positive_int
from metareid.evaluation._threads import single_threaded

__all__ = ["METRICS", "Metric", "compute_distance", "iter_distance_chunks"]

Metric = Literal["euclidean", "cosine"]
METRICS: tuple[str, ...] = ("euclidean", "cosine")
_NORM_EPS = 1e-12


def _row_terms(x: Tensor, metric: str, rows: int = 256) -> Tensor:
    """Squared norms (euclidean) or inverse norms (cosine) of the rows of ``x``, shape (N,).

    Computed in fixed blocks of rows (no (N, D) temporary); the block size does not depend
    on the caller, so the same tensor always gives the same bits.
    """
    out = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for start in range(0, x.shape[0], rows):
        block = x[start : start + rows]
        if metric == "euclidean":
            out[start : start + rows] = (block * block).sum(1)
        else:
            norm = torch.linalg.vector_norm(block, dim=1).clamp(min=_NORM_EPS)
            out[start : start + rows] = 1.0 / norm
    return out


class PairwiseDistance:
    """Distances from any rows of ``x`` to all rows of ``y``, one chunk at a time (private).

    The norm terms of both sides are computed once, here, on the full inputs.

    Args:
        x: shape (N, D).
        y: shape (M, D), same dtype and device as ``x``.
        metric: ``"euclidean"`` (squared) or ``"cosine"``.
    """

    def __init__(self, x: Tensor, y: Tensor, metric: str) -> None:
        self.x, self.y, self.metric = x, y, metric
        # row blocks on one thread: fixed summation order, no OpenMP barriers (see _threads)
        self.x_aux = single_threaded(lambda: _row_terms(x, metric))
        self.y_aux = self.x_aux if y is x else single_threaded(lambda: _row_terms(y, metric))

    def products(self, start: int, stop: int, out: Tensor) -> Tensor:
        """Write ``(c * x[start:stop]) @ y.T`` into ``out`` (shape (stop - start, M)).

        ``c`` is -2 (euclidean) or -1 (cosine): a power of two, so the scaled product is
        exactly ``c`` times the plain one, whatever order the BLAS library sums in.
        """
        scale = -2.0 if self.metric == "euclidean" else -1.0
        return torch.mm(self.x[start:stop] * scale, self.y.T, out=out)

    def finalize(self, block: Tensor, start: int) -> None:
        """Turn the products of rows ``start..start+len(block)`` into distances, in place.

        Euclidean: ``(-2 x.y + |y|^2) + |x|^2``; cosine: ``(-x.y / |y|) / |x| + 1``.
        """
        x_aux = self.x_aux[start : start + block.shape[0], None]
        if self.metric == "euclidean":
            block.add_(self.y_aux).add_(x_aux)
        else:
            block.mul_(self.y_aux).mul_(x_aux).add_(1.0)

    def rows(self, start: int, stop: int, out: Tensor | None = None) -> Tensor:
        """Distances of rows ``start..stop`` of ``x`` to all of ``y``, shape (stop - start, M)."""
        if out is None:
            out = torch.empty(
                stop - start, self.y.shape[0], dtype=self.x.dtype, device=self.x.device
            )
        self.products(start, stop, out)
        self.finalize(out, start)
        return out


def _prepare(
    x: object, y: object, metric: object, chunk_size: object
) -> tuple[PairwiseDistance, int]:
    name = check_choice("metric", metric, METRICS)
    size = check_positive_int("chunk_size", chunk_size)
    xt, yt = as_feature_pair("x", x, "y", y)
    return PairwiseDistance(xt, yt, name), size


def iter_distance_chunks(
    x: Tensor, y: Tensor, metric: Metric = "euclidean", chunk_size: int = 1024
) -> Iterator[tuple[int, Tensor]]:
    """Yield the distances from ``chunk_size`` rows of ``x`` at a time to all rows of ``y``.

    Only one chunk of shape (chunk_size, M) exists at a time, so the full (N, M) matrix is
    never materialised. Features are used as given (never normalised).

    Args:
        x: features, shape (N, D); a tensor or a numpy array.
        y: features, shape (M, D).
        metric: ``"euclidean"`` (squared Euclidean, default) or ``"cosine"``.
        chunk_size: rows of ``x`` per chunk, >= 1. Default 1024.

    Yields:
        ``(start, chunk)``: the first row of ``x`` in the chunk and its distances, shape
        (min(chunk_size, N - start), M), a new tensor each time.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: shapes do not match, features are not finite, unknown metric.

    Example:
        >>> import torch
        >>> from metareid.evaluation import iter_distance_chunks
        >>> x, y = torch.eye(3), torch.eye(3)
        >>> [(start, tuple(d.shape)) for start, d in iter_distance_chunks(x, y, chunk_size=2)]
        [(0, (2, 3)), (2, (1, 3))]
    """
    engine, size = _prepare(x, y, metric, chunk_size)
    num = engine.x.shape[0]
    for start in range(0, num, size):
        yield start, engine.rows(start, min(start + size, num))


def compute_distance(
    x: Tensor, y: Tensor, metric: Metric = "euclidean", chunk_size: int = 1024
) -> Tensor:
    """Distance matrix between the rows of ``x`` and ``y``, computed ``chunk_size`` rows at a time.

    The values are those that :func:`evaluate_features` computes internally with the same
    metric (see the module notes on BLAS summation order). Features are used as given: L2-
    normalise them first (or use ``metric="cosine"``) to reproduce the published protocol.

    Args:
        x: query features, shape (Q, D); a tensor or a numpy array.
        y: gallery features, shape (G, D).
        metric: ``"euclidean"`` (squared Euclidean, default) or ``"cosine"``.
        chunk_size: rows of ``x`` per matrix product, >= 1. Default 1024.

    Returns:
        Distances of shape (Q, G), dtype of the promoted inputs, on their device.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: shapes do not match, features are not finite, unknown metric.

    Example:
        >>> import torch
        >>> from metareid.evaluation import compute_distance
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
        >>> compute_distance(x, x)
        tensor([[0., 5.],
                [5., 0.]])
        >>> compute_distance(x, x, metric="cosine")
        tensor([[0., 1.],
                [1., 0.]])
    """
    engine, size = _prepare(x, y, metric, chunk_size)
    num = engine.x.shape[0]
    out = torch.empty(num, engine.y.shape[0], dtype=engine.x.dtype, device=engine.x.device)
    for start in range(0, num, size):
        stop = min(start + size, num)
        engine.rows(start, stop, out=out[start:stop])
    return out
