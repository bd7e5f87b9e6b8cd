"""CUHK03 (Li et al., CVPR 2014): the CUHK03-NP protocol and the old 1,367-id protocol."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

from metareid._validation import check_choice
from metareid.data.datasets._folders import resolve_dataset_dir
from metareid.data.datasets._market_layout import MarketLayoutDataset
from metareid.data.datasets.base import ImageRecord, OnBadImage, ReIDDataset, Use

__all__ = ["CUHK03", "CUHK03NP"]

_SUBSETS = ("detected", "labeled")


class CUHK03NP(MarketLayoutDataset):
    """CUHK03 under the new protocol (CUHK03-NP, Zhong et al., CVPR 2017), 2 cameras.

    767 train ids and 700 test ids. ``detected``: 7,365 train / 1,400 query / 5,332 gallery
    images; ``labeled``: 7,368 / 1,400 / 5,328. File names are ``PPPP_cC_N.png`` (person id,
    camera ``C`` in 1..2 stored 0-based, image number), e.g. ``0001_c1_1.png``; anything
    after ``_cC_`` is ignored. The published M3L code trains on and evaluates the
    ``detected`` subset, with the Market-1501 evaluation protocol.

    Layout (``root`` is e.g. ``<data-dir>/cuhk03np``)::

        root/
          detected/                   (or labeled/)
            bounding_box_train/   0001_c1_1.png ...
            query/                0003_c1_1.png ...
            bounding_box_test/    0003_c2_2.png ...

    ``root/cuhk03-np/detected/...`` (the folder of the release archive) is accepted too.

    M3L, BAU, Style-Interleaved Learning and torchreid use ``detected``; fast-reid, ACL and
    META default to ``labeled``.

    Args:
        root: the dataset root.
        subset: ``"detected"`` (default, as in the paper) or ``"labeled"``.
        use: ``"train"`` (default) or ``"all"``: train + query + gallery form the training
            split (1,467 ids, test ids labelled after the 767 train ids), query and gallery
            are empty. Protocols 1 and 3 train on this.
        check_images: decode every image once at construction. Default False.
        on_bad_image: with ``check_images``: ``"raise"`` (default) or ``"skip"``.

    Raises:
        FileNotFoundError: ``root`` or a split folder is missing (the message shows the
            layout above).
        ValueError: a bad ``subset``, a split folder without ``.png`` or a file name that
            does not parse.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     for split in ("bounding_box_train", "query", "bounding_box_test"):
        ...         (Path(tmp) / "labeled" / split).mkdir(parents=True)
        ...         (Path(tmp) / "labeled" / split / "0003_c2_1.png").touch()
        ...     ds = CUHK03NP(tmp, subset="labeled")
        >>> ds.subset, ds.query[0].pid, ds.query[0].camid
        ('labeled', 3, 1)
    """

    name: ClassVar[str] = "cuhk03np"
    layout: ClassVar[str] = (
        "  detected/   (or labeled/, or cuhk03-np/detected/)\n"
        "    bounding_box_train/   0001_c1_1.png ...\n"
        "    query/                0003_c1_1.png ...\n"
        "    bounding_box_test/    0003_c2_2.png ..."
    )
    extensions: ClassVar[tuple[str, ...]] = (".png",)
    pattern: ClassVar[re.Pattern[str]] = re.compile(r"(-?\d+)_c(\d)(?:_[^.]*)?")
    example_name: ClassVar[str] = "0001_c1_1.png"
    num_cameras: ClassVar[int | None] = 2
    folder_names: ClassVar[tuple[str, ...]] = ("cuhk03np", "cuhk03-np")

    def __init__(
        self,
        root: str | Path,
        subset: Literal["detected", "labeled"] = "detected",
        *,
        use: Use = "train",
        check_images: bool = False,
        on_bad_image: OnBadImage = "raise",
    ) -> None:
        self.subset = check_choice("subset", subset, _SUBSETS)
        super().__init__(root, use=use, check_images=check_images, on_bad_image=on_bad_image)

    def dataset_dir_candidates(self) -> list[str]:
        """``<subset>`` under ``root``, else ``cuhk03-np/<subset>``."""
        return [self.subset, f"cuhk03-np/{self.subset}"]


class CUHK03(ReIDDataset):
    """CUHK03 under the old protocol, as the published M3L code reads it for a source.

    The published code trains on the ``trainval`` ids of split 0: 1,367 ids and 26,263
    images (labeled and detected boxes together). Only the training split is used in M3L;
    query and gallery (100 ids) follow the same code for completeness: for each query id
    and camera, the last image of the camera's list is the query and the others go to the
    gallery (a camera with a single image puts it in both; the Market-1501 evaluation
    protocol ignores such same-camera matches).

    Layout (``root`` is e.g. ``<data-dir>/cuhk03``)::

        root/
          cuhk03_release/
            images/        00000000_00_0000.jpg ...
            meta.json
            splits.json

    ``meta.json`` (the format of the open-reid toolbox)::

        {"name": "cuhk03", "shot": "multiple", "num_cameras": 2,
         "identities": [                       # one entry per person id, in id order
             [["00000000_00_0000.jpg", ...],   # images of camera 0
              ["00000000_01_0000.jpg", ...]],  # images of camera 1
             ...]}

    Image names are ``{pid:08d}_{camid:02d}_{index:04d}.jpg`` and must agree with their
    position in ``identities``. Only ``identities`` is required.

    ``splits.json``: a list of splits, each ``{"trainval": [pid, ...], "query": [pid, ...],
    "gallery": [pid, ...]}`` with ids indexing ``identities``; ``split_id`` picks one.

    Args:
        root: the dataset root.
        split_id: which split of ``splits.json``. Default 0, as in the published code.
        use: ``"train"`` (default) or ``"all"``: the query and gallery ids join the training
            split (labelled after the train ids); query and gallery are then empty.
        check_images: decode every image once at construction. Default False.
        on_bad_image: with ``check_images``: ``"raise"`` (default) or ``"skip"``.

    Raises:
        FileNotFoundError: ``root``, ``images/``, ``meta.json`` or ``splits.json`` is
            missing (the message shows the layout above).
        ValueError: malformed JSON, ``split_id`` out of range, an id out of range or an
            image name that disagrees with its position.

    Example:
        >>> import json, tempfile
        >>> from pathlib import Path
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     base = Path(tmp) / "cuhk03_release"
        ...     (base / "images").mkdir(parents=True)
        ...     ids = [[[f"{p:08d}_{c:02d}_{i:04d}.jpg" for i in range(2)] for c in range(2)]
        ...            for p in range(3)]
        ...     _ = (base / "meta.json").write_text(json.dumps({"identities": ids}))
        ...     split = {"trainval": [0, 2], "query": [1], "gallery": [1]}
        ...     _ = (base / "splits.json").write_text(json.dumps([split]))
        ...     ds = CUHK03(tmp)
        >>> ds.train_stats, ds.query_stats, ds.gallery_stats
        (SplitStats(num_pids=2, num_imgs=8, num_cams=2), SplitStats(num_pids=1, num_imgs=2, num_cams=2), SplitStats(num_pids=1, num_imgs=2, num_cams=2))
    """

    name: ClassVar[str] = "cuhk03"
    layout: ClassVar[str] = (
        "  cuhk03_release/\n"
        "    images/        00000000_00_0000.jpg ...\n"
        "    meta.json      {'identities': [[[camera-0 names], [camera-1 names]], ...]}\n"
        "    splits.json    [{'trainval': [...], 'query': [...], 'gallery': [...]}, ...]"
    )

    def __init__(
        self,
        root: str | Path,
        split_id: int = 0,
        *,
        use: Use = "train",
        check_images: bool = False,
        on_bad_image: OnBadImage = "raise",
    ) -> None:
        self.root = Path(root)
        self.split_id = split_id
        self.dataset_dir = resolve_dataset_dir(
            type(self).__name__,
            self.root,
            ["cuhk03_release", ""],
            ["images", "meta.json", "splits.json"],
            self.layout,
        )
        meta_path = self.dataset_dir / "meta.json"
        splits_path = self.dataset_dir / "splits.json"
        identities = _read_identities(meta_path)
        split = _read_split(splits_path, split_id, len(identities))
        images = self.dataset_dir / "images"

        def pluck(pids: list[int], take: str) -> list[ImageRecord]:
            records = []
            for pid in pids:
                for camid, names in enumerate(identities[pid]):
                    if take == "last":
                        names = names[-1:]
                    elif take == "but_last" and len(names) > 1:
                        names = names[:-1]
                    for name in names:
                        _check_name(meta_path, name, pid, camid)
                        path = str(images / name)
                        records.append(ImageRecord(path, pid, camid, domain=0, orig_pid=pid))
            return records

        super().__init__(
            pluck(sorted(split["trainval"]), "all"),
            pluck(split["query"], "last"),
            pluck(split["gallery"], "but_last"),
            use=use,
            check_images=check_images,
            on_bad_image=on_bad_image,
        )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"CUHK03: '{path}' is not valid JSON: {err}") from err


def _read_identities(path: Path) -> list[list[list[str]]]:
    """``identities`` of ``meta.json``: per person id, per camera, a list of file names."""
    meta = _read_json(path)
    identities = meta.get("identities") if isinstance(meta, dict) else None
    valid = isinstance(identities, list) and all(
        isinstance(cams, list)
        and all(
            isinstance(names, list) and all(isinstance(n, str) for n in names) for names in cams
        )
        for cams in identities
    )
    if not valid:
        raise ValueError(
            f"CUHK03: '{path}' must be an object whose 'identities' is a list (one per person "
            "id) of lists (one per camera) of image file names"
        )
    assert isinstance(identities, list)
    return identities


def _read_split(path: Path, split_id: int, num_ids: int) -> dict[str, list[int]]:
    """Split ``split_id`` of ``splits.json``, checked against ``num_ids`` identities."""
    splits = _read_json(path)
    if not isinstance(splits, list) or not splits:
        raise ValueError(f"CUHK03: '{path}' must be a non-empty list of splits")
    if isinstance(split_id, bool) or not isinstance(split_id, int):
        raise TypeError(f"split_id must be an int, got {split_id!r}")
    if not 0 <= split_id < len(splits):
        raise ValueError(f"split_id must lie in [0, {len(splits)}) for '{path}', got {split_id}")
    split = splits[split_id]
    keys = ("trainval", "query", "gallery")
    if not isinstance(split, dict) or any(not isinstance(split.get(k), list) for k in keys):
        raise ValueError(
            f"CUHK03: split {split_id} of '{path}' must be an object with the id lists {list(keys)}"
        )
    for key in keys:
        bad = [p for p in split[key] if not isinstance(p, int) or not 0 <= p < num_ids]
        if bad:
            raise ValueError(
                f"CUHK03: split {split_id} of '{path}' has {key} ids outside [0, {num_ids}) "
                f"(the number of identities in meta.json): {bad[:10]}"
            )
    return {k: list(split[k]) for k in keys}


_CUHK03_NAME = re.compile(r"(\d+)_(\d+)_(\d+)")


def _check_name(meta_path: Path, name: str, pid: int, camid: int) -> None:
    """Check that ``name`` is ``{pid:08d}_{camid:02d}_{index:04d}.<ext>``."""
    match = _CUHK03_NAME.fullmatch(Path(name).stem)
    if match is None or (int(match.group(1)), int(match.group(2))) != (pid, camid):
        raise ValueError(
            f"CUHK03: image name '{name}' in '{meta_path}' does not match its position "
            f"(person id {pid}, camera {camid}); expected '{pid:08d}_{camid:02d}_NNNN.jpg'"
        )
