"""MSMT17 V1 and V2 read from the list files, without renaming files, or a Market-style copy."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

import pytest

from metareid.data import MSMT17

TRAIN = ["0000/0000_000_01_0303morning_0015_0.jpg", "0000/0000_001_05_0303noon_0100_1.jpg"]
VAL = ["0003/0003_000_15_0113afternoon_0016_0.jpg"]
QUERY = ["0000/0000_000_02_0302morning_0036_0.jpg"]
GALLERY = ["0000/0000_001_07_0302noon_0042_1.jpg", "0001/0001_000_11_0114morning_0001_0.jpg"]

MakeFiles = Callable[[Path, Iterable[str]], None]


def make_msmt(root: Path, touch: MakeFiles, version: str = "V2") -> Path:
    folder, train_dir, test_dir = {
        "V1": ("MSMT17_V1", "train", "test"),
        "V2": ("MSMT17_V2", "mask_train_v2", "mask_test_v2"),
    }[version]
    base = root / folder
    touch(base / train_dir, TRAIN + VAL)
    touch(base / test_dir, QUERY + GALLERY)
    for name, lines in (
        ("list_train.txt", [f"{TRAIN[0]} 0", f"{TRAIN[1]} 0"]),
        ("list_val.txt", [f"{VAL[0]} 3"]),
        ("list_query.txt", [f"{QUERY[0]} 0"]),
        ("list_gallery.txt", [f"{GALLERY[0]} 0", f"{GALLERY[1]} 1"]),
    ):
        (base / name).write_text("\n".join(lines) + "\n")
    return base


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_msmt_versions_merge_val_and_read_camera(
    tmp_path: Path, touch: MakeFiles, version: Literal["V1", "V2"]
) -> None:
    base = make_msmt(tmp_path, touch, version)
    ds = MSMT17(tmp_path, version=version)
    assert [(r.pid, r.orig_pid, r.camid) for r in ds.train] == [(0, 0, 0), (0, 0, 4), (1, 3, 14)]
    assert [(r.pid, r.camid) for r in ds.query] == [(0, 1)]
    assert [(r.pid, r.camid) for r in ds.gallery] == [(0, 6), (1, 10)]
    train_dir = "train" if version == "V1" else "mask_train_v2"
    assert ds.train[0].path == str(base / train_dir / TRAIN[0])


def test_msmt_without_val(tmp_path: Path, touch: MakeFiles) -> None:
    base = make_msmt(tmp_path, touch)
    ds = MSMT17(tmp_path, merge_val=False)
    assert ds.train_stats == (1, 2, 2)
    (base / "list_val.txt").unlink()  # not needed when val is not merged
    assert MSMT17(tmp_path, merge_val=False).train_stats == (1, 2, 2)


def test_msmt_default_is_v2(tmp_path: Path, touch: MakeFiles) -> None:
    make_msmt(tmp_path, touch, "V2")
    ds = MSMT17(tmp_path)
    assert ds.version == "V2" and "mask_train_v2" in ds.train[0].path


def test_msmt_missing_version_names_the_other(tmp_path: Path, touch: MakeFiles) -> None:
    make_msmt(tmp_path, touch, "V1")
    with pytest.raises(
        FileNotFoundError, match=r"select it with version='V1' \(dataset spec 'msmt17:V1'\)"
    ):
        MSMT17(tmp_path)  # default V2
    make_msmt(tmp_path / "other", touch, "V2")
    with pytest.raises(FileNotFoundError, match=r"version='V2' \(dataset spec 'msmt17:V2'\)"):
        MSMT17(tmp_path / "other", version="V1")
    release = make_msmt(tmp_path / "third", touch, "V1")  # root = the V1 folder itself
    with pytest.raises(FileNotFoundError, match=r"msmt17:V1"):
        MSMT17(release)


def test_msmt_market_style_copy(tmp_path: Path, touch: MakeFiles) -> None:
    base = tmp_path / "MSMT17"
    touch(
        base / "bounding_box_train", ["0000_c1_0001.jpg", "0000_c3_0002.jpg", "0005_c15_0003.jpg"]
    )
    touch(base / "query", ["0000_c2_0001.jpg"])
    touch(base / "bounding_box_test", ["0000_c4_0002.jpg", "0001_c9_0001.jpg"])
    with pytest.raises(
        FileNotFoundError, match=r"layout='market' \(dataset spec 'msmt17:layout=market'\)"
    ):
        MSMT17(tmp_path)
    ds = MSMT17(tmp_path, layout="market")
    assert [(r.pid, r.orig_pid, r.camid) for r in ds.train] == [(0, 0, 0), (0, 0, 2), (1, 5, 14)]
    assert ds.query_stats == (1, 1, 1) and ds.gallery_stats == (2, 2, 2)
    touch(base / "query", ["0003_000_01_0302morning_0036_0.jpg"])
    with pytest.raises(ValueError, match=r"0003_000_01_0302morning_0036_0\.jpg"):
        MSMT17(tmp_path, layout="market")
    with pytest.raises(ValueError, match="layout"):
        MSMT17(tmp_path, layout="folders")  # type: ignore[arg-type]


def test_msmt_use_all_keeps_train_and_test_ids_apart(tmp_path: Path, touch: MakeFiles) -> None:
    make_msmt(tmp_path, touch)
    ds = MSMT17(tmp_path, use="all")
    # train ids 0 and 3, test ids 0 and 1: the two id-0 persons get different labels.
    labels = {(r.orig_pid, "mask_train_v2" in r.path): r.pid for r in ds.train}
    assert labels == {(0, True): 0, (3, True): 1, (0, False): 2, (1, False): 3}
    assert ds.train_stats == (4, 6, 6) and ds.query == [] and ds.gallery == []


def test_msmt_release_folder_as_root(tmp_path: Path, touch: MakeFiles) -> None:
    base = make_msmt(tmp_path, touch, "V2")
    assert MSMT17(base, version="V2").num_train_imgs == 3


def test_msmt_wrong_version_layout(tmp_path: Path, touch: MakeFiles) -> None:
    make_msmt(tmp_path, touch, "V1")
    with pytest.raises(FileNotFoundError, match=r"MSMT17_V2(.|\n)*Expected layout"):
        MSMT17(tmp_path, version="V2")
    with pytest.raises(ValueError, match="version"):
        MSMT17(tmp_path, version="V3")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError) as err:  # nothing of MSMT17 at all: no hint
        MSMT17(tmp_path / "MSMT17_V1" / "train")
    assert "select it" not in str(err.value)


def test_msmt_missing_list_file(tmp_path: Path, touch: MakeFiles) -> None:
    base = make_msmt(tmp_path, touch)
    (base / "list_val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"list_val\.txt"):
        MSMT17(tmp_path)


def test_msmt_malformed_line_and_camera(tmp_path: Path, touch: MakeFiles) -> None:
    base = make_msmt(tmp_path, touch)
    (base / "list_query.txt").write_text(f"{QUERY[0]}\n")
    with pytest.raises(ValueError, match=r"line 1 of .*list_query\.txt"):
        MSMT17(tmp_path)
    (base / "list_query.txt").write_text("0000/0000_c1_0001.jpg 0\n")
    with pytest.raises(ValueError, match=r"0000_c1_0001\.jpg.*list_query\.txt"):
        MSMT17(tmp_path)
    (base / "list_query.txt").write_text("0000/0000_000_16_0302morning_0036_0.jpg 0\n")
    with pytest.raises(ValueError, match=r"01\.\.15"):
        MSMT17(tmp_path)


def test_msmt_listed_image_missing(tmp_path: Path, touch: MakeFiles) -> None:
    base = make_msmt(tmp_path, touch)
    (base / "mask_test_v2" / QUERY[0]).unlink()
    with pytest.raises(FileNotFoundError, match=r"0000_000_02_0302morning_0036_0\.jpg"):
        MSMT17(tmp_path)
