"""Files of the ``extract`` and ``search`` commands: embeddings (``.npz``) and rankings.

An embeddings file is a numpy ``.npz`` (read with ``allow_pickle=False``) holding
``features`` (N, D) float32, ``names`` (N,) strings (file paths relative to ``root``, with
``/`` separators), ``root`` (the folder, a 0-d string) and ``metadata`` (a 0-d JSON string,
see :meth:`metareid.FeatureExtractor.metadata`).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["Embeddings", "load_embeddings", "save_embeddings", "save_rankings"]


class Embeddings(NamedTuple):
    """The content of an embeddings file.

    Attributes:
        features: (N, D) float32.
        names: N file names relative to ``root``.
        root: the folder the names are relative to.
        metadata: the extractor's metadata dict.
    """

    features: np.ndarray
    names: list[str]
    root: str
    metadata: dict[str, Any]

    @property
    def paths(self) -> list[Path]:
        """The N files, ``root / name``."""
        return [Path(self.root) / name for name in self.names]


def save_embeddings(
    path: str | os.PathLike[str],
    features: Tensor | np.ndarray,
    names: Sequence[str],
    root: str | os.PathLike[str] = "",
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write an embeddings file (see the module notes); returns its path.

    Raises:
        ValueError: if ``features`` is not (N, D) with one name per row.

    Example:
        >>> import tempfile, os
        >>> p = save_embeddings(os.path.join(tempfile.mkdtemp(), "f.npz"), np.eye(2), ["a.jpg", "b.jpg"])
        >>> load_embeddings(p).names
        ['a.jpg', 'b.jpg']
    """
    array = features.detach().cpu().numpy() if isinstance(features, Tensor) else features
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] != len(names):
        raise ValueError(
            f"features must have shape (N, D) with N = len(names) = {len(names)}, got shape "
            f"{array.shape}"
        )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as f:  # a file object: numpy does not append ".npz"
        np.savez(
            f,
            features=array,
            names=np.array([str(n) for n in names], dtype=np.str_),
            root=np.array(os.fspath(root), dtype=np.str_),
            metadata=np.array(json.dumps(metadata or {}), dtype=np.str_),
        )
    return out


def load_embeddings(path: str | os.PathLike[str]) -> Embeddings:
    """Read an embeddings file written by :func:`save_embeddings` (or ``metareid extract``).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if it is not an embeddings file.

    Example:
        >>> import tempfile, os
        >>> p = save_embeddings(os.path.join(tempfile.mkdtemp(), "f.npz"), np.ones((1, 3)), ["x.png"])
        >>> load_embeddings(p).features.shape
        (1, 3)
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"embeddings file {str(p)!r} does not exist")
    try:
        with np.load(p, allow_pickle=False) as data:
            features = np.asarray(data["features"], dtype=np.float32)
            names = [str(n) for n in data["names"].tolist()]
            root = str(data["root"]) if "root" in data else ""
            metadata = json.loads(str(data["metadata"])) if "metadata" in data else {}
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(
            f"{str(p)!r} is not an embeddings file written by metareid extract "
            f"(needs 'features' and 'names'): {err}"
        ) from err
    if features.ndim != 2 or features.shape[0] != len(names):
        raise ValueError(
            f"{str(p)!r}: features of shape {features.shape} do not match {len(names)} names"
        )
    return Embeddings(features, names, root, metadata)


def save_rankings(
    path: str | os.PathLike[str],
    query_names: Sequence[str],
    gallery_names: Sequence[str],
    indices: Tensor | np.ndarray,
    distances: Tensor | np.ndarray,
    file_format: str | None = None,
) -> Path:
    """Write ranked lists as CSV (``query,rank,gallery,distance``) or JSON.

    JSON holds one object per query: ``{"query": name, "results": [{"rank": 1,
    "gallery": name, "distance": d}, ...]}``. Ranks start at 1.

    Args:
        path: the output file.
        query_names: Q names.
        gallery_names: G names.
        indices: gallery indices (Q, k), nearest first (:func:`topk_search`).
        distances: their distances (Q, k).
        file_format: ``"csv"`` or ``"json"``; ``None`` (default): from the suffix of
            ``path`` (``.json`` is JSON, anything else CSV).

    Raises:
        ValueError: for an unknown ``file_format`` or shapes that disagree.

    Example:
        >>> import tempfile, os
        >>> p = save_rankings(os.path.join(tempfile.mkdtemp(), "r.csv"), ["q.jpg"],
        ...                   ["a.jpg", "b.jpg"], [[1, 0]], [[0.5, 0.75]])
        >>> print(p.read_text().strip())
        query,rank,gallery,distance
        q.jpg,1,b.jpg,0.5
        q.jpg,2,a.jpg,0.75
    """
    out = Path(path)
    fmt = file_format or ("json" if out.suffix.lower() == ".json" else "csv")
    if fmt not in ("csv", "json"):
        raise ValueError(f"file_format must be 'csv', 'json' or None, got {file_format!r}")
    idx = torch.as_tensor(indices).cpu().numpy()
    dist = torch.as_tensor(distances).cpu().numpy()
    if idx.ndim != 2 or idx.shape != dist.shape or idx.shape[0] != len(query_names):
        raise ValueError(
            f"indices and distances must both have shape (Q, k) with Q = {len(query_names)}, "
            f"got {idx.shape} and {dist.shape}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "json":
        records = [
            {
                "query": query_names[q],
                "results": [
                    {"rank": r + 1, "gallery": gallery_names[int(g)], "distance": float(d)}
                    for r, (g, d) in enumerate(zip(idx[q], dist[q], strict=True))
                ],
            }
            for q in range(idx.shape[0])
        ]
        out.write_text(json.dumps(records, indent=1) + "\n")
        return out
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["query", "rank", "gallery", "distance"])
        for q in range(idx.shape[0]):
            for r, (g, d) in enumerate(zip(idx[q], dist[q], strict=True)):
                writer.writerow([query_names[q], r + 1, gallery_names[int(g)], repr(float(d))])
    return out
