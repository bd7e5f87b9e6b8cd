"""Market-1501 and DukeMTMC-reID loading on fake trees with the real file names."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from metareid.data import BadImageError, DukeMTMCreID, Market1501

MARKET = "Market-1501-v15.09.15"
TRAIN = ["0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg", "0007_c6s2_000100_01.jpg"]
QUERY = ["0001_c1s1_001051_00.jpg", "0003_c3s1_000201_00.jpg"]
GALLERY = [
    "0001_c2s1_000301_01.jpg",
    "0003_c4s1_000676_02.jpg",
    "0000_c1s1_000151_01.jpg",  # distractor
    "-1_c1s1_000401_03.jpg",  # junk
]

MakeFiles = Callable[[Path, Iterable[str]], None]


def make_market(base: Path, make: MakeFiles) -> Path:
    make(base / "bounding_box_train", [*TRAIN, "Thumbs.db"])
    make(base / "query", QUERY)
    make(base / "bounding_box_test", GALLERY)
    return base


def test_market_parses_relabels_and_drops_junk(tmp_path: Path, touch: MakeFiles) -> None:
    make_market(tmp_path / MARKET, touch)
    ds = Market1501(tmp_path)
    assert [(r.pid, r.orig_pid, r.camid) for r in ds.train] == [(0, 2, 0), (0, 2, 1), (1, 7, 5)]
    assert all(r.domain == 0 for r in ds.train + ds.query + ds.gallery)
    assert [(r.pid, r.camid) for r in ds.query] == [(1, 0), (3, 2)]
    gallery_pids = sorted(r.pid for r in ds.gallery)
    assert gallery_pids == [0, 1, 3]  # distractor kept, junk dropped
    assert (ds.num_train_pids, ds.num_train_imgs, ds.num_train_cams) == (2, 3, 3)
    assert (ds.num_query_pids, ds.num_query_imgs, ds.num_query_cams) == (2, 2, 2)
    assert (ds.num_gallery_pids, ds.num_gallery_imgs, ds.num_gallery_cams) == (3, 3, 3)
    assert ds.train[0].path == str(tmp_path / MARKET / "bounding_box_train" / TRAIN[0])
    assert "train" in ds.summary() and "Market1501" in repr(ds)


def test_market_accepts_the_release_folder_as_root(tmp_path: Path, touch: MakeFiles) -> None:
    make_market(tmp_path / MARKET, touch)
    assert Market1501(tmp_path / MARKET).num_train_imgs == 3


def test_missing_root_names_path_and_layout(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as err:
        Market1501(missing)
    assert str(missing) in str(err.value)
    assert "bounding_box_train" in str(err.value) and MARKET in str(err.value)


def test_wrong_layout_names_missing_folder(tmp_path: Path, touch: MakeFiles) -> None:
    touch(tmp_path / MARKET / "bounding_box_train", TRAIN)
    touch(tmp_path / MARKET / "bounding_box_test", GALLERY)
    with pytest.raises(FileNotFoundError) as err:
        Market1501(tmp_path)
    assert str(tmp_path / MARKET / "query") in str(err.value)
    assert "Expected layout" in str(err.value)


def test_unparsable_name_is_named(tmp_path: Path, touch: MakeFiles) -> None:
    make_market(tmp_path / MARKET, touch)
    touch(tmp_path / MARKET / "query", ["holiday_photo.jpg"])
    with pytest.raises(ValueError, match=r"holiday_photo\.jpg"):
        Market1501(tmp_path)


def test_camera_out_of_range_is_named(tmp_path: Path, touch: MakeFiles) -> None:
    make_market(tmp_path / MARKET, touch)
    touch(tmp_path / MARKET / "query", ["0004_c7s1_000001_00.jpg"])
    with pytest.raises(ValueError, match=r"camera 7 .*0004_c7s1_000001_00\.jpg"):
        Market1501(tmp_path)


def test_empty_split_folder(tmp_path: Path, touch: MakeFiles) -> None:
    make_market(tmp_path / MARKET, touch)
    for path in (tmp_path / MARKET / "query").iterdir():
        path.unlink()
    with pytest.raises(ValueError, match=r"no \.jpg image"):
        Market1501(tmp_path)


def test_undecodable_image_raises_or_is_skipped(tmp_path: Path, images: MakeFiles) -> None:
    base = make_market(tmp_path / MARKET, images)
    bad = base / "bounding_box_train" / "0009_c3s1_000001_01.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    assert Market1501(tmp_path).num_train_imgs == 4  # not decoded by default
    with pytest.raises(BadImageError, match=r"0009_c3s1_000001_01\.jpg") as err:
        Market1501(tmp_path, check_images=True)
    assert err.value.path == str(bad)
    with pytest.warns(UserWarning, match=r"0009_c3s1_000001_01\.jpg"):
        ds = Market1501(tmp_path, check_images=True, on_bad_image="skip")
    assert ds.num_train_imgs == 3 and ds.num_train_pids == 2


def test_bad_on_bad_image_value(tmp_path: Path, touch: MakeFiles) -> None:
    make_market(tmp_path / MARKET, touch)
    with pytest.raises(ValueError, match="on_bad_image"):
        Market1501(tmp_path, on_bad_image="ignore")  # type: ignore[arg-type]


def test_duke_parses_eight_cameras(tmp_path: Path, touch: MakeFiles) -> None:
    base = tmp_path / "DukeMTMC-reID"
    touch(base / "bounding_box_train", ["0005_c2_f0046985.jpg", "0012_c8_f0000001.jpg"])
    touch(base / "query", ["0005_c2_f0046985.jpg"])
    touch(base / "bounding_box_test", ["0005_c5_f0041235.jpg", "0000_c1_f0000002.jpg"])
    ds = DukeMTMCreID(tmp_path)
    assert [(r.pid, r.orig_pid, r.camid) for r in ds.train] == [(0, 5, 1), (1, 12, 7)]
    assert sorted(r.pid for r in ds.gallery) == [0, 5]


def test_duke_rejects_market_names(tmp_path: Path, touch: MakeFiles) -> None:
    base = tmp_path / "DukeMTMC-reID"
    touch(base / "bounding_box_train", ["0002_c1s1_000451_03.jpg"])
    touch(base / "query", ["0005_c2_f0046985.jpg"])
    touch(base / "bounding_box_test", ["0005_c5_f0041235.jpg"])
    with pytest.raises(ValueError, match=r"0002_c1s1_000451_03\.jpg.*0005_c2_f0046985\.jpg"):
        DukeMTMCreID(tmp_path)


def test_duke_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="DukeMTMC-reID"):
        DukeMTMCreID(tmp_path / "duke")
