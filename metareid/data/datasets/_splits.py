"""Random evaluation splits of the small datasets, drawn once from a fixed seed and kept in a file.

PRID, VIPeR and iLIDS ship no standard partition: the community draws 10 random splits and
keeps them in a JSON file next to the data (torchreid's ``splits*.json``). metareid does the
same with :data:`SPLIT_SEED`: the splits are drawn with ``numpy.random.default_rng`` (PCG64,
the same stream on every platform and NumPy version that has it) from the **sorted** ids and
file names, so two machines with the same files write the same file. It is written on first
use and read back afterwards, so later runs evaluate on exactly the same splits even if the
drawing code changed.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "NUM_SPLITS",
    "SPLIT_FILE_NAME",
    "SPLIT_SEED",
    "DrawSplit",
    "Split",
    "check_split_id",
    "half_split",
    "load_or_create_splits",
    "split_mismatch",
]

SPLIT_SEED = 0
"""Seed of the random splits of PRID, VIPeR and iLIDS."""

NUM_SPLITS = 10
"""Number of random splits, as in the papers that report these datasets."""

SPLIT_FILE_NAME = "metareid_splits.json"
"""Name of the split file, written in the dataset's root folder."""

_FORMAT = 1

Split = dict[str, list[Any]]
DrawSplit = Callable[[np.random.Generator], Split]


def load_or_create_splits(
    path: Path, dataset: str, draw: DrawSplit, keys: tuple[str, ...]
) -> list[Split]:
    """The splits stored in ``path``, or :data:`NUM_SPLITS` new ones drawn and written there.

    Args:
        path: the split file.
        dataset: dataset name, stored in the file and checked when it is read back.
        draw: draws one split from the generator; it is called :data:`NUM_SPLITS` times on
            one ``default_rng(SPLIT_SEED)`` stream.
        keys: the lists every split holds (e.g. ``("train", "test")``).

    Returns:
        The splits, each a dict of lists.

    Raises:
        ValueError: the file exists but is not valid JSON, belongs to another dataset or
            lacks one of ``keys``; the message names the file and says to delete it.

    Example:
        >>> import tempfile
        >>> def draw(rng):
        ...     return {"train": sorted(int(i) for i in rng.permutation(4)[:2])}
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     first = load_or_create_splits(Path(tmp) / "s.json", "toy", draw, ("train",))
        ...     again = load_or_create_splits(Path(tmp) / "s.json", "toy", draw, ("train",))
        >>> len(first), first == again
        (10, True)
    """
    if path.is_file():
        return _read(path, dataset, keys)
    rng = np.random.default_rng(SPLIT_SEED)
    splits = [draw(rng) for _ in range(NUM_SPLITS)]
    head = json.dumps({"dataset": dataset, "format": _FORMAT, "seed": SPLIT_SEED})[:-1]
    body = ",\n".join(json.dumps(split) for split in splits)  # one split per line
    try:
        _write_atomic(path, f'{head}, "splits": [\n{body}\n]}}\n')
    except OSError as err:
        warnings.warn(
            f"{dataset}: could not write the split file '{path}' ({err}); using the splits "
            "drawn in memory (the same ones, from the same seed). Pass split_file= to keep "
            "them elsewhere.",
            stacklevel=3,
        )
    return splits


def _read(path: Path, dataset: str, keys: tuple[str, ...]) -> list[Split]:
    fix = "delete it to draw the splits again"
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{dataset}: split file '{path}' is not valid JSON ({err}); {fix}"
        ) from err
    if not isinstance(content, dict) or content.get("dataset") != dataset:
        found = content.get("dataset") if isinstance(content, dict) else type(content).__name__
        raise ValueError(
            f"{dataset}: split file '{path}' belongs to {found!r}, not {dataset!r}; {fix}"
        )
    splits = content.get("splits")
    valid = isinstance(splits, list) and all(
        isinstance(s, dict) and all(isinstance(s.get(k), list) for k in keys) for s in splits
    )
    if not valid or not splits:
        raise ValueError(
            f"{dataset}: split file '{path}' must hold 'splits', a list of objects with the "
            f"lists {list(keys)}; {fix}"
        )
    assert isinstance(splits, list)
    return splits


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so a reader never sees half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_split_id(dataset: str, split_id: object, num_splits: int) -> int:
    """Return ``split_id`` if it is an int in ``[0, num_splits)``, raise otherwise."""
    if isinstance(split_id, bool) or not isinstance(split_id, (int, np.integer)):
        raise TypeError(
            f"{dataset}: split_id must be an int in [0, {num_splits}), got {split_id!r}"
        )
    if not 0 <= split_id < num_splits:
        raise ValueError(f"{dataset}: split_id must lie in [0, {num_splits}), got {split_id}")
    return int(split_id)


def split_mismatch(dataset: str, path: Path, what: str) -> ValueError:
    """The error for a split file that names ids or files the data does not have."""
    return ValueError(
        f"{dataset}: split file '{path}' does not match the data: {what}. The files changed "
        "since the splits were drawn; delete the split file to draw them again (results on "
        "the new splits are not comparable with the old ones)"
    )


def half_split(ids: list[int]) -> DrawSplit:
    """A split drawer: half of the sorted ``ids`` (rounded down) train, the rest test.

    Example:
        >>> half_split([5, 1, 3, 2])(np.random.default_rng(0))
        {'train': [1, 3], 'test': [2, 5]}
    """
    ordered = sorted(ids)

    def draw(rng: np.random.Generator) -> Split:
        order = rng.permutation(len(ordered))
        half = len(ordered) // 2
        train = sorted(ordered[i] for i in order[:half])
        test = sorted(ordered[i] for i in order[half:])
        return {"train": train, "test": test}

    return draw


def select_split(
    dataset: str,
    root: Path,
    split_file: str | Path | None,
    name: str,
    draw: DrawSplit,
    keys: tuple[str, ...],
    split_id: int,
) -> tuple[Path, Split]:
    """The split file of a random-split test set and its split ``split_id``.

    ``split_file`` defaults to ``root / SPLIT_FILE_NAME``; the splits are read from it or
    drawn and written there (:func:`load_or_create_splits`); ``split_id`` is checked against
    the number of splits the file holds. The caller checks that the split fits its data.

    Args:
        dataset: class name, for error messages.
        root: the dataset root.
        split_file: an explicit split file, or ``None``.
        name: dataset name stored in the file.
        draw: draws one split (see :func:`load_or_create_splits`).
        keys: the lists every split holds.
        split_id: which split.

    Returns:
        ``(path of the split file, the split)``.

    Example:
        >>> import tempfile
        >>> def draw(rng):
        ...     return {"train": sorted(int(i) for i in rng.permutation(4)[:2])}
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path, split = select_split("Toy", Path(tmp), None, "toy", draw, ("train",), 3)
        >>> path.name == SPLIT_FILE_NAME, len(split["train"])
        (True, 2)
    """
    path = Path(split_file) if split_file is not None else root / SPLIT_FILE_NAME
    splits = load_or_create_splits(path, name, draw, keys)
    return path, splits[check_split_id(dataset, split_id, len(splits))]
