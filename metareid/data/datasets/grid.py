"""GRID (QMUL underground re-id, Loy et al., CVPR 2009), a Protocol-1 target."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from metareid.data.datasets._folders import name_parser, resolve_dataset_dir, scan_folder
from metareid.data.datasets._splits import check_split_id
from metareid.data.datasets.base import OnBadImage, ReIDDataset, Use

__all__ = ["GRID"]

_NAME = re.compile(r"(\d+)_(\d+)_.*")
_EXAMPLE = "0001_1_25004_107_32_130.jpeg"
_MAT = "features_and_partitions.mat"


class GRID(ReIDDataset):
    """GRID: 250 paired ids + 775 gallery distractors (id 0), 8 cameras, 10 given splits.

    Images are ``probe/*.jpeg`` (250, one per paired id) and ``gallery/*.jpeg`` (1,025: one
    per paired id and 775 distractors with id ``0000``); in a name the first ``_`` field is
    the person id and the second the camera in 1..8 (``0001_1_25004_107_32_130.jpeg``). The
    10 splits are the release's own, read from ``features_and_partitions.mat``: its
    ``trainIdxAll`` holds one entry per split whose third field lists the 125 train ids
    (the structure the toolboxes read). Train = both images of those ids; query = the probe
    images of the other 125 ids; gallery = their gallery images plus the 775 distractors
    (900 images). Split statistics (train ids / images, query, gallery): 125 / 250,
    125 / 125, 126 / 900 (the distractors count as one id).

    Id ``0`` marks distractors here (:attr:`distractor_pid`), as in Market-1501.

    Layout (``root`` is e.g. ``<data-dir>/grid``)::

        root/
          underground_reid/
            probe/     0001_1_25004_107_32_130.jpeg ...
            gallery/   0001_5_25004_107_32_130.jpeg  0000_3_...jpeg ...
            features_and_partitions.mat

    ``root`` may also be the ``underground_reid`` folder.

    Args:
        root: the dataset root.
        split_id: which of the splits of the ``.mat`` file (10 in the release). Default 0.
        use: ``"train"`` (default) or ``"all"`` (see :class:`~metareid.data.ReIDDataset`).
        check_images: decode every image once at construction. Default False.
        on_bad_image: with ``check_images``: ``"raise"`` (default) or ``"skip"``.

    Raises:
        FileNotFoundError: ``root``, ``probe``, ``gallery`` or the ``.mat`` file is missing.
        ValueError: a name that does not parse, a camera outside 1..8, a ``.mat`` file
            without ``trainIdxAll`` or whose train ids are not probe ids, or a bad
            ``split_id``.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from scipy.io import savemat
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     base = Path(tmp) / "underground_reid"
        ...     for folder, names in (("probe", ["0001_1_1_1_1_1", "0002_2_1_1_1_1"]),
        ...                           ("gallery", ["0001_5_1_1_1_1", "0002_6_1_1_1_1",
        ...                                        "0000_3_1_1_1_1"])):
        ...         (base / folder).mkdir(parents=True)
        ...         for stem in names:
        ...             (base / folder / f"{stem}.jpeg").touch()
        ...     cells = np.empty((1, 10), dtype=object)
        ...     for i in range(10):
        ...         cells[0, i] = {"a": [[0]], "b": [[0]], "train": [[1 + i % 2]]}
        ...     savemat(base / "features_and_partitions.mat", {"trainIdxAll": cells})
        ...     ds = GRID(tmp, split_id=1)
        >>> [r.orig_pid for r in ds.train], [r.pid for r in ds.query], [r.pid for r in ds.gallery]
        ([2, 2], [1], [0, 1])
    """

    name: ClassVar[str] = "grid"
    layout: ClassVar[str] = (
        "  underground_reid/\n"
        "    probe/     0001_1_25004_107_32_130.jpeg ...\n"
        "    gallery/   0001_5_25004_107_32_130.jpeg 0000_3_...jpeg ...\n"
        f"    {_MAT}"
    )
    folder_names: ClassVar[tuple[str, ...]] = ("grid", "underground_reid")
    num_splits: ClassVar[int] = 10
    distractor_pid: int | None = 0

    def __init__(
        self,
        root: str | Path,
        split_id: int = 0,
        *,
        use: Use = "train",
        check_images: bool = False,
        on_bad_image: OnBadImage = "raise",
    ) -> None:
        name = type(self).__name__
        self.split_id = check_split_id(name, split_id, self.num_splits)
        self.root = Path(root)
        self.dataset_dir = resolve_dataset_dir(
            name, self.root, ["underground_reid", ""], ["probe", "gallery", _MAT], self.layout
        )
        parse = name_parser(name, _NAME, _EXAMPLE, 8)
        probe, gallery_all = (
            scan_folder(name, self.dataset_dir / folder, (".jpeg", ".jpg"), parse, _EXAMPLE)
            for folder in ("probe", "gallery")
        )
        mat_path = self.dataset_dir / _MAT
        partitions = _read_partitions(mat_path)
        split = partitions[check_split_id(name, split_id, len(partitions))]
        probe_ids = {r.pid for r in probe}
        strays = sorted(set(split) - probe_ids)
        if strays or 0 in split:
            raise ValueError(
                f"{name}: split {split_id} of '{mat_path}' lists train ids that are not probe "
                f"ids of '{self.dataset_dir / 'probe'}': {(strays or [0])[:10]}"
            )
        train_ids = set(split)
        train = [r for r in probe + gallery_all if r.pid in train_ids]
        query = [r for r in probe if r.pid not in train_ids]
        gallery = [r for r in gallery_all if r.pid not in train_ids]
        super().__init__(
            train, query, gallery, use=use, check_images=check_images, on_bad_image=on_bad_image
        )


def _read_partitions(path: Path) -> list[list[int]]:
    """The train ids of every split in ``trainIdxAll`` of the GRID ``.mat`` file."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        mat = loadmat(path)
    except (MatReadError, ValueError, OSError, NotImplementedError) as err:
        raise ValueError(f"GRID: cannot read '{path}' as a MATLAB file: {err}") from err
    if "trainIdxAll" not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(f"GRID: '{path}' has no 'trainIdxAll' (it holds {keys})")
    cells = np.asarray(mat["trainIdxAll"]).ravel()
    splits = []
    for i, cell in enumerate(cells):
        ids = _train_ids(cell)
        if ids is None:
            raise ValueError(
                f"GRID: entry {i} of 'trainIdxAll' in '{path}' is not a struct whose third field "
                "is a vector of person ids"
            )
        splits.append(ids)
    if not splits:
        raise ValueError(f"GRID: 'trainIdxAll' in '{path}' is empty")
    return splits


def _train_ids(cell: Any) -> list[int] | None:
    """Unwrap one ``trainIdxAll`` entry (MATLAB cell -> struct -> third field) to its ids."""
    value = cell
    for _ in range(8):  # cells and 1x1 structs arrive wrapped in object arrays
        array = np.asarray(value)
        if array.dtype.names is not None:  # a struct: its third field holds the train ids
            if len(array.dtype.names) < 3 or array.size != 1:
                return None
            value = array.ravel()[0][2]
        elif array.dtype == object:
            if array.size != 1:
                return None
            value = array.ravel()[0]
        else:
            if not np.issubdtype(array.dtype, np.number) or array.size == 0:
                return None
            flat = array.ravel()
            if not np.all(flat == np.round(flat)):
                return None
            return [int(v) for v in flat]
    return None
