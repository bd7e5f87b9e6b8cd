"""CUHK02 (Li and Wang, CVPR 2013): five camera pairs, a Protocol-1 source."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Literal

from metareid._validation import check_choice
from metareid.data.datasets._folders import resolve_dataset_dir, scan_folder
from metareid.data.datasets.base import ImageRecord, OnBadImage, ReIDDataset, Use

__all__ = ["CUHK02", "PAIR_ID_BASE"]

_PAIRS = ("P1", "P2", "P3", "P4", "P5")
_NAME = re.compile(r"(\d+)_.*")
_EXAMPLE = "0001_1.png"
PAIR_ID_BASE = 1_000_000
"""``orig_pid`` of CUHK02 = pair number x PAIR_ID_BASE + the id of the file name."""


class CUHK02(ReIDDataset):
    """CUHK02: 1,816 ids in five camera pairs P1-P5 (971, 306, 107, 193, 239 ids).

    Images are ``Dataset/P<k>/{cam1,cam2}/*.png``; the person id is the first ``_`` field of
    the name, and it is unique only within a camera pair. metareid therefore stores
    ``orig_pid = k * 1,000,000 + id`` (P2's id 17 is 2000017), so that ids of different pairs
    never merge.

    Splits:

    * ``use="train"`` (default, torchreid's protocol): the pairs other than ``test_pair``
      (P5) are the training split (1,577 ids); the test pair's cam1 images are the query and
      its cam2 images the gallery (239 ids).
    * ``use="all"``: all five pairs are training data (1,816 ids), query and gallery are
      empty, as DG methods train on CUHK02 in Protocol 1.

    Cameras (``cameras``): ``"per_pair"`` (default, torchreid) gives each pair its own two
    cameras, camid ``2 * (k - 1) + (c - 1)`` for ``P<k>/cam<c>`` (10 cameras); ``"shared"``
    maps every pair's cam1 to camid 0 and cam2 to camid 1 (2 cameras).

    Layout (``root`` is e.g. ``<data-dir>/cuhk02``)::

        root/
          Dataset/
            P1/cam1/*.png  P1/cam2/*.png
            ...
            P5/cam1/*.png  P5/cam2/*.png

    ``root`` may also be the ``Dataset`` folder.

    Args:
        root: the dataset root.
        cameras: ``"per_pair"`` (default) or ``"shared"``.
        test_pair: the pair held out for testing with ``use="train"``. Default ``"P5"``.
        use: ``"train"`` (default) or ``"all"``.
        check_images: decode every image once at construction. Default False.
        on_bad_image: with ``check_images``: ``"raise"`` (default) or ``"skip"``.

    Raises:
        FileNotFoundError: ``root``, a pair folder or a camera folder is missing.
        ValueError: a bad ``cameras`` or ``test_pair``, a file name whose first ``_`` field is
            not a number, or an id of 1,000,000 or more.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     for pair in ("P1", "P2", "P3", "P4", "P5"):
        ...         for cam in ("cam1", "cam2"):
        ...             (Path(tmp) / "Dataset" / pair / cam).mkdir(parents=True)
        ...             (Path(tmp) / "Dataset" / pair / cam / "0001_1.png").touch()
        ...     ds = CUHK02(tmp)
        ...     everything = CUHK02(tmp, use="all", cameras="shared")
        >>> ds.train_stats, ds.query[0].orig_pid, ds.gallery[0].camid
        (SplitStats(num_pids=4, num_imgs=8, num_cams=8), 5000001, 9)
        >>> everything.train_stats
        SplitStats(num_pids=5, num_imgs=10, num_cams=2)
    """

    name: ClassVar[str] = "cuhk02"
    layout: ClassVar[str] = (
        "  Dataset/\n    P1/cam1/*.png  P1/cam2/*.png\n    ...\n    P5/cam1/*.png  P5/cam2/*.png"
    )
    folder_names: ClassVar[tuple[str, ...]] = ("cuhk02",)

    def __init__(
        self,
        root: str | Path,
        *,
        cameras: Literal["per_pair", "shared"] = "per_pair",
        test_pair: str = "P5",
        use: Use = "train",
        check_images: bool = False,
        on_bad_image: OnBadImage = "raise",
    ) -> None:
        name = type(self).__name__
        self.cameras = check_choice("cameras", cameras, ("per_pair", "shared"))
        self.test_pair = check_choice("test_pair", test_pair, _PAIRS)
        self.root = Path(root)
        required = [f"{pair}/{cam}" for pair in _PAIRS for cam in ("cam1", "cam2")]
        self.dataset_dir = resolve_dataset_dir(
            name, self.root, ["Dataset", ""], required, self.layout
        )
        train: list[ImageRecord] = []
        query: list[ImageRecord] = []
        gallery: list[ImageRecord] = []
        for k, pair in enumerate(_PAIRS, start=1):
            for c, cam in enumerate(("cam1", "cam2"), start=1):
                camid = 2 * (k - 1) + (c - 1) if cameras == "per_pair" else c - 1
                folder = self.dataset_dir / pair / cam
                records = scan_folder(name, folder, (".png",), _parser(name, k, camid), _EXAMPLE)
                if pair != test_pair or use == "all":
                    train += records
                else:
                    (query if c == 1 else gallery).extend(records)
        super().__init__(
            train, query, gallery, use=use, check_images=check_images, on_bad_image=on_bad_image
        )


def _parser(dataset: str, pair: int, camid: int) -> Callable[[str], tuple[int, int]]:
    def parse(file_name: str) -> tuple[int, int]:
        match = _NAME.fullmatch(Path(file_name).stem)
        if match is None:
            raise ValueError(
                f"{dataset}: cannot parse the file name '{file_name}'; expected names like "
                f"'{_EXAMPLE}' whose first '_' field is the person id"
            )
        pid = int(match.group(1))
        if pid >= PAIR_ID_BASE:
            raise ValueError(
                f"{dataset}: person id {pid} of '{file_name}' must be below {PAIR_ID_BASE:,}"
            )
        return pair * PAIR_ID_BASE + pid, camid

    return parse
