"""MSMT17 (Wei et al., CVPR 2018), V1 and V2, read from the list files of the release."""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar, Literal

from metareid._validation import check_choice
from metareid.data.datasets.base import (
    ImageRecord,
    OnBadImage,
    ReIDDataset,
    _layout_error,
    _resolve_dataset_dir,
)

__all__ = ["MSMT17"]

_VERSIONS = {
    "V1": ("MSMT17_V1", "train", "test"),
    "V2": ("MSMT17_V2", "mask_train_v2", "mask_test_v2"),
}
_LISTS = ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")
_NUM_CAMERAS = 15
_NAME = re.compile(r"\d+_\d+_(\d{2})_\d{4}[a-z]+_\d+_\d+")
"""Person id, image index, camera, date + period, frame, box: ``0000_000_01_0303morning_0015_0``."""


class MSMT17(ReIDDataset):
    """MSMT17: 1,041 train ids / 32,621 images (train + val), 3,060 test ids, 15 cameras.

    Read as distributed, without renaming any file. The list files hold one ``relpath pid``
    per line; ``relpath`` is relative to the train folder (``list_train.txt``,
    ``list_val.txt``) or the test folder (``list_query.txt``, ``list_gallery.txt``), e.g.
    ``0000/0000_000_01_0303morning_0015_0.jpg 0``. Both versions use the same file names:
    ``PPPP_NNN_CC_<date><time-of-day>_FFFF_K.jpg`` with the person id, the image index of
    the person, the camera ``CC`` in 01..15, the capture date and period, the frame and a
    box index. The camera is therefore the third ``_`` field (stored 0-based). The person
    id is taken from the list file. V2 is V1 with the faces masked.

    As in the published M3L code, the train and val lists are merged into the training split
    (``merge_val=True``) and relabelled to ``0..1040``.

    Layout (``root`` is e.g. ``<data-dir>/msmt17``)::

        root/
          MSMT17_V1/                          MSMT17_V2/
            train/0000/0000_000_01_...jpg       mask_train_v2/0000/...
            test/0000/0000_000_01_...jpg        mask_test_v2/0000/...
            list_train.txt  list_val.txt        list_train.txt  list_val.txt
            list_query.txt  list_gallery.txt    list_query.txt  list_gallery.txt

    ``root`` may also be the ``MSMT17_V1`` (``MSMT17_V2``) folder itself.

    Args:
        root: the dataset root.
        version: ``"V1"`` (default) or ``"V2"``.
        merge_val: add ``list_val.txt`` to the training split. Default True, as in the
            published code (the val ids are train ids).
        check_images: decode every image once at construction. Default False. Without it
            only the first file of each list is checked to exist, to catch a wrong layout.
        on_bad_image: with ``check_images``: ``"raise"`` (default) or ``"skip"``.

    Raises:
        FileNotFoundError: ``root``, an image folder, a list file or the first image of a
            list is missing (the message shows the layout above).
        ValueError: a bad ``version``, a malformed list line or a file name whose third
            ``_`` field is not a camera in 1..15 (the message names the list file, the line
            and the file).

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
        ...     ds = MSMT17(tmp, version="V2")
        >>> len(ds.train), ds.train[0].pid, ds.train[0].orig_pid, ds.train[0].camid
        (2, 0, 7, 13)
    """

    name: ClassVar[str] = "msmt17"
    layout: ClassVar[str] = (
        "  MSMT17_V1/                  (V2: MSMT17_V2/)\n"
        "    train/<pid>/<name>.jpg    (V2: mask_train_v2/)\n"
        "    test/<pid>/<name>.jpg     (V2: mask_test_v2/)\n"
        "    list_train.txt list_val.txt list_query.txt list_gallery.txt  ('relpath pid' lines)"
    )

    def __init__(
        self,
        root: str | Path,
        version: Literal["V1", "V2"] = "V1",
        merge_val: bool = True,
        *,
        check_images: bool = False,
        on_bad_image: OnBadImage = "raise",
    ) -> None:
        self.version = check_choice("version", version, tuple(_VERSIONS))
        self.merge_val = merge_val
        self.root = Path(root)
        folder, train_dir, test_dir = _VERSIONS[version]
        self.dataset_dir = _resolve_dataset_dir(
            type(self).__name__,
            self.root,
            [folder, ""],
            [train_dir, test_dir, *_LISTS],
            self.layout,
        )
        base = self.dataset_dir
        train = self._read_list(base / "list_train.txt", base / train_dir)
        if merge_val:
            train += self._read_list(base / "list_val.txt", base / train_dir)
        query = self._read_list(base / "list_query.txt", base / test_dir)
        gallery = self._read_list(base / "list_gallery.txt", base / test_dir)
        super().__init__(
            train, query, gallery, check_images=check_images, on_bad_image=on_bad_image
        )

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
                raise _layout_error(type(self).__name__, path, self.root, self.layout)
            records.append(ImageRecord(str(path), pid, camera - 1, domain=0, orig_pid=pid))
        return records
