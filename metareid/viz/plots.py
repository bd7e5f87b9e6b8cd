"""Matplotlib figures: the t-SNE scatter of Fig. 5 and training curves from a JSON-lines log.

matplotlib is an optional dependency (``pip install "metareid[viz]"``). It is imported
only when a figure is drawn, so ``import metareid.viz`` works without it; a missing
matplotlib raises ``ImportError`` with the install hint. The figures are drawn with
matplotlib's object-oriented API (:class:`matplotlib.figure.Figure`, no ``pyplot``), so
they neither need a display nor touch the global backend or open-figure state.
"""

from __future__ import annotations

import importlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from metareid._validation import as_numpy as _as_np
from metareid._validation import describe as _describe

__all__ = ["plot_training_curves", "plot_tsne"]

INSTALL_HINT = 'pip install "metareid[viz]"'
_DPI = 150
_EVAL_KEYS = ("mAP", "rank1", "rank5", "rank10", "mINP")
_LR_KEY = "lr"


def _figure(**kwargs: Any) -> Any:
    """A new :class:`matplotlib.figure.Figure`; ``ImportError`` with a hint if missing."""
    try:
        module = importlib.import_module("matplotlib.figure")
    except ImportError as error:
        raise ImportError(
            f"this figure needs matplotlib, which is not installed: {INSTALL_HINT}"
        ) from error
    return module.Figure(**kwargs)


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=_DPI)
    return out


def _check_path(path: object) -> None:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {_describe(path)}")


