"""CUHK-SYSU person crops (Xiao et al., CVPR 2017), a training-only source of Protocols 1-3."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import ClassVar, Literal

from metareid._validation import check_choice
from metareid.data.datasets._folders import layout_error, scan_folder
from metareid.data.datasets.base import OnBadImage, ReIDDataset, Use

__all__ = ["CUHKSYSU"]

_CROP_NAME = re.compile(r"p(\d+)_s(\d+)(?:_.*)?")
_MARKET_NAME = re.compile(r"(\d+)_c(\d+).*")
_EXAMPLE = "p11001_s15535_2.jpg"
_CROP_DIRS = ("cropped_images", "cropped_image")


class CUHKSYSU(ReIDDataset):
    """CUHK-SYSU person crops: 11,934 ids / 34,574 images, used for training only.

    Two layouts (``layout``):

    * ``"cropped_images"`` (default, torchreid and fast-reid): one folder of crops named
      ``p<pid>_s<scene>_<k>.jpg`` (``p11001_s15535_2.jpg``), ``cropped_images/`` (fast-reid
      spells it ``cropped_image/``, also accepted), directly under ``root`` or under
      ``root/CUHK-SYSU/``;
    * ``"market"``: a Market-style ``bounding_box_train/`` that some DG codebases keep, with
      the same crop names or Market names ``<pid>_c<camera>...jpg``.

    Query and gallery are empty: the protocols never test on CUHK-SYSU. Cameras
    (``camera``): ``"dummy"`` (default, as torchreid and fast-reid) puts every image in
    camid 0; ``"scene"`` uses the scene of the crop name as the camera (scenes numbered
    ``0..S-1`` in increasing order of the scene id; Market-style names give their camera).

    Layout (``root`` is e.g. ``<data-dir>/cuhksysu``)::

        root/
          cropped_images/        p11001_s15535_2.jpg ...
        or
          bounding_box_train/    p11001_s15535_2.jpg or 0001_c1_0001.jpg ...

    Args:
        root: the dataset root.
        layout: ``"cropped_images"`` (default) or ``"market"``.
        camera: ``"dummy"`` (default) or ``"scene"``.
        use: accepted for uniformity; ``"all"`` changes nothing (there is no test split).
        check_images: decode every image once at construction. Default False.
        on_bad_image: with ``check_images``: ``"raise"`` (default) or ``"skip"``.

    Raises:
        FileNotFoundError: no crop folder of the chosen layout under ``root`` (the message
            says where the other layout's folder is, if it is there).
        ValueError: a bad ``layout`` or ``camera``, or a file name of neither form.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     (Path(tmp) / "cropped_images").mkdir()
        ...     for name in ("p1_s20_1.jpg", "p1_s7_2.jpg", "p9_s7_1.jpg"):
        ...         (Path(tmp) / "cropped_images" / name).touch()
        ...     ds = CUHKSYSU(tmp, camera="scene")
        >>> [(r.pid, r.orig_pid, r.camid) for r in ds.train], ds.query
        ([(0, 1, 1), (0, 1, 0), (1, 9, 0)], [])
    """

    name: ClassVar[str] = "cuhksysu"
    layout: ClassVar[str] = (
        "  cropped_images/       p11001_s15535_2.jpg ...   (or cropped_image/, or under CUHK-SYSU/)\n"
        "  or, with layout='market': bounding_box_train/   p11001_s15535_2.jpg or 0001_c1_....jpg"
    )
    folder_names: ClassVar[tuple[str, ...]] = ("cuhksysu", "CUHK-SYSU", "cuhk_sysu")

    def __init__(
        self,
        root: str | Path,
        *,
        layout: Literal["cropped_images", "market"] = "cropped_images",
        camera: Literal["dummy", "scene"] = "dummy",
        use: Use = "train",
        check_images: bool = False,
        on_bad_image: OnBadImage = "raise",
    ) -> None:
        name = type(self).__name__
        self.data_layout = check_choice("layout", layout, ("cropped_images", "market"))
        self.camera = check_choice("camera", camera, ("dummy", "scene"))
        self.root = Path(root)
        folders = {
            "cropped_images": [
                b / d for b in (self.root, self.root / "CUHK-SYSU") for d in _CROP_DIRS
            ],
            "market": [b / "bounding_box_train" for b in (self.root, self.root / "CUHK-SYSU")],
        }
        found = [f for f in folders[layout] if f.is_dir()]
        if not found:
            err = layout_error(name, folders[layout][0], self.root, self.layout)
            other = "market" if layout == "cropped_images" else "cropped_images"
            there = [f for f in folders[other] if f.is_dir()]
            if there:
                raise FileNotFoundError(
                    f"{err}\n'{there[0]}' is there: select it with layout={other!r} "
                    f"(dataset spec 'cuhksysu:layout={other}')"
                )
            raise err
        self.dataset_dir = found[0]
        records = scan_folder(name, self.dataset_dir, (".jpg", ".png"), _parse, _EXAMPLE)
        if camera == "dummy":
            records = [replace(r, camid=0) for r in records]
        else:  # scenes (or Market cameras) numbered 0..S-1 in increasing order
            rank = {c: i for i, c in enumerate(sorted({r.camid for r in records}))}
            records = [replace(r, camid=rank[r.camid]) for r in records]
        super().__init__(
            records, [], [], use=use, check_images=check_images, on_bad_image=on_bad_image
        )


def _parse(file_name: str) -> tuple[int, int]:
    """(pid, scene or camera) of a crop name or a Market-style name."""
    stem = Path(file_name).stem
    for pattern in (_CROP_NAME, _MARKET_NAME):
        match = pattern.fullmatch(stem)
        if match is not None:
            return int(match.group(1)), int(match.group(2))
    raise ValueError(
        f"CUHKSYSU: cannot parse the file name '{file_name}'; expected crop names like "
        f"'{_EXAMPLE}' (pattern {_CROP_NAME.pattern}) or Market-style names like "
        f"'0001_c1_0001.jpg' (pattern {_MARKET_NAME.pattern})"
    )
