"""QMUL iLIDS (i-LIDS Pedestrian, Zheng et al., BMVC 2009), a Protocol-1 target."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import numpy as np

from metareid.data.datasets._folders import resolve_dataset_dir, scan_folder
from metareid.data.datasets._splits import (
    NUM_SPLITS,
    DrawSplit,
    Split,
    check_split_id,
    select_split,
    split_mismatch,
)
from metareid.data.datasets.base import ImageRecord, OnBadImage, ReIDDataset, Use

__all__ = ["ILIDS"]

_NAME = re.compile(r"(\d{4}).*")
_EXAMPLE = "0001001.jpg"


class ILIDS(ReIDDataset):
    """QMUL iLIDS: 119 ids / 476 images, no camera labels, 10 random splits.

    Images are ``i-LIDS_Pedestrian/Persons/*.jpg``; the first 4 characters of a name are the
    person id (``0001001.jpg``: id 1). Each of the 10 random splits takes 59 ids (half,
    rounded down) for training with all their images; each of the other 60 ids gives one
    random query image and one other random gallery image. The release has no cameras: train
    and query images get camid 0 and gallery images camid 1, so the evaluation's same-camera
    rule keeps every true match. Split statistics (train ids, query, gallery): 59 ids (the
    number of images depends on the split), 60 / 60, 60 / 60.

    The splits (train ids and the chosen query and gallery files) are drawn once from
    :data:`~metareid.data.datasets._splits.SPLIT_SEED` over the sorted ids and file names and
    written to ``root/metareid_splits.json`` (``split_file``).

    Layout (``root`` is e.g. ``<data-dir>/ilids``)::

        root/
          i-LIDS_Pedestrian/
            Persons/   0001001.jpg  0001002.jpg  0002001.jpg ...
          metareid_splits.json      (written on first use)

    ``root`` may also be the ``i-LIDS_Pedestrian`` folder.

    Args:
        root: the dataset root.
        split_id: which of the 10 splits. Default 0.
        split_file: where the splits are kept. Default ``root/metareid_splits.json``.
        use: ``"train"`` (default) or ``"all"`` (see :class:`~metareid.data.ReIDDataset`).
        check_images: decode every image once at construction. Default False.
        on_bad_image: with ``check_images``: ``"raise"`` (default) or ``"skip"``.

    Raises:
        FileNotFoundError: ``root`` or ``Persons`` is missing.
        ValueError: a name whose first 4 characters are not digits, an id with a single
            image, a bad ``split_id`` or a split file that does not match the data.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     persons = Path(tmp) / "i-LIDS_Pedestrian" / "Persons"
        ...     persons.mkdir(parents=True)
        ...     for pid in range(1, 6):
        ...         for k in range(1, 4):
        ...             (persons / f"{pid:04d}{k:03d}.jpg").touch()
        ...     ds = ILIDS(tmp)
        >>> ds.train_stats, ds.query_stats, ds.gallery_stats
        (SplitStats(num_pids=2, num_imgs=6, num_cams=1), SplitStats(num_pids=3, num_imgs=3, num_cams=1), SplitStats(num_pids=3, num_imgs=3, num_cams=1))
    """

    name: ClassVar[str] = "ilids"
    layout: ClassVar[str] = "  i-LIDS_Pedestrian/\n    Persons/   0001001.jpg 0001002.jpg ..."
    folder_names: ClassVar[tuple[str, ...]] = ("ilids", "i-LIDS_Pedestrian")
    num_splits: ClassVar[int] = NUM_SPLITS

    def __init__(
        self,
        root: str | Path,
        split_id: int = 0,
        *,
        split_file: str | Path | None = None,
        use: Use = "train",
        check_images: bool = False,
        on_bad_image: OnBadImage = "raise",
    ) -> None:
        name = type(self).__name__
        self.split_id = check_split_id(name, split_id, NUM_SPLITS)
        self.root = Path(root)
        self.dataset_dir = resolve_dataset_dir(
            name, self.root, ["i-LIDS_Pedestrian", ""], ["Persons"], self.layout
        )
        folder = self.dataset_dir / "Persons"
        records = scan_folder(name, folder, (".jpg",), _parse(name), _EXAMPLE)
        by_id: dict[int, list[ImageRecord]] = defaultdict(list)
        for r in records:
            by_id[r.pid].append(r)
        single = sorted(pid for pid, recs in by_id.items() if len(recs) < 2)
        if single:
            raise ValueError(
                f"{name}: every person needs at least 2 images (one query, one gallery); "
                f"ids with one image in '{folder}': {single[:10]}"
            )
        names = {pid: sorted(Path(r.path).name for r in recs) for pid, recs in by_id.items()}
        self.split_file, split = select_split(
            name,
            self.root,
            split_file,
            self.name,
            _drawer(names),
            ("train", "query", "gallery"),
            split_id,
        )
        by_name = {Path(r.path).name: r for r in records}
        unknown = [n for n in split["query"] + split["gallery"] if n not in by_name]
        train_ids = set(split["train"])
        if unknown or not train_ids <= set(by_id):
            what = f"unknown files {unknown[:5]}" if unknown else "unknown train ids"
            raise split_mismatch(name, self.split_file, f"split {split_id} names {what}")
        train = [r for r in records if r.pid in train_ids]
        query = [by_name[n] for n in split["query"]]
        gallery = [replace(by_name[n], camid=1) for n in split["gallery"]]
        super().__init__(
            train, query, gallery, use=use, check_images=check_images, on_bad_image=on_bad_image
        )


def _parse(dataset: str) -> Callable[[str], tuple[int, int]]:
    def parse(file_name: str) -> tuple[int, int]:
        match = _NAME.fullmatch(Path(file_name).stem)
        if match is None:
            raise ValueError(
                f"{dataset}: cannot parse the file name '{file_name}'; expected names like "
                f"'{_EXAMPLE}' whose first 4 characters are the person id"
            )
        return int(match.group(1)), 0

    return parse


def _drawer(names: dict[int, list[str]]) -> DrawSplit:
    """Half of the sorted ids train; per other id one query and one other gallery file."""
    ids = sorted(names)

    def draw(rng: np.random.Generator) -> Split:
        order = rng.permutation(len(ids))
        half = len(ids) // 2
        test = sorted(ids[i] for i in order[half:])
        query, gallery = [], []
        for pid in test:
            q, g = rng.choice(len(names[pid]), size=2, replace=False)
            query.append(names[pid][q])
            gallery.append(names[pid][g])
        return {"train": sorted(ids[i] for i in order[:half]), "query": query, "gallery": gallery}

    return draw
