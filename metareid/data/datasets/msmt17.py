"""MSMT17 (Wei et al., CVPR 2018), V1 and V2, from the list files of the release or a
Market-style copy."""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar, Literal

from metareid._validation import check_choice
from metareid.data.datasets._folders import (
    layout_error,
    name_parser,
    resolve_dataset_dir,
    scan_folder,
)
from metareid.data.datasets.base import ImageRecord, OnBadImage, ReIDDataset, Use

__all__ = ["MSMT17"]

_VERSIONS = {
    "V1": ("MSMT17_V1", "train", "test"),
    "V2": ("MSMT17_V2", "mask_train_v2", "mask_test_v2"),
}
_LAYOUTS = ("lists", "market")
_MARKET_SPLITS = ("bounding_box_train", "query", "bounding_box_test")
_MARKET_NAME = re.compile(r"(-?\d+)_c(\d+).*")
"""Market-style names: person id, ``_c`` and the camera, then anything (``0000_c1_0001.jpg``)."""
_NUM_CAMERAS = 15
_NAME = re.compile(r"\d+_\d+_(\d{2})_\d{4}[a-z]+_\d+_\d+")
"""Person id, image index, camera, date + period, frame, box: ``0000_000_01_0303morning_0015_0``."""


class MSMT17(ReIDDataset):
    """MSMT17: 1,041 train ids / 32,621 images (train + val), 3,060 test ids, 15 cameras.

    **List layout** (``layout="lists"``, default): read as distributed, without renaming any
    file. The list files hold one ``relpath pid`` per line; ``relpath`` is relative to the
    train folder (``list_train.txt``, ``list_val.txt``) or the test folder
    (``list_query.txt``, ``list_gallery.txt``), e.g.
    ``0000/0000_000_01_0303morning_0015_0.jpg 0``. Both versions use the same file names:
    ``PPPP_NNN_CC_<date><time-of-day>_FFFF_K.jpg`` with the person id, the image index of
    the person, the camera ``CC`` in 01..15, the capture date and period, the frame and a
    box index. The camera is therefore the third ``_`` field (stored 0-based). The person
    id is taken from the list file. V2 is V1 with the faces masked; both have the same
    counts.

    As in the published M3L code, the train and val lists are merged into the training split
    (``merge_val=True``) and relabelled to ``0..1040``; torchreid, fast-reid and ACL train on
    ``list_train.txt`` only (``merge_val=False``, and then ``list_val.txt`` need not exist).

    Layout (``root`` is e.g. ``<data-dir>/msmt17``)::

        root/
          MSMT17_V2/                          MSMT17_V1/
            mask_train_v2/0000/...jpg           train/0000/0000_000_01_...jpg
            mask_test_v2/0000/...jpg            test/0000/0000_000_01_...jpg
            list_train.txt  list_val.txt        list_train.txt  list_val.txt
            list_query.txt  list_gallery.txt    list_query.txt  list_gallery.txt

    ``root`` may also be the ``MSMT17_V2`` (``MSMT17_V1``) folder itself. When the asked
    version is missing but the other one is there, the error says how to select it
    (``version="V1"``, dataset spec ``msmt17:V1``).

    **Market-style layout** (``layout="market"``): the renamed copy that some DG codebases
    keep (the published M3L code's V1, BAU): ``MSMT17/{bounding_box_train,query,
    bounding_box_test}/*.jpg`` with names ``<pid>_c<camera>...`` (``0000_c1_0001.jpg``,
    cameras 1..15). ``version`` is then only recorded; ``merge_val`` does not apply (the
    renamed train folder already holds what its author put in it).

    Id ``0`` is an ordinary person in MSMT17 (ids start at 0), not a distractor.

    Args:
        root: the dataset root.
        version: ``"V2"`` (default, as the published code's main setting) or ``"V1"``.
        merge_val: add ``list_val.txt`` to the training split. Default True, as in the
            published code (the val ids are train ids).
        layout: ``"lists"`` (default, the release) or ``"market"`` (a renamed copy).
        use: ``"train"`` (default) or ``"all"``: train + query + gallery form the training
            split (4,101 ids; the test ids, which the list files number from 0 like the
            train ids, are labelled after the 1,041 train ids), query and gallery are empty.
            Protocol 3 trains on this.
        check_images: decode every image once at construction. Default False. Without it
            only the first file of each list is checked to exist, to catch a wrong layout.
        on_bad_image: with ``check_images``: ``"raise"`` (default) or ``"skip"``.

    Raises:
        FileNotFoundError: ``root``, an image folder, a list file or the first image of a
            list is missing (the message shows the layout above and, when the other version
            or a Market-style copy is present, how to select it).
        ValueError: a bad ``version`` or ``layout``, a malformed list line or a file name
            whose third ``_`` field is not a camera in 1..15 (the message names the list
            file, the line and the file).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     base = Path(tmp) / "MSMT17_V2"
        ...     for folder, listed in [("mask_train_v2", ("train", "val")),
        ...                            ("mask_test_v2", ("query", "gallery"))]:
        ...         (base / folder / "0007").mkdir(parents=True)
        ...         (base / folder / "0007" / "0007_000_14_0303morning_0015_0.jpg").touch()
        ...         for split in listed:
        ...             line = "0007/0007_000_14_0303morning_0015_0.jpg 7\\n"
        ...             _ = (base / f"list_{split}.txt").write_text(line)
        ...     ds = MSMT17(tmp)
        >>> ds.version, len(ds.train), ds.train[0].pid, ds.train[0].orig_pid, ds.train[0].camid
        ('V2', 2, 0, 7, 13)
    """

    name: ClassVar[str] = "msmt17"
    layout: ClassVar[str] = (
        "  MSMT17_V2/                      (V1: MSMT17_V1/)\n"
        "    mask_train_v2/<pid>/<name>.jpg  (V1: train/)\n"
        "    mask_test_v2/<pid>/<name>.jpg   (V1: test/)\n"
        "    list_train.txt list_val.txt list_query.txt list_gallery.txt  ('relpath pid' lines)\n"
        "  or, with layout='market': MSMT17/{bounding_box_train,query,bounding_box_test}/*.jpg"
    )
    folder_names: ClassVar[tuple[str, ...]] = ("msmt17", "")

    def __init__(
        self,
        root: str | Path,
        version: Literal["V1", "V2"] = "V2",
        merge_val: bool = True,
        *,
        layout: Literal["lists", "market"] = "lists",
        use: Use = "train",
        check_images: bool = False,
        on_bad_image: OnBadImage = "raise",
    ) -> None:
        self.version = check_choice("version", version, tuple(_VERSIONS))
        self.data_layout = check_choice("layout", layout, _LAYOUTS)
        self.merge_val = merge_val
        self.root = Path(root)
        if layout == "market":
            train, query, gallery = self._read_market_style()
        else:
            train, query, gallery = self._read_release()
        super().__init__(
            train, query, gallery, use=use, check_images=check_images, on_bad_image=on_bad_image
        )

    def _read_release(self) -> tuple[list[ImageRecord], ...]:
        folder, train_dir, test_dir = _VERSIONS[self.version]
        lists = ["list_train.txt", "list_query.txt", "list_gallery.txt"]
        if self.merge_val:
            lists.insert(1, "list_val.txt")
        try:
            self.dataset_dir = resolve_dataset_dir(
                type(self).__name__,
                self.root,
                [folder, ""],
                [train_dir, test_dir, *lists],
                self.layout,
            )
        except FileNotFoundError as err:
            hint = self._other_layout_hint()
            if hint:
                raise FileNotFoundError(f"{err}\n{hint}") from err
            raise
        base = self.dataset_dir
        train = self._read_list(base / "list_train.txt", base / train_dir)
        if self.merge_val:
            train += self._read_list(base / "list_val.txt", base / train_dir)
        query = self._read_list(base / "list_query.txt", base / test_dir)
        gallery = self._read_list(base / "list_gallery.txt", base / test_dir)
        return train, query, gallery

    def _read_market_style(self) -> tuple[list[ImageRecord], ...]:
        name = type(self).__name__
        try:
            self.dataset_dir = resolve_dataset_dir(
                name,
                self.root,
                ["MSMT17", _VERSIONS[self.version][0], ""],
                _MARKET_SPLITS,
                self.layout,
            )
        except FileNotFoundError as err:
            hint = self._other_layout_hint()
            if hint:
                raise FileNotFoundError(f"{err}\n{hint}") from err
            raise
        example = "0000_c1_0001.jpg"
        parse = name_parser(name, _MARKET_NAME, example, _NUM_CAMERAS)
        train, query, gallery = (
            scan_folder(name, self.dataset_dir / split, (".jpg",), parse, example)
            for split in _MARKET_SPLITS
        )
        return train, query, gallery

    def _other_layout_hint(self) -> str:
        """How to select what is there instead, when the asked version or layout is missing."""
        hints = []
        asked = (self.version, self.data_layout)
        for version, (folder, train_dir, test_dir) in _VERSIONS.items():
            for base in (self.root / folder, self.root):
                there = (base / train_dir).is_dir() and (base / test_dir).is_dir()
                if there and (version, "lists") != asked:
                    spec = f"msmt17:{version}"
                    hints.append(
                        f"'{base}' holds MSMT17 {version} in the release layout: select it with "
                        f"version={version!r} (dataset spec {spec!r})"
                    )
                    break
        for base in (self.root / "MSMT17", self.root):
            if all((base / split).is_dir() for split in _MARKET_SPLITS):
                if self.data_layout != "market":
                    hints.append(
                        f"'{base}' holds a Market-style MSMT17: select it with layout='market' "
                        "(dataset spec 'msmt17:layout=market')"
                    )
                break
        return "\n".join(hints)

    def _read_list(self, list_file: Path, image_dir: Path) -> list[ImageRecord]:
        """Records of one list file, paths joined to ``image_dir``."""
        records: list[ImageRecord] = []
        for number, line in enumerate(list_file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split()
            where = f"line {number} of '{list_file}'"
            if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
                raise ValueError(f"MSMT17: {where} must read 'relpath pid', got {line!r}")
            relpath, pid = fields[0], int(fields[1])
            match = _NAME.fullmatch(Path(relpath).stem)
            camera = int(match.group(1)) if match else -1
            if not 1 <= camera <= _NUM_CAMERAS:
                raise ValueError(
                    f"MSMT17: cannot read the camera of '{relpath}' ({where}); expected names "
                    f"like '0000_000_01_0303morning_0015_0.jpg' whose third '_' field is the "
                    f"camera in 01..{_NUM_CAMERAS}"
                )
            path = image_dir / relpath
            if not records and not path.is_file():
                raise layout_error(type(self).__name__, path, self.root, self.layout)
            records.append(ImageRecord(str(path), pid, camera - 1, domain=0, orig_pid=pid))
        return records
