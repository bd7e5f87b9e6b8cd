"""PRID 2011, single-shot version (Hirzer et al., SCIA 2011), a Protocol-1 target."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from metareid.data.datasets._folders import resolve_dataset_dir, scan_folder
from metareid.data.datasets._splits import (
    NUM_SPLITS,
    check_split_id,
    half_split,
    select_split,
    split_mismatch,
)
from metareid.data.datasets.base import OnBadImage, ReIDDataset, Use

__all__ = ["PRID"]

_NAME = re.compile(r"person_(\d+)")
_EXAMPLE = "person_0001.png"


class PRID(ReIDDataset):
    """PRID 2011 single shot: cam_a 385 persons, cam_b 749, ids 1-200 in both, 10 splits.

    One image per person and camera, named ``person_XXXX.png``. Only ids ``1..num_paired``
    (1-200) are the same people in both cameras; the other ids of each camera are different
    people. Each of the 10 random splits takes half of the paired ids for training (both
    cameras' images); the query is the cam_a image of each of the other 100 paired ids, the
    gallery the cam_b images of those ids plus every cam_b id above ``num_paired``
    (201-749): 649 images. The cam_a ids above ``num_paired`` are not used. Cameras: cam_a
    is camid 0, cam_b camid 1.

    With 100 / 100 / 649 the split statistics are (train ids / images, query, gallery):
    100 / 200, 100 / 100, 649 / 649.

    The splits are drawn once from :data:`~metareid.data.datasets._splits.SPLIT_SEED` over
    the sorted paired ids and written to ``root/metareid_splits.json`` (``split_file``);
    later runs read them back.

    Layout (``root`` is e.g. ``<data-dir>/prid``)::

        root/
          prid_2011/single_shot/
            cam_a/   person_0001.png ... person_0385.png
            cam_b/   person_0001.png ... person_0749.png
          metareid_splits.json      (written on first use)

    ``root`` may also be the ``prid_2011`` or the ``single_shot`` folder.

    Args:
        root: the dataset root.
        split_id: which of the 10 splits. Default 0.
        num_paired: the ids ``1..num_paired`` show the same people in both cameras. Default
            200, as in the release; smaller values serve tests on small fake trees.
        split_file: where the splits are kept. Default ``root/metareid_splits.json``.
        use: ``"train"`` (default) or ``"all"`` (train + query + gallery of the split, see
            :class:`~metareid.data.ReIDDataset`).
        check_images: decode every image once at construction. Default False.
        on_bad_image: with ``check_images``: ``"raise"`` (default) or ``"skip"``.

    Raises:
        FileNotFoundError: ``root``, ``cam_a`` or ``cam_b`` is missing.
        ValueError: a file name that is not ``person_XXXX.png``, a paired id missing from a
            camera, a bad ``split_id`` or a split file that does not match the data.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     base = Path(tmp) / "prid_2011" / "single_shot"
        ...     for cam, n in (("cam_a", 6), ("cam_b", 9)):
        ...         (base / cam).mkdir(parents=True)
        ...         for i in range(1, n + 1):
        ...             (base / cam / f"person_{i:04d}.png").touch()
        ...     ds = PRID(tmp, split_id=3, num_paired=4)
        >>> ds.train_stats, ds.query_stats, ds.gallery_stats
        (SplitStats(num_pids=2, num_imgs=4, num_cams=2), SplitStats(num_pids=2, num_imgs=2, num_cams=1), SplitStats(num_pids=7, num_imgs=7, num_cams=1))
    """

    name: ClassVar[str] = "prid"
    layout: ClassVar[str] = (
        "  prid_2011/single_shot/\n"
        "    cam_a/   person_0001.png ... person_0385.png\n"
        "    cam_b/   person_0001.png ... person_0749.png"
    )
    folder_names: ClassVar[tuple[str, ...]] = ("prid", "prid2011", "prid_2011")
    num_splits: ClassVar[int] = NUM_SPLITS

    def __init__(
        self,
        root: str | Path,
        split_id: int = 0,
        *,
        num_paired: int = 200,
        split_file: str | Path | None = None,
        use: Use = "train",
        check_images: bool = False,
        on_bad_image: OnBadImage = "raise",
    ) -> None:
        name = type(self).__name__
        self.split_id = check_split_id(name, split_id, NUM_SPLITS)
        if isinstance(num_paired, bool) or not isinstance(num_paired, int) or num_paired < 2:
            raise ValueError(f"num_paired must be an int >= 2, got {num_paired!r}")
        self.root = Path(root)
        self.dataset_dir = resolve_dataset_dir(
            name,
            self.root,
            ["prid_2011/single_shot", "single_shot", ""],
            ["cam_a", "cam_b"],
            self.layout,
        )
        cams = [
            scan_folder(name, self.dataset_dir / cam, (".png",), _parser(name, camid), _EXAMPLE)
            for camid, cam in enumerate(("cam_a", "cam_b"))
        ]
        paired = list(range(1, num_paired + 1))
        for cam, records in zip(("cam_a", "cam_b"), cams, strict=True):
            missing = sorted(set(paired) - {r.pid for r in records})
            if missing:
                raise ValueError(
                    f"{name}: the paired ids 1..{num_paired} must each have an image in {cam}; "
                    f"'{self.dataset_dir / cam}' lacks {missing[:10]}"
                    f"{' ...' if len(missing) > 10 else ''}"
                )
        self.split_file, split = select_split(
            name, self.root, split_file, self.name, half_split(paired), ("train", "test"), split_id
        )
        train_ids, test_ids = set(split["train"]), set(split["test"])
        if train_ids | test_ids != set(paired) or train_ids & test_ids:
            raise split_mismatch(
                name, self.split_file, f"split {split_id} does not divide the ids 1..{num_paired}"
            )
        cam_a, cam_b = cams
        train = [r for r in cam_a + cam_b if r.pid in train_ids]
        query = [r for r in cam_a if r.pid in test_ids]
        gallery = [r for r in cam_b if r.pid in test_ids or r.pid > num_paired]
        super().__init__(
            train, query, gallery, use=use, check_images=check_images, on_bad_image=on_bad_image
        )


def _parser(dataset: str, camid: int) -> Callable[[str], tuple[int, int]]:
    def parse(file_name: str) -> tuple[int, int]:
        match = _NAME.fullmatch(Path(file_name).stem)
        if match is None:
            raise ValueError(
                f"{dataset}: cannot parse the file name '{file_name}'; expected names like "
                f"'{_EXAMPLE}' (pattern {_NAME.pattern})"
            )
        return int(match.group(1)), camid

    return parse
