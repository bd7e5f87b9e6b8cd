"""Decode every image of a dataset before a run: :func:`check_images`.

A corrupt or empty image file otherwise stops training with a :class:`BadImageError` only
when the loader reaches it, possibly hours in. :func:`check_images` decodes a list of files
the way the loader does (:func:`~metareid.data.load_image`: the whole image, not only its
header) in a pool of processes and returns every file that fails, with the reason;
:func:`dataset_image_paths` lists the files of datasets' splits and
:func:`format_bad_images` writes the report. ``metareid datasets --verify`` and
``metareid train --verify-data`` (:attr:`TrainConfig.verify_data
<metareid.engine.TrainConfig.verify_data>`) are built on them.

Processes, not threads: on a shared 2-core machine, 2,000 JPEGs of 64 x 128 pixels (from
the page cache) decoded in 0.17-0.22 s with 2 processes, 0.31-0.36 s with 2 threads and
0.24-0.25 s in one thread (best of several rounds, ``benchmarks/verify_images.py``): Pillow
holds the GIL while it opens and converts a file, which is much of the work for small
crops, so threads slow it down.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from metareid._validation import check_nonnegative_int
from metareid.data.datasets.base import BadImageError, ReIDDataset, load_image

__all__ = ["BadImage", "check_images", "dataset_image_paths", "format_bad_images"]

SERIAL_BELOW = 256
"""Lists shorter than this are decoded in the calling process: starting a pool costs more."""

PLAIN_PROGRESS_EVERY_S = 30.0
"""Seconds between two plain progress lines when the progress stream is not a terminal."""

_SPLITS = ("train", "query", "gallery")


@dataclass(frozen=True)
class BadImage:
    """An image file that cannot be decoded, and why.

    Attributes:
        path: the file, as it was given.
        reason: ``"empty file (0 bytes)"``, or the error of the file system or the decoder
            (``"cannot identify image file"``, ``"image file is truncated ..."``).

    Example:
        >>> BadImage("a.jpg", "empty file (0 bytes)")
        BadImage(path='a.jpg', reason='empty file (0 bytes)')
    """

    path: str
    reason: str


def check_images(
    paths: Iterable[str | Path],
    *,
    workers: int | None = None,
    progress: bool = False,
    stream: TextIO | None = None,
    desc: str = "decoding images",
) -> list[BadImage]:
    """Decode every image of ``paths`` and return the ones that fail.

    Each file is decoded as the training loader decodes it
    (:func:`~metareid.data.load_image`: opened, fully decoded, converted to RGB), so a file
    whose header is fine but whose data is truncated is found too. Empty files are reported
    as such. A path listed twice is decoded once.

    Args:
        paths: the image files.
        workers: decoding processes. Default ``os.cpu_count()``; ``0`` or ``1``, or fewer
            than :data:`SERIAL_BELOW` distinct files, decode in this process.
        progress: show progress on ``stream``: a tqdm bar on a terminal, otherwise a plain
            line every :data:`PLAIN_PROGRESS_EVERY_S` seconds (none for a short check).
            Default False.
        stream: where progress goes. Default ``sys.stderr``.
        desc: the label of the progress bar and lines.

    Returns:
        One :class:`BadImage` per file that cannot be decoded, in the order of ``paths``;
        empty when every file decodes.

    Raises:
        TypeError: ``workers`` is not an int (or None).
        ValueError: ``workers`` is negative.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     Image.new("RGB", (8, 16)).save(Path(tmp) / "good.jpg")
        ...     (Path(tmp) / "empty.jpg").touch()
        ...     bad = check_images([Path(tmp) / "good.jpg", Path(tmp) / "empty.jpg"])
        >>> [(Path(b.path).name, b.reason) for b in bad]
        [('empty.jpg', 'empty file (0 bytes)')]
    """
    if workers is not None:
        check_nonnegative_int("workers", workers)
    files = list(dict.fromkeys(str(p) for p in paths))
    n_workers = (os.cpu_count() or 1) if workers is None else workers
    out = sys.stderr if stream is None else stream
    bad: list[BadImage] = []
    with _Progress(len(files), desc, progress, out) as bar:
        for path, reason in zip(files, _decode_all(files, n_workers), strict=True):
            if reason is not None:
                bad.append(BadImage(path, reason))
            bar.update()
    return bad


def dataset_image_paths(
    datasets: Iterable[ReIDDataset], splits: Sequence[str] = _SPLITS
) -> list[str]:
    """The image files of ``splits`` of every dataset, each once, in order.

    Args:
        datasets: the datasets.
        splits: which of ``"train"``, ``"query"`` and ``"gallery"``. Default all three.

    Returns:
        The paths of the records (junk images, which the datasets drop, are not listed).

    Raises:
        ValueError: a split name is not one of the three.

    Example:
        >>> from metareid.data import ImageRecord, ReIDDataset
        >>> ds = ReIDDataset([ImageRecord("a.jpg", 1, 0, 0, 1)], [], [ImageRecord("b.jpg", 1, 1, 0, 1)])
        >>> dataset_image_paths([ds, ds]), dataset_image_paths([ds], splits=["gallery"])
        (['a.jpg', 'b.jpg'], ['b.jpg'])
    """
    unknown = [s for s in splits if s not in _SPLITS]
    if unknown or isinstance(splits, str):
        raise ValueError(f"splits must name some of {list(_SPLITS)}, got {splits!r}")
    paths: dict[str, None] = {}
    for dataset in datasets:
        for split in splits:
            paths.update((r.path, None) for r in getattr(dataset, split))
    return list(paths)


def format_bad_images(bad: Sequence[BadImage], checked: int) -> str:
    """A report of :func:`check_images`: a summary line, then one line per bad file.

    Args:
        bad: the bad files.
        checked: how many files were checked.

    Returns:
        The report, every bad file with its path and reason.

    Example:
        >>> print(format_bad_images([BadImage("x/a.jpg", "empty file (0 bytes)")], 10))
        1 of 10 images cannot be decoded:
          x/a.jpg: empty file (0 bytes)
        >>> print(format_bad_images([], 10))
        All 10 images decode.
    """
    if not bad:
        return f"All {checked:,} images decode."
    noun = "image cannot" if checked == 1 else "images cannot"
    lines = [f"{len(bad):,} of {checked:,} {noun} be decoded:"]
    lines += [f"  {b.path}: {b.reason}" for b in bad]
    return "\n".join(lines)


def _check_one(path: str) -> str | None:
    """Why ``path`` cannot be decoded, or None when it decodes."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
        load_image(path)
    except BadImageError as err:  # the decoder's message, without the path it repeats
        return str(err.__cause__ or err).replace(f" {path!r}", "")
    except Exception as err:  # the loader would stop on it as well
        return f"{type(err).__name__}: {err}"
    return None


