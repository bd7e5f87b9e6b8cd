"""A dataset of your own: each split is a Market-style folder or a list file."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from metareid.data.datasets._folders import layout_error, scan_folder
from metareid.data.datasets.base import ImageRecord, OnBadImage, ReIDDataset, Use

__all__ = ["MARKET_NAME_PATTERN", "GenericDataset"]

MARKET_NAME_PATTERN = r"(-?\d+)_c(\d+).*"
"""Default file-name pattern: ``<pid>_c<camera>`` followed by anything (Market-1501 style)."""


class GenericDataset(ReIDDataset):
    """A ReID dataset read from Market-style folders or list files, one per split.

    Each of ``train``, ``query`` and ``gallery`` names a path relative to ``root`` (or an
    absolute path), or is None for an empty split:

    * a **folder**: every image directly inside it; the person id and the camera are read
      from the file name with ``pattern`` (two groups, matched against the whole stem);
    * a **list file** (any file): one image per line, ``relpath pid [camera]``, with
      ``relpath`` relative to ``root``; blank lines and lines starting with ``#`` are
      skipped. Without the camera column the camera is read from the file name with
      ``pattern``.

    Cameras are numbered from ``camid_base`` in the data (1 for Market-style names) and
    stored 0-based. Person id ``-1`` marks junk (dropped); ``distractor_pid`` names the id of
    distractors, if the data has any. Train ids are relabelled to ``0..n-1``.

    Args:
        root: the dataset root.
        train: train folder or list file. Default ``"bounding_box_train"``.
        query: query folder or list file. Default ``"query"``.
        gallery: gallery folder or list file. Default ``"bounding_box_test"``.
        pattern: regular expression for file stems, groups (person id, camera). Default
            :data:`MARKET_NAME_PATTERN`.
        camid_base: number of the first camera in the data. Default 1.
        extensions: image extensions scanned in folders. Default ``.jpg .jpeg .png .bmp``.
        distractor_pid: the id of gallery distractors (``0`` for Market-style data), left out
            of the training split by ``use="all"``. Default None: no distractors.
        use: ``"train"`` (default) or ``"all"`` (train + query + gallery, see
            :class:`~metareid.data.ReIDDataset`).
        check_images: decode every image once at construction. Default False.
        on_bad_image: with ``check_images``: ``"raise"`` (default) or ``"skip"``.

    Raises:
        FileNotFoundError: ``root`` or a split path is missing.
        ValueError: a folder without images, a malformed list line, a file name that does
            not match ``pattern`` or a camera below ``camid_base``.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     (Path(tmp) / "imgs").mkdir()
        ...     for name in ("a.jpg", "b.jpg", "c.jpg"):
        ...         (Path(tmp) / "imgs" / name).touch()
        ...     _ = (Path(tmp) / "train.txt").write_text("imgs/a.jpg 10 0\\nimgs/b.jpg 12 1\\n")
        ...     _ = (Path(tmp) / "test.txt").write_text("imgs/c.jpg 3 1\\n")
        ...     ds = GenericDataset(tmp, "train.txt", "test.txt", "test.txt", camid_base=0)
        >>> [(r.pid, r.orig_pid, r.camid) for r in ds.train]
        [(0, 10, 0), (1, 12, 1)]
    """

    name: ClassVar[str] = "generic"
    layout: ClassVar[str] = (
        "  <train>    folder of images named like 0002_c1s1_000451_03.jpg,\n"
        "             or list file of 'relpath pid [camera]' lines (relpath relative to root)\n"
        "  <query>    same\n"
        "  <gallery>  same"
    )

    def __init__(
        self,
        root: str | Path,
        train: str | Path | None = "bounding_box_train",
        query: str | Path | None = "query",
        gallery: str | Path | None = "bounding_box_test",
        *,
        pattern: str = MARKET_NAME_PATTERN,
        camid_base: int = 1,
        extensions: Sequence[str] = (".jpg", ".jpeg", ".png", ".bmp"),
        distractor_pid: int | None = None,
        use: Use = "train",
        check_images: bool = False,
        on_bad_image: OnBadImage = "raise",
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise layout_error(type(self).__name__, self.root, self.root, self.layout)
        regex = re.compile(pattern)
        if regex.groups < 2:
            raise ValueError(
                f"pattern must have two groups (person id, camera), got {pattern!r} with "
                f"{regex.groups}"
            )
        self.pattern = regex
        self.camid_base = camid_base
        self.extensions = tuple(e.lower() for e in extensions)
        self.distractor_pid = distractor_pid
        splits = [self._read_split(spec) for spec in (train, query, gallery)]
        super().__init__(*splits, use=use, check_images=check_images, on_bad_image=on_bad_image)

    def _parse_name(self, name: str) -> tuple[int, int]:
        """(pid, 0-based camid) from a file name."""
        match = self.pattern.fullmatch(Path(name).stem)
        if match is None:
            raise ValueError(
                f"GenericDataset: cannot parse the file name '{name}' with pattern "
                f"{self.pattern.pattern!r} (groups: person id, camera)"
            )
        return int(match.group(1)), self._camid(int(match.group(2)), name)

    def _camid(self, camera: int, where: str) -> int:
        if camera < self.camid_base:
            raise ValueError(
                f"GenericDataset: camera {camera} of '{where}' is below camid_base="
                f"{self.camid_base}"
            )
        return camera - self.camid_base

    def _read_split(self, spec: str | Path | None) -> list[ImageRecord]:
        if spec is None:
            return []
        path = self.root / spec
        if not path.exists():
            raise layout_error(type(self).__name__, path, self.root, self.layout)
        if path.is_dir():
            example = "0002_c1s1_000451_03.jpg"
            return scan_folder(
                type(self).__name__, path, self.extensions, self._parse_name, example
            )
        return self._read_list(path)

    def _read_list(self, list_file: Path) -> list[ImageRecord]:
        records = []
        for number, line in enumerate(list_file.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            where = f"line {number} of '{list_file}'"
            numeric = all(f.lstrip("-").isdigit() for f in fields[1:])
            if len(fields) not in (2, 3) or not numeric:
                raise ValueError(
                    f"GenericDataset: {where} must read 'relpath pid [camera]', got {line!r}"
                )
            pid = int(fields[1])
            if len(fields) == 3:
                camid = self._camid(int(fields[2]), where)
            else:
                camid = self._parse_name(fields[0])[1]
            path = str(self.root / fields[0])
            records.append(ImageRecord(path, pid, camid, domain=0, orig_pid=pid))
        return records
