"""CUHK02 (camera pairs, per-pair ids) and CUHK-SYSU (crops or Market layout)."""

from __future__ import annotations

from pathlib import Path

import fake_trees as ft
import pytest

from metareid.data import CUHK02, CUHKSYSU, build_dataset


def test_cuhk02_torchreid_split_per_pair_cameras(tmp_path: Path) -> None:
    ft.cuhk02(tmp_path, ids_per_pair=(9, 3, 1, 2, 3))  # 971, 306, 107, 193, 239 scaled
    ds = CUHK02(tmp_path)
    assert tuple(ds.train_stats) == (15, 60, 8)  # P1-P4: 9+3+1+2 ids, 2 cameras each
    assert tuple(ds.query_stats) == (3, 6, 1) and tuple(ds.gallery_stats) == (3, 6, 1)
    assert {r.camid for r in ds.query} == {8} and {r.camid for r in ds.gallery} == {9}
    # the same file id in two pairs is two people
    p1 = [r for r in ds.train if "/P1/" in r.path and r.orig_pid % 1_000_000 == 1]
    p2 = [r for r in ds.train if "/P2/" in r.path and r.orig_pid % 1_000_000 == 1]
    assert {r.pid for r in p1}.isdisjoint({r.pid for r in p2})
    assert {r.orig_pid for r in ds.query} == {5_000_001, 5_000_002, 5_000_003}


def test_cuhk02_all_pairs_for_training_and_shared_cameras(tmp_path: Path) -> None:
    ft.cuhk02(tmp_path, ids_per_pair=(9, 3, 1, 2, 3))
    ds = CUHK02(tmp_path, use="all")
    assert tuple(ds.train_stats) == (18, 72, 10) and ds.query == [] and ds.gallery == []
    shared = build_dataset("cuhk02", tmp_path, use="all", cameras="shared")
    assert shared.num_train_cams == 2
    other = CUHK02(tmp_path, test_pair="P1")
    assert other.num_query_pids == 9 and other.num_train_pids == 9


def test_cuhk02_errors(tmp_path: Path) -> None:
    ft.cuhk02(tmp_path)
    with pytest.raises(ValueError, match="cameras"):
        CUHK02(tmp_path, cameras="pairs")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="test_pair"):
        CUHK02(tmp_path, test_pair="P6")
    ft.put(tmp_path / "Dataset" / "P3" / "cam2" / "x_1.png")
    with pytest.raises(ValueError, match=r"x_1\.png.*first '_' field"):
        CUHK02(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"P1[/\\]cam1"):
        CUHK02(tmp_path / "Dataset" / "P3")


def test_cuhksysu_crops_dummy_and_scene_cameras(tmp_path: Path) -> None:
    n = ft.cuhksysu(tmp_path, ids=(11001, 11002, 11005), images_per_id=3)
    ds = CUHKSYSU(tmp_path)
    assert tuple(ds.train_stats) == (3, n, 1) and ds.query == [] and ds.gallery == []
    assert sorted({r.orig_pid for r in ds.train}) == [11001, 11002, 11005]
    scenes = CUHKSYSU(tmp_path, camera="scene")
    assert scenes.num_train_cams == 3 and {r.camid for r in scenes.train} == {0, 1, 2}


def test_cuhksysu_fast_reid_folder_and_market_layout(tmp_path: Path) -> None:
    ft.cuhksysu(tmp_path / "a" / "CUHK-SYSU", layout="cropped_image")  # fast-reid's spelling
    assert CUHKSYSU(tmp_path / "a").num_train_pids == 3
    ft.cuhksysu(tmp_path / "b", layout="market")
    ft.put(tmp_path / "b" / "bounding_box_train" / "0042_c3_000001.jpg")  # Market names too
    with pytest.raises(
        FileNotFoundError, match=r"layout='market' \(dataset spec 'cuhksysu:layout=market'\)"
    ):
        CUHKSYSU(tmp_path / "b")
    ds = CUHKSYSU(tmp_path / "b", layout="market", camera="scene")
    assert ds.num_train_pids == 4 and ds.num_train_cams == 4
    ft.put(tmp_path / "b" / "bounding_box_train" / "person.jpg")
    with pytest.raises(ValueError, match=r"person\.jpg.*p11001_s15535_2\.jpg"):
        CUHKSYSU(tmp_path / "b", layout="market")