def _decode_all(files: list[str], workers: int) -> Iterator[str | None]:
    if workers <= 1 or len(files) < SERIAL_BELOW:
        yield from map(_check_one, files)
        return
    # Linux's fork starts the pool at once; elsewhere the platform's default method.
    method = "fork" if sys.platform.startswith("linux") else None
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))
    try:
        chunk = max(1, min(64, len(files) // (8 * workers)))
        yield from pool.map(_check_one, files, chunksize=chunk)
    finally:
        pool.shutdown(cancel_futures=True)


class _Progress:
    """A tqdm bar on a terminal, a plain line every so often otherwise, or nothing."""

    def __init__(self, total: int, desc: str, enabled: bool, stream: TextIO) -> None:
        self.total, self.desc, self.stream = total, desc, stream
        self.done = 0
        self.bar: Any = None
        self.plain = enabled and not _is_tty(stream)
        self.last = time.monotonic()
        if enabled and not self.plain:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total, desc=desc, unit="img", file=stream, dynamic_ncols=True, leave=False
            )

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def update(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update()
        elif self.plain and time.monotonic() - self.last >= PLAIN_PROGRESS_EVERY_S:
            self.last = time.monotonic()
            pct = 100 * self.done // max(self.total, 1)
            print(f"{self.desc}: {self.done:,}/{self.total:,} ({pct}%)", file=self.stream)
            self.stream.flush()


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
