"""Retrieval grids: each query next to its top-k gallery images, matches framed in green.

Drawn with Pillow only (a dependency of torchvision), so no optional extra is needed.
The ranking follows the Market-1501 protocol used by :func:`metareid.evaluation.evaluate_rank`:
gallery images with the query's id AND camera are removed, every other image is ranked by
increasing distance, ties by gallery index (a stable sort).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from metareid._validation import as_numpy as _as_np
from metareid._validation import check_int
from metareid._validation import describe as _describe

__all__ = ["retrieval_grid"]

BORDER = 4  # frame width around every image, pixels
LABEL_HEIGHT = 14  # strip under every framed image holding "query" or the rank
PAD = 4  # space between cells and around the grid
SEPARATOR = 12  # extra space between the query column and the first gallery column
BACKGROUND = (255, 255, 255)
QUERY_COLOR = (30, 100, 220)  # blue
MATCH_COLOR = (0, 170, 0)  # green: same identity as the query
MISMATCH_COLOR = (220, 0, 0)  # red: another identity
UNLABELLED_COLOR = (150, 150, 150)  # grey: identities unknown
TEXT_COLOR = (0, 0, 0)

PathLike = str | os.PathLike[str]


def _as_ids(name: str, value: object, length: int, like: str) -> np.ndarray:
    expected = "a 1-D integer array, tensor or sequence of ids"
    ids = _as_np(name, value, expected)
    if ids.dtype.kind not in "iu" and not (ids.size == 0 and ids.dtype.kind == "f"):
        raise TypeError(f"{name} must be {expected}, got {_describe(ids)}")
    if ids.ndim != 1 or ids.shape[0] != length:
        raise ValueError(f"{name} must have shape ({length},) (= {like}), got shape {ids.shape}")
    return ids.astype(np.int64)


def _as_paths(name: str, value: object, length: int, like: str) -> list[PathLike]:
    if isinstance(value, (str, os.PathLike)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a sequence of image paths, got {_describe(value)}")
    if len(value) != length:
        raise ValueError(f"{name} must hold {length} paths (= {like}), got {len(value)}")
    for index, item in enumerate(value):
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"{name}[{index}] must be a str or os.PathLike, got {_describe(item)}")
    return list(value)


def _valid_queries(
    q_pids: np.ndarray, g_pids: np.ndarray, q_camids: np.ndarray, g_camids: np.ndarray
) -> np.ndarray:
    """Indices of the queries with a gallery image of their id from another camera, (V,)."""
    num_q = len(q_pids)
    pairs = np.stack([np.concatenate([q_pids, g_pids]), np.concatenate([q_camids, g_camids])], 1)
    _, pid_group = np.unique(pairs[:, 0], return_inverse=True)
    _, pair_group = np.unique(pairs, axis=0, return_inverse=True)
    pid_group, pair_group = pid_group.reshape(-1), pair_group.reshape(-1)
    same_id = np.bincount(pid_group[num_q:], minlength=pid_group.max() + 1)
    same_id_cam = np.bincount(pair_group[num_q:], minlength=pair_group.max() + 1)
    has_match = same_id[pid_group[:num_q]] > same_id_cam[pair_group[:num_q]]
    return np.flatnonzero(has_match)


def _cell_origin(row: int, col: int, cell_w: int, cell_h: int) -> tuple[int, int]:
    x = PAD + col * (cell_w + PAD) + (SEPARATOR if col > 0 else 0)
    y = PAD + row * (cell_h + LABEL_HEIGHT + PAD)
    return x, y


def retrieval_grid(
    distmat: Tensor | np.ndarray,
    query_paths: Sequence[PathLike],
    gallery_paths: Sequence[PathLike],
    q_pids: Sequence[int] | Tensor | np.ndarray | None,
    g_pids: Sequence[int] | Tensor | np.ndarray | None,
    q_camids: Sequence[int] | Tensor | np.ndarray | None,
    g_camids: Sequence[int] | Tensor | np.ndarray | None,
    path: PathLike,
    num_queries: int = 8,
    topk: int = 10,
    seed: int = 0,
    image_size: tuple[int, int] = (128, 64),
) -> Path:
    """Write a PNG with one row per query: the query image, then its top-k gallery images.

    Queries are drawn without replacement by ``numpy.random.default_rng(seed)`` from those
    with at least one valid match (a gallery image of the same id from another camera) and
    shown in increasing query index: ``min(num_queries, #valid)`` rows. Each row is ranked
    under the Market-1501 protocol: gallery images with the query's id AND camera are
    removed, the rest sorted by increasing distance, ties by gallery index.

    Layout, with ``(H, W) = image_size`` and ``k = min(topk, G)``: every image is resized to
    ``W x H``, framed by a ``BORDER = 4`` pixel border (blue for the query, green when the
    gallery image has the query's id, red otherwise) and has a ``LABEL_HEIGHT = 14`` pixel
    strip below it with ``"query"`` or the 1-based rank. Cells are ``PAD = 4`` pixels apart
    and from the edges, with ``SEPARATOR = 12`` more pixels after the query column. The
    image is therefore

    * ``PAD + (k + 1) * (W + 2 * BORDER + PAD) + SEPARATOR`` pixels wide and
    * ``PAD + rows * (H + 2 * BORDER + LABEL_HEIGHT + PAD)`` pixels high.

    A row whose query has fewer than ``k`` gallery images left after the removal ends with
    empty cells. Without identities (all four id arguments ``None``, e.g. your own
    unlabelled images) every query may be drawn, nothing is removed and the gallery frames
    are grey (``UNLABELLED_COLOR``). Only the drawn images are opened (converted to RGB). The parent directory
    of ``path`` is created if needed; the file is PNG whatever its suffix.

    Args:
        distmat: query-gallery distances, shape (Q, G) (smaller is closer); only the rows
            of the drawn queries are read and must be finite.
        query_paths: image file of each query, length Q.
        gallery_paths: image file of each gallery entry, length G.
        q_pids: query identities, shape (Q,), or ``None`` (unlabelled, see above).
        g_pids: gallery identities, shape (G,), or ``None``.
        q_camids: query cameras, shape (Q,), or ``None``.
        g_camids: gallery cameras, shape (G,), or ``None``.
        path: where to write the PNG.
        num_queries: how many queries (rows) to draw, >= 1. Default 8.
        topk: how many gallery images per query, >= 1. Default 10.
        seed: seed of the query selection, >= 0. Default 0.
        image_size: ``(height, width)`` of every drawn image, in pixels. Default
            ``(128, 64)``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        TypeError: if an argument has the wrong type.
        ValueError: if a length or shape disagrees with ``distmat``, a number is out of
            range, no query has a valid match, or a drawn row of ``distmat`` is not finite.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> import numpy as np
        >>> from PIL import Image
        >>> from metareid.viz import retrieval_grid
        >>> tmp = tempfile.TemporaryDirectory()
        >>> files = []
        >>> for i in range(5):
        ...     files.append(Path(tmp.name) / f"{i}.png")
        ...     Image.new("RGB", (16, 32), (50 * i, 0, 0)).save(files[-1])
        >>> dist = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
        >>> out = retrieval_grid(dist, files[:2], files[2:], [1, 2], [1, 2, 1], [0, 0], [1, 1, 1],
        ...                      Path(tmp.name) / "grid.png", topk=3, image_size=(32, 16))
        >>> Image.open(out).size  # (4 + 4 * (16 + 8 + 4) + 12, 4 + 2 * (32 + 8 + 14 + 4))
        (128, 120)
        >>> tmp.cleanup()
    """
    expected = "a 2-D real array or tensor of distances of shape (Q, G)"
    if not isinstance(distmat, (Tensor, np.ndarray)):
        raise TypeError(f"distmat must be {expected}, got {_describe(distmat)}")
    if distmat.ndim != 2 or distmat.shape[0] == 0 or distmat.shape[1] == 0:
        raise ValueError(f"distmat must be {expected}, got shape {tuple(distmat.shape)}")
    if isinstance(distmat, Tensor):
        if distmat.is_complex() or distmat.dtype == torch.bool:
            raise TypeError(f"distmat must be {expected}, got {_describe(distmat)}")
    elif distmat.dtype.kind not in "iuf":
        raise TypeError(f"distmat must be {expected}, got {_describe(distmat)}")
    num_q, num_g = int(distmat.shape[0]), int(distmat.shape[1])
    q_files = _as_paths("query_paths", query_paths, num_q, "distmat.shape[0]")
    g_files = _as_paths("gallery_paths", gallery_paths, num_g, "distmat.shape[1]")
    labelled = not all(v is None for v in (q_pids, g_pids, q_camids, g_camids))
    if labelled:
        qp = _as_ids("q_pids", q_pids, num_q, "distmat.shape[0]")
        gp = _as_ids("g_pids", g_pids, num_g, "distmat.shape[1]")
        qc = _as_ids("q_camids", q_camids, num_q, "distmat.shape[0]")
        gc = _as_ids("g_camids", g_camids, num_g, "distmat.shape[1]")
    else:
        qp, qc = np.zeros(num_q, np.int64), np.zeros(num_q, np.int64)
        gp, gc = np.ones(num_g, np.int64), np.ones(num_g, np.int64)
    num_queries = check_int("num_queries", num_queries, 1)
    topk = check_int("topk", topk, 1)
    seed = check_int("seed", seed, 0)
    if (
        not isinstance(image_size, (tuple, list))
        or len(image_size) != 2
        or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) for s in image_size)
    ):
        raise TypeError(f"image_size must be a pair of ints (height, width), got {image_size!r}")
    if min(image_size) < 1:
        raise ValueError(f"image_size must be >= 1 in both dimensions, got {image_size!r}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {_describe(path)}")

    valid = _valid_queries(qp, gp, qc, gc) if labelled else np.arange(num_q)
    if len(valid) == 0:
        raise ValueError(
            "q_pids: no query has a gallery image of its id from another camera "
            f"(checked {num_q} queries against {num_g} gallery images)"
        )
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(valid, size=min(num_queries, len(valid)), replace=False))
    k = min(topk, num_g)

    ranked: list[np.ndarray] = []
    for q in chosen.tolist():
        row = distmat[q]
        dist = np.asarray(row.detach().cpu().numpy() if isinstance(row, Tensor) else row)
        dist = dist.astype(np.float64)
        if not np.isfinite(dist).all():
            raise ValueError(
                f"distmat must be finite in the drawn rows, got NaN or infinite entries in row {q}"
            )
        keep = np.flatnonzero(~((gp == qp[q]) & (gc == qc[q])))
        ranked.append(keep[np.argsort(dist[keep], kind="stable")[:k]])

    height, width = int(image_size[0]), int(image_size[1])
    cell_w, cell_h = width + 2 * BORDER, height + 2 * BORDER
    canvas = Image.new(
        "RGB",
        (
            PAD + (k + 1) * (cell_w + PAD) + SEPARATOR,
            PAD + len(chosen) * (cell_h + LABEL_HEIGHT + PAD),
        ),
        BACKGROUND,
    )
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    cache: dict[PathLike, Image.Image] = {}

    def load(file: PathLike) -> Image.Image:
        if file not in cache:
            with Image.open(file) as image:
                cache[file] = image.convert("RGB").resize(
                    (width, height), Image.Resampling.BILINEAR
                )
        return cache[file]

    def cell(row: int, col: int, file: PathLike, color: tuple[int, int, int], text: str) -> None:
        x, y = _cell_origin(row, col, cell_w, cell_h)
        canvas.paste(color, (x, y, x + cell_w, y + cell_h))
        canvas.paste(load(file), (x + BORDER, y + BORDER))
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        if right - left > cell_w and text == "query":  # narrow images: abbreviate
            text = "q"
            left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tx = x + (cell_w - (right - left)) // 2 - left
        ty = y + cell_h + (LABEL_HEIGHT - (bottom - top)) // 2 - top
        draw.text((tx, ty), text, fill=TEXT_COLOR, font=font)

    for r, (q, order) in enumerate(zip(chosen.tolist(), ranked, strict=True)):
        cell(r, 0, q_files[q], QUERY_COLOR, "query")
        for rank, g in enumerate(order.tolist(), start=1):
            color = MATCH_COLOR if gp[g] == qp[q] else MISMATCH_COLOR
            color = color if labelled else UNLABELLED_COLOR
            cell(r, rank, g_files[g], color, str(rank))

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, format="PNG")
    return out
