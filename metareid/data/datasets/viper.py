"""VIPeR (Gray et al., PETS 2007), a Protocol-1 target."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Literal

from metareid._validation import check_choice
from metareid.data.datasets._folders import resolve_dataset_dir, scan_folder
from metareid.data.datasets._splits import (
    NUM_SPLITS,
    check_split_id,
    half_split,
    select_split,
    split_mismatch,
)
from metareid.data.datasets.base import OnBadImage, ReIDDataset, Use

__all__ = ["VIPeR"]

_NAME = re.compile(r"(\d+)_.*")
_EXAMPLE = "000_45.bmp"


class VIPeR(ReIDDataset):
    """VIPeR: 632 ids, one image in each of two cameras, 10 random halves.

    Images are ``cam_a/*.bmp`` and ``cam_b/*.bmp`` named ``<id>_<angle>.bmp`` (``000_45.bmp``);
    the id (first ``_`` field) pairs the two cameras' images. Each of the 10 random splits
    takes half of the ids (316) for training (both cameras) and the other half for testing:
    query = their cam_a images, gallery = their cam_b images (``query_camera="b"`` swaps the
    direction, which torchreid also reports). Cameras: cam_a is camid 0, cam_b camid 1.
    Split statistics (train ids / images, query, gallery): 316 / 632, 316 / 316, 316 / 316.

    The splits are drawn once from :data:`~metareid.data.datasets._splits.SPLIT_SEED` over the
    sorted ids and written to ``root/metareid_splits.json`` (``split_file``).

    Layout (``root`` is e.g. ``<data-dir>/viper``)::

        root/
          VIPeR/
            cam_a/   000_45.bmp  001_45.bmp ...
            cam_b/   000_90.bmp  001_90.bmp ...
          metareid_splits.json      (written on first use)

    ``root`` may also be the ``VIPeR`` folder.

    Args:
        root: the dataset root.
        split_id: which of the 10 splits. Default 0.
        query_camera: ``"a"`` (default): query cam_a, gallery cam_b; ``"b"``: the reverse.
        split_file: where the splits are kept. Default ``root/metareid_splits.json``.
        use: ``"train"`` (default) or ``"all"`` (see :class:`~metareid.data.ReIDDataset`).
        check_images: decode every image once at construction. Default False.
        on_bad_image: with ``check_images``: ``"raise"`` (default) or ``"skip"``.

    Raises:
        FileNotFoundError: ``root``, ``cam_a`` or ``cam_b`` is missing.
        ValueError: a file name without a numeric first field, an id seen by one camera only,
            a bad ``split_id`` or ``query_camera``, or a split file that does not match.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     for cam, angle in (("cam_a", 0), ("cam_b", 90)):
        ...         (Path(tmp) / "VIPeR" / cam).mkdir(parents=True)
        ...         for i in (0, 2, 5, 7):
        ...             (Path(tmp) / "VIPeR" / cam / f"{i:03d}_{angle}.bmp").touch()
        ...     ds = VIPeR(tmp)
        >>> ds.train_stats, ds.query_stats, ds.gallery[0].camid
        (SplitStats(num_pids=2, num_imgs=4, num_cams=2), SplitStats(num_pids=2, num_imgs=2, num_cams=1), 1)
    """

    name: ClassVar[str] = "viper"
    layout: ClassVar[str] = (
        "  VIPeR/\n    cam_a/   000_45.bmp 001_45.bmp ...\n    cam_b/   000_90.bmp 001_90.bmp ..."
    )
    folder_names: ClassVar[tuple[str, ...]] = ("viper", "VIPeR")
    num_splits: ClassVar[int] = NUM_SPLITS

    def __init__(
        self,
        root: str | Path,
        split_id: int = 0,
        *,
        query_camera: Literal["a", "b"] = "a",
        split_file: str | Path | None = None,
        use: Use = "train",
        check_images: bool = False,
        on_bad_image: OnBadImage = "raise",
    ) -> None:
        name = type(self).__name__
        self.split_id = check_split_id(name, split_id, NUM_SPLITS)
        self.query_camera = check_choice("query_camera", query_camera, ("a", "b"))
        self.root = Path(root)
        self.dataset_dir = resolve_dataset_dir(
            name, self.root, ["VIPeR", ""], ["cam_a", "cam_b"], self.layout
        )
        cam_a, cam_b = (
            scan_folder(name, self.dataset_dir / cam, (".bmp",), _parser(name, camid), _EXAMPLE)
            for camid, cam in enumerate(("cam_a", "cam_b"))
        )
        ids_a, ids_b = {r.pid for r in cam_a}, {r.pid for r in cam_b}
        if ids_a != ids_b:
            only = sorted(ids_a ^ ids_b)
            raise ValueError(
                f"{name}: every id must have an image in cam_a and in cam_b; ids seen by one "
                f"camera only in '{self.dataset_dir}': {only[:10]}{' ...' if len(only) > 10 else ''}"
            )
        self.split_file, split = select_split(
            name,
            self.root,
            split_file,
            self.name,
            half_split(sorted(ids_a)),
            ("train", "test"),
            split_id,
        )
        train_ids, test_ids = set(split["train"]), set(split["test"])
        if train_ids | test_ids != ids_a or train_ids & test_ids:
            raise split_mismatch(
                name, self.split_file, f"split {split_id} does not divide the {len(ids_a)} ids"
            )
        if query_camera == "b":
            cam_a, cam_b = cam_b, cam_a
        train = [r for r in cam_a + cam_b if r.pid in train_ids]
        query = [r for r in cam_a if r.pid in test_ids]
        gallery = [r for r in cam_b if r.pid in test_ids]
        super().__init__(
            train, query, gallery, use=use, check_images=check_images, on_bad_image=on_bad_image
        )


def _parser(dataset: str, camid: int) -> Callable[[str], tuple[int, int]]:
    def parse(file_name: str) -> tuple[int, int]:
        match = _NAME.fullmatch(Path(file_name).stem)
        if match is None:
            raise ValueError(
                f"{dataset}: cannot parse the file name '{file_name}'; expected names like "
                f"'{_EXAMPLE}' whose first '_' field is the person id"
            )
        return int(match.group(1)), camid

    return parse
