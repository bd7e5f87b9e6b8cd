"""Shared loader of the Market-1501 folder layout: three split folders of images whose file
names carry the person id and the camera."""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar

from metareid.data.datasets._folders import name_parser, resolve_dataset_dir, scan_folder
from metareid.data.datasets.base import OnBadImage, ReIDDataset, Use

__all__ = ["MarketLayoutDataset"]


class MarketLayoutDataset(ReIDDataset):
    """Base of the datasets stored as ``{train,query,gallery}`` folders of named images.

    Subclasses set the class attributes below; the instance resolves the dataset folder
    among :meth:`dataset_dir_candidates` (the first one that holds the three split folders),
    then parses every image name of each split with :attr:`pattern`.
    """

    split_dirs: ClassVar[tuple[str, str, str]] = (
        "bounding_box_train",
        "query",
        "bounding_box_test",
    )
    """Folder names of the train, query and gallery splits."""

    extensions: ClassVar[tuple[str, ...]] = (".jpg",)
    """File extensions (lower case) that count as images; other files are ignored."""

    pattern: ClassVar[re.Pattern[str]] = re.compile(r"(-?\d+)_c(\d)")
    """Regular expression that must match the whole file stem; groups: person id, camera."""

    example_name: ClassVar[str] = ""
    """A valid file name, quoted in the error messages."""

    num_cameras: ClassVar[int | None] = None
    """Cameras are numbered ``1..num_cameras`` in the file names (None: unchecked)."""

    def __init__(
        self,
        root: str | Path,
        *,
        use: Use = "train",
        check_images: bool = False,
        on_bad_image: OnBadImage = "raise",
    ) -> None:
        self.root = Path(root)
        self.dataset_dir = resolve_dataset_dir(
            type(self).__name__,
            self.root,
            self.dataset_dir_candidates(),
            self.split_dirs,
            self.layout,
        )
        parse = name_parser(type(self).__name__, self.pattern, self.example_name, self.num_cameras)
        train, query, gallery = (
            scan_folder(
                type(self).__name__,
                self.dataset_dir / split,
                self.extensions,
                parse,
                self.example_name,
            )
            for split in self.split_dirs
        )
        super().__init__(
            train, query, gallery, use=use, check_images=check_images, on_bad_image=on_bad_image
        )

    def dataset_dir_candidates(self) -> list[str]:
        """Sub-folders of ``root`` tried in order for the split folders (``""``: root itself)."""
        return [""]