def plot_tsne(
    embedding: Tensor | np.ndarray,
    domains: Sequence[int] | Tensor | np.ndarray,
    path: str | os.PathLike[str],
    domain_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Scatter a 2-D embedding coloured by domain and write it as a PNG (the paper's Fig. 5).

    Each domain id ``d`` is drawn in matplotlib's colour ``f"C{d % 10}"`` (so a domain
    keeps its colour across figures), in increasing id order, with a legend. The axes carry
    no ticks: t-SNE coordinates have no unit. The parent directory of ``path`` is created if
    needed; the file is PNG whatever its suffix.

    Args:
        embedding: the points, shape (N, 2), finite (e.g. the output of
            :func:`metareid.viz.tsne`).
        domains: integer domain id of each point, shape (N,), >= 0 (e.g. 0, 1, 2 for the
            sources and 3 for the target).
        path: where to write the PNG.
        domain_names: legend label of each domain id: ``domain_names[d]`` names id ``d``,
            so it needs at least ``max(domains) + 1`` entries. Default: ``"domain d"``.
        title: the figure title, or ``None`` for none.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ImportError: if matplotlib is not installed (``pip install "metareid[viz]"``).
        TypeError: if an argument has the wrong type.
        ValueError: if the shapes disagree, ``embedding`` is not finite, a domain id is
            negative or has no name.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> import numpy as np
        >>> from metareid.viz import plot_tsne
        >>> emb = np.random.default_rng(0).normal(size=(30, 2))
        >>> domains = [0] * 10 + [1] * 10 + [2] * 10
        >>> names = ["Market-1501", "DukeMTMC-reID", "MSMT17 (target)"]
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     plot_tsne(emb, domains, Path(tmp) / "tsne.png", names).name
        'tsne.png'
    """
    emb = _as_np("embedding", embedding, "a real array of shape (N, 2)")
    if emb.dtype.kind not in "iuf":
        raise TypeError(f"embedding must be a real array of shape (N, 2), got {_describe(emb)}")
    if emb.ndim != 2 or emb.shape[1] != 2 or emb.shape[0] == 0:
        raise ValueError(f"embedding must have shape (N, 2) with N >= 1, got shape {emb.shape}")
    if not np.isfinite(emb).all():
        raise ValueError(
            f"embedding must be finite, got {int((~np.isfinite(emb)).sum())} "
            "NaN or infinite entries"
        )
    ids = _as_np("domains", domains, "a sequence of integer domain ids of shape (N,)")
    if ids.dtype.kind not in "iu" and ids.size > 0:
        raise TypeError(
            f"domains must be a sequence of integer domain ids of shape (N,), got {_describe(ids)}"
        )
    if ids.ndim != 1 or ids.shape[0] != emb.shape[0]:
        raise ValueError(
            f"domains must have shape ({emb.shape[0]},) to match embedding, got shape {ids.shape}"
        )
    ids = ids.astype(np.int64)
    if (ids < 0).any():
        raise ValueError(f"domains must be >= 0, got {sorted(set(ids[ids < 0].tolist()))}")
    present = np.unique(ids).tolist()
    if domain_names is not None:
        if isinstance(domain_names, str) or not all(isinstance(s, str) for s in domain_names):
            raise TypeError(f"domain_names must be a sequence of str, got {domain_names!r}")
        if present[-1] >= len(domain_names):
            raise ValueError(
                f"domain_names must name every domain id up to {present[-1]}, "
                f"got {len(domain_names)} names"
            )
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a str or None, got {_describe(title)}")
    _check_path(path)

    fig = _figure(figsize=(6.0, 6.0), layout="constrained")
    ax = fig.subplots()
    for d in present:
        label = domain_names[d] if domain_names is not None else f"domain {d}"
        points = emb[ids == d]
        ax.scatter(points[:, 0], points[:, 1], s=8, alpha=0.7, color=f"C{d % 10}", label=label)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(markerscale=2.0, loc="best")
    if title is not None:
        ax.set_title(title)
    return _save(fig, path)


def _read_log(log: object) -> list[Mapping[str, Any]]:
    """The records of ``log``: a JSON-lines file or a sequence of mappings."""
    if isinstance(log, (str, os.PathLike)):
        source = Path(log)
        records: list[Mapping[str, Any]] = []
        with source.open() as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(
                        f"log: line {number} of {source} is not valid JSON ({error})"
                    ) from error
                if not isinstance(record, dict):
                    raise ValueError(
                        f"log: line {number} of {source} must be a JSON object, "
                        f"got {type(record).__name__}"
                    )
                records.append(record)
        return records
    if isinstance(log, Sequence):
        for index, record in enumerate(log):
            if not isinstance(record, Mapping):
                raise TypeError(
                    f"log[{index}] must be a mapping (one log record), got {_describe(record)}"
                )
        return list(log)
    raise TypeError(
        f"log must be a path to a JSON-lines file or a sequence of dicts, got {_describe(log)}"
    )


def _number(value: object) -> float | None:
    """``value`` as a float if it is a real number (bools excluded), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _series(
    records: list[Mapping[str, Any]], kind: str, x_key: str, keys: Sequence[str]
) -> dict[str, tuple[list[float], list[float]]]:
    """``key -> (xs, ys)`` over the records of ``kind``, sorted by x (stable), non-empty only."""
    points: dict[str, list[tuple[float, float]]] = {key: [] for key in keys}
    for record in records:
        if record.get("kind") != kind:
            continue
        x = _number(record.get(x_key))
        if x is None:
            continue
        for key in keys:
            y = _number(record.get(key))
            if y is not None:
                points[key].append((x, y))
    series = {}
    for key, pairs in points.items():
        if pairs:
            pairs.sort(key=lambda pair: pair[0])
            series[key] = ([x for x, _ in pairs], [y for _, y in pairs])
    return series


def _default_keys(records: list[Mapping[str, Any]]) -> list[str]:
    """Keys ending in ``"loss"``, then ``"lr"``, in order of first appearance in iter records."""
    keys: dict[str, None] = {}
    for record in records:
        if record.get("kind") == "iter":
            for key in record:
                if isinstance(key, str) and key.endswith("loss"):
                    keys.setdefault(key)
    return [*keys, _LR_KEY]


def plot_training_curves(
    log: str | os.PathLike[str] | Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    keys: Sequence[str] | None = None,
) -> Path:
    """Draw the losses, learning rate and evaluation metrics of a training log as a PNG.

    The log holds one JSON object per line (the trainer's ``log.jsonl``), or is given as a
    sequence of such dicts. Records are read by their ``"kind"``:

    * ``"iter"``: the values named by ``keys`` against the global iteration ``"iter"``;
    * ``"eval"``: ``"mAP"``, ``"rank1"``, ``"rank5"``, ``"rank10"``, ``"mINP"`` against
      ``"epoch"``, as logged (fractions or percentages).

    Other kinds, other keys, records without their x value and values that are not numbers
    are ignored; missing keys are fine. Each curve is sorted by its x value. Up to three
    panels are drawn side by side, each only if it has data: "loss" (every selected key but
    ``"lr"``), "learning rate" (``"lr"``, log scale when positive) and "evaluation". The
    parent directory of ``path`` is created if needed; the file is PNG whatever its suffix.

    Args:
        log: path to a JSON-lines log, or a sequence of record dicts.
        path: where to write the PNG.
        keys: the ``"iter"`` values to draw. Default ``None``: every key ending in
            ``"loss"`` (e.g. ``"loss"``, ``"meta_train_loss"``, ``"meta_test_loss"``) in
            order of first appearance, and ``"lr"``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ImportError: if matplotlib is not installed (``pip install "metareid[viz]"``).
        TypeError: if ``log``, one of its records, ``keys`` or ``path`` has the wrong type.
        ValueError: if a line of the log file is not a JSON object, or the log holds nothing
            to draw.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from metareid.viz import plot_training_curves
        >>> log = [{"kind": "iter", "epoch": 0, "iter": i, "loss": 5.0 / i, "lr": 3.5e-4}
        ...        for i in range(1, 50)]
        >>> log.append({"kind": "eval", "epoch": 0, "mAP": 31.2, "rank1": 55.0})
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     plot_training_curves(log, Path(tmp) / "curves.png").name
        'curves.png'
    """
    records = _read_log(log)
    if keys is not None:
        if isinstance(keys, str) or not all(isinstance(k, str) for k in keys):
            raise TypeError(f"keys must be a sequence of str or None, got {keys!r}")
        selected = list(dict.fromkeys(keys))
    else:
        selected = _default_keys(records)
    _check_path(path)

    iter_series = _series(records, "iter", "iter", selected)
    losses = {k: v for k, v in iter_series.items() if k != _LR_KEY}
    lr = iter_series.get(_LR_KEY)
    metrics = _series(records, "eval", "epoch", _EVAL_KEYS)
    panels = int(bool(losses)) + int(lr is not None) + int(bool(metrics))
    if panels == 0:
        raise ValueError(
            f"log holds nothing to draw: no 'iter' record with 'iter' and one of {selected} "
            f"and no 'eval' record with 'epoch' and one of {list(_EVAL_KEYS)} "
            f"({len(records)} records read)"
        )

    fig = _figure(figsize=(5.0 * panels, 3.8), layout="constrained")
    axes = list(np.atleast_1d(fig.subplots(1, panels)))
    if losses:
        ax = axes.pop(0)
        for key, (xs, ys) in losses.items():
            ax.plot(xs, ys, label=key, linewidth=1.0)
        ax.set(xlabel="iteration", ylabel="loss", title="loss")
        ax.legend()
    if lr is not None:
        ax = axes.pop(0)
        ax.plot(*lr, color="C7", linewidth=1.0)
        if all(v > 0 and math.isfinite(v) for v in lr[1]):
            ax.set_yscale("log")
        ax.set(xlabel="iteration", ylabel="lr", title="learning rate")
    if metrics:
        ax = axes.pop(0)
        for key, (xs, ys) in metrics.items():
            ax.plot(xs, ys, marker="o", label=key)
        ax.set(xlabel="epoch", ylabel="value", title="evaluation")
        ax.legend()
    return _save(fig, path)
