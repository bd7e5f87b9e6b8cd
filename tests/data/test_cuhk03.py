"""CUHK03-NP (detected / labeled) and the old CUHK03 protocol on fake trees."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from metareid.data import CUHK03, CUHK03NP

NP_SPLITS = {
    "bounding_box_train": ["0001_c1_1.png", "0001_c2_2.png", "0004_c1_1.png"],
    "query": ["0010_c1_1.png"],
    "bounding_box_test": ["0010_c2_1.png", "0011_c1_2.png"],
}

MakeFiles = Callable[[Path, Iterable[str]], None]


def make_np(base: Path, touch: MakeFiles) -> None:
    for split, names in NP_SPLITS.items():
        touch(base / split, names)


def test_np_detected_is_default(tmp_path: Path, touch: MakeFiles) -> None:
    make_np(tmp_path / "detected", touch)
    ds = CUHK03NP(tmp_path)
    assert ds.subset == "detected"
    assert [(r.pid, r.orig_pid, r.camid) for r in ds.train] == [(0, 1, 0), (0, 1, 1), (1, 4, 0)]
    assert ds.gallery_stats.num_pids == 2


def test_np_labeled_and_release_folder(tmp_path: Path, touch: MakeFiles) -> None:
    make_np(tmp_path / "cuhk03-np" / "labeled", touch)
    ds = CUHK03NP(tmp_path, subset="labeled")
    assert ds.num_train_imgs == 3
    with pytest.raises(FileNotFoundError, match="detected"):
        CUHK03NP(tmp_path)  # only labeled/ exists


def test_np_rejects_bad_subset_and_jpg(tmp_path: Path, touch: MakeFiles) -> None:
    with pytest.raises(ValueError, match="subset"):
        CUHK03NP(tmp_path, subset="both")  # type: ignore[arg-type]
    for split in NP_SPLITS:
        touch(tmp_path / "detected" / split, ["0001_c1_1.jpg"])
    with pytest.raises(ValueError, match=r"no \.png image"):
        CUHK03NP(tmp_path)


def test_np_camera_three_is_an_error(tmp_path: Path, touch: MakeFiles) -> None:
    make_np(tmp_path / "detected", touch)
    touch(tmp_path / "detected" / "query", ["0012_c3_1.png"])
    with pytest.raises(ValueError, match=r"0012_c3_1\.png"):
        CUHK03NP(tmp_path)


def make_old(
    root: Path,
    touch: MakeFiles,
    identities: list[list[list[str]]] | None = None,
    splits: list[dict[str, list[int]]] | None = None,
) -> Path:
    base = root / "cuhk03_release"
    if identities is None:
        # 4 ids, 2 cameras, 3 images per camera, except id 3 camera 1: a single image
        identities = [
            [
                [f"{p:08d}_{c:02d}_{i:04d}.jpg" for i in range(1 if (p, c) == (3, 1) else 3)]
                for c in range(2)
            ]
            for p in range(4)
        ]
    if splits is None:
        splits = [{"trainval": [2, 0], "query": [1, 3], "gallery": [1, 3]}]
    touch(base / "images", [n for cams in identities for names in cams for n in names])
    (base / "meta.json").write_text(
        json.dumps(
            {"name": "cuhk03", "shot": "multiple", "num_cameras": 2, "identities": identities}
        )
    )
    (base / "splits.json").write_text(json.dumps(splits))
    return base


def test_old_protocol_splits(tmp_path: Path, touch: MakeFiles) -> None:
    base = make_old(tmp_path, touch)
    ds = CUHK03(tmp_path)
    assert ds.train_stats == (2, 12, 2)
    assert sorted({(r.pid, r.orig_pid) for r in ds.train}) == [(0, 0), (1, 2)]
    # query: the last image of every camera of ids 1 and 3
    assert sorted(Path(r.path).name for r in ds.query) == [
        "00000001_00_0002.jpg",
        "00000001_01_0002.jpg",
        "00000003_00_0002.jpg",
        "00000003_01_0000.jpg",
    ]
    # gallery: the other images; a camera with one image keeps it in the gallery too
    assert ds.gallery_stats == (2, 2 + 2 + 2 + 1, 2)
    assert str(base / "images" / "00000003_01_0000.jpg") in {r.path for r in ds.gallery}


def test_old_protocol_split_id(tmp_path: Path, touch: MakeFiles) -> None:
    splits = [
        {"trainval": [0], "query": [1], "gallery": [1]},
        {"trainval": [0, 1, 2], "query": [3], "gallery": [3]},
    ]
    make_old(tmp_path, touch, splits=splits)
    assert CUHK03(tmp_path, split_id=1).num_train_pids == 3
    with pytest.raises(ValueError, match=r"split_id must lie in \[0, 2\)"):
        CUHK03(tmp_path, split_id=2)


def test_old_protocol_name_mismatch(tmp_path: Path, touch: MakeFiles) -> None:
    identities = [[["00000000_00_0000.jpg"], ["00000000_00_0001.jpg"]]]  # camera 1 named 00
    make_old(tmp_path, touch, identities, [{"trainval": [0], "query": [], "gallery": []}])
    with pytest.raises(ValueError, match=r"00000000_00_0001\.jpg.*meta\.json"):
        CUHK03(tmp_path)


def test_old_protocol_bad_json(tmp_path: Path, touch: MakeFiles) -> None:
    base = make_old(tmp_path, touch)
    (base / "splits.json").write_text("[{")
    with pytest.raises(ValueError, match=r"splits\.json"):
        CUHK03(tmp_path)
    (base / "splits.json").write_text(json.dumps([{"trainval": [9], "query": [], "gallery": []}]))
    with pytest.raises(ValueError, match=r"trainval ids outside \[0, 4\)"):
        CUHK03(tmp_path)
    (base / "meta.json").write_text(json.dumps({"identities": "nope"}))
    with pytest.raises(ValueError, match=r"meta\.json"):
        CUHK03(tmp_path)


def test_old_protocol_missing_meta(tmp_path: Path, touch: MakeFiles) -> None:
    base = make_old(tmp_path, touch)
    (base / "meta.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"meta\.json(.|\n)*Expected layout"):
        CUHK03(tmp_path)
