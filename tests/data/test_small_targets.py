"""PRID, GRID, VIPeR and iLIDS: split structure, split files, the .mat partitions, errors."""

from __future__ import annotations

import json
from pathlib import Path

import fake_trees as ft
import numpy as np
import pytest
from scipy.io import savemat

from metareid.data import GRID, ILIDS, PRID, SPLIT_FILE_NAME, VIPeR, build_dataset

# The split file of a PRID tree with 6 paired ids, drawn from SPLIT_SEED: a regression test
# of the documented fixed seed (default_rng(0) over the sorted ids).
PRID_6_SPLITS = """{"dataset": "prid", "format": 1, "seed": 0, "splits": [
{"train": [3, 4, 6], "test": [1, 2, 5]},
{"train": [2, 5, 6], "test": [1, 3, 4]},
{"train": [1, 3, 4], "test": [2, 5, 6]},
{"train": [3, 5, 6], "test": [1, 2, 4]},
{"train": [4, 5, 6], "test": [1, 2, 3]},
{"train": [2, 3, 4], "test": [1, 5, 6]},
{"train": [1, 5, 6], "test": [2, 3, 4]},
{"train": [1, 5, 6], "test": [2, 3, 4]},
{"train": [2, 3, 6], "test": [1, 4, 5]},
{"train": [1, 3, 5], "test": [2, 4, 6]}
]}
"""


def stats(ds):
    return [tuple(s)[:2] for s in (ds.train_stats, ds.query_stats, ds.gallery_stats)]


# ------------------------------------------------------------------------------------ PRID
def test_prid_real_size_counts(tmp_path: Path) -> None:
    ft.prid(tmp_path, num_paired=200, cam_a=385, cam_b=749)
    ds = PRID(tmp_path, split_id=4)
    assert stats(ds) == [(100, 200), (100, 100), (649, 649)]
    assert {r.camid for r in ds.query} == {0} and {r.camid for r in ds.gallery} == {1}
    test_ids = {r.pid for r in ds.query}
    assert test_ids < set(range(1, 201)) and not test_ids & {r.orig_pid for r in ds.train}
    assert {r.pid for r in ds.gallery} == test_ids | set(range(201, 750))


def test_prid_scaled_structure(tmp_path: Path) -> None:
    ft.prid(tmp_path, num_paired=20, cam_a=38, cam_b=75)  # 200 / 385 / 749 divided by 10
    for split_id in (0, 9):
        ds = PRID(tmp_path, split_id=split_id, num_paired=20)
        assert stats(ds) == [(10, 20), (10, 10), (65, 65)]


def test_prid_split_file_is_the_documented_one_and_stable(tmp_path: Path) -> None:
    ft.prid(tmp_path / "a", num_paired=6, cam_a=8, cam_b=12)
    ds = PRID(tmp_path / "a", split_id=2, num_paired=6)
    written = (tmp_path / "a" / SPLIT_FILE_NAME).read_text()
    assert written == PRID_6_SPLITS
    assert sorted(r.pid for r in ds.query) == [2, 5, 6]
    ft.prid(tmp_path / "b", num_paired=6, cam_a=8, cam_b=12)  # a fresh folder: same file
    PRID(tmp_path / "b", num_paired=6)
    assert (tmp_path / "b" / SPLIT_FILE_NAME).read_text() == written


def test_prid_split_file_is_read_back_not_redrawn(tmp_path: Path) -> None:
    ft.prid(tmp_path, num_paired=6, cam_a=8, cam_b=12)
    path = tmp_path / SPLIT_FILE_NAME
    content = {"dataset": "prid", "splits": [{"train": [1, 2, 3], "test": [4, 5, 6]}] * 10}
    path.write_text(json.dumps(content))
    ds = PRID(tmp_path, split_id=7, num_paired=6)
    assert sorted({r.pid for r in ds.query}) == [4, 5, 6]
    assert json.loads(path.read_text()) == content  # untouched
    other = tmp_path / "elsewhere.json"
    PRID(tmp_path, num_paired=6, split_file=other)
    assert other.read_text() == PRID_6_SPLITS


def test_prid_bad_split_files_and_ids(tmp_path: Path) -> None:
    ft.prid(tmp_path, num_paired=6, cam_a=8, cam_b=12)
    path = tmp_path / SPLIT_FILE_NAME
    path.write_text(json.dumps({"dataset": "prid", "splits": [{"train": [1], "test": [2]}]}))
    with pytest.raises(ValueError, match=r"does not match the data.*delete the split file"):
        PRID(tmp_path, num_paired=6)
    with pytest.raises(ValueError, match=r"split_id must lie in \[0, 1\)"):
        PRID(tmp_path, split_id=3, num_paired=6)  # the file holds one split only
    path.write_text(json.dumps({"dataset": "viper", "splits": []}))
    with pytest.raises(ValueError, match="belongs to 'viper'"):
        PRID(tmp_path, num_paired=6)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        PRID(tmp_path, num_paired=6)
    path.unlink()
    with pytest.raises(ValueError, match=r"split_id must lie in \[0, 10\), got 10"):
        PRID(tmp_path, split_id=10, num_paired=6)
    with pytest.raises(TypeError, match="split_id"):
        PRID(tmp_path, split_id="1", num_paired=6)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"paired ids 1\.\.200 .*cam_a"):
        PRID(tmp_path)  # the default 200 paired ids are not all there
    assert not path.exists()  # nothing written by the failed calls


def test_prid_unparsable_name(tmp_path: Path) -> None:
    ft.prid(tmp_path, num_paired=6, cam_a=8, cam_b=12)
    ft.put(tmp_path / "prid_2011" / "single_shot" / "cam_b" / "person_A.png")
    with pytest.raises(ValueError, match=r"person_A\.png.*person_0001\.png"):
        PRID(tmp_path, num_paired=6)


# ------------------------------------------------------------------------------------ GRID
def test_grid_real_size_counts_from_the_mat(tmp_path: Path) -> None:
    splits = ft.grid(tmp_path, paired=250, distractors=775, train_per_split=125)
    ds = GRID(tmp_path, split_id=3)
    assert stats(ds) == [(125, 250), (125, 125), (126, 900)]
    assert {r.orig_pid for r in ds.train} == set(splits[3])
    assert sum(r.pid == 0 for r in ds.gallery) == 775  # distractors stay in the gallery
    assert ds.num_gallery_cams == 8


def test_grid_scaled_and_every_split(tmp_path: Path) -> None:
    splits = ft.grid(tmp_path, paired=20, distractors=62, train_per_split=10)
    for split_id in range(10):
        ds = build_dataset("grid", tmp_path, split_id=split_id)
        assert stats(ds) == [(10, 20), (10, 10), (11, 72)]
        assert sorted({r.orig_pid for r in ds.train}) == splits[split_id]


def test_grid_plain_vector_partitions_and_errors(tmp_path: Path) -> None:
    ft.grid(tmp_path, paired=4, distractors=2, train_per_split=2)
    mat = tmp_path / "underground_reid" / "features_and_partitions.mat"
    cells = np.empty((1, 2), dtype=object)
    cells[0, 0], cells[0, 1] = np.array([[1, 2]]), np.array([[3, 4]])
    savemat(mat, {"trainIdxAll": cells})  # a cell of plain vectors is read too
    assert sorted({r.orig_pid for r in GRID(tmp_path, split_id=1).train}) == [3, 4]
    with pytest.raises(ValueError, match=r"split_id must lie in \[0, 2\)"):
        GRID(tmp_path, split_id=5)
    cells[0, 1] = np.array([[3, 99]])
    savemat(mat, {"trainIdxAll": cells})
    with pytest.raises(ValueError, match=r"not probe ids.*\[99\]"):
        GRID(tmp_path, split_id=1)
    savemat(mat, {"somethingElse": np.zeros(3)})
    with pytest.raises(ValueError, match=r"no 'trainIdxAll' \(it holds \['somethingElse'\]\)"):
        GRID(tmp_path)
    mat.write_bytes(b"not a mat file")
    with pytest.raises(ValueError, match="cannot read"):
        GRID(tmp_path)
    mat.unlink()
    with pytest.raises(FileNotFoundError, match=r"features_and_partitions\.mat"):
        GRID(tmp_path)


def test_grid_camera_out_of_range(tmp_path: Path) -> None:
    ft.grid(tmp_path, paired=4, distractors=2, train_per_split=2)
    ft.put(tmp_path / "underground_reid" / "probe" / "0005_9_1_1_1_1.jpeg")
    with pytest.raises(ValueError, match=r"camera 9 .*0005_9_1_1_1_1\.jpeg"):
        GRID(tmp_path)


# ----------------------------------------------------------------------------------- VIPeR
def test_viper_real_size_and_both_directions(tmp_path: Path) -> None:
    ids = tuple(sorted(np.random.default_rng(3).choice(874, size=632, replace=False).tolist()))
    ft.viper(tmp_path, ids=ids)
    ds = VIPeR(tmp_path, split_id=6)
    assert stats(ds) == [(316, 632), (316, 316), (316, 316)]
    assert {r.camid for r in ds.query} == {0}
    reverse = VIPeR(tmp_path, split_id=6, query_camera="b")
    assert {r.camid for r in reverse.query} == {1}
    assert {r.pid for r in reverse.query} == {r.pid for r in ds.query}


def test_viper_scaled_and_stable(tmp_path: Path) -> None:
    ft.viper(tmp_path / "a", ids=tuple(range(0, 24, 2)))
    ft.viper(tmp_path / "b", ids=tuple(range(0, 24, 2)))
    a, b = VIPeR(tmp_path / "a", split_id=5), VIPeR(tmp_path / "b", split_id=5)
    assert stats(a) == [(6, 12), (6, 6), (6, 6)]
    assert [r.orig_pid for r in a.train] == [r.orig_pid for r in b.train]
    assert (tmp_path / "a" / SPLIT_FILE_NAME).read_text() == (
        tmp_path / "b" / SPLIT_FILE_NAME
    ).read_text()


def test_viper_unpaired_id_and_bad_option(tmp_path: Path) -> None:
    ft.viper(tmp_path, ids=(0, 2, 4, 6))
    ft.put(tmp_path / "VIPeR" / "cam_a" / "008_0.bmp")
    with pytest.raises(ValueError, match=r"one camera only .*\[8\]"):
        VIPeR(tmp_path)
    with pytest.raises(ValueError, match="query_camera"):
        VIPeR(tmp_path, query_camera="c")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------- iLIDS
def test_ilids_real_size_counts(tmp_path: Path) -> None:
    persons = tmp_path / "i-LIDS_Pedestrian" / "Persons"
    for pid in range(1, 120):
        for k in range(1, 5):
            ft.put(persons / f"{pid:04d}{k:03d}.jpg")
    ds = ILIDS(tmp_path, split_id=8)
    assert stats(ds) == [(59, 236), (60, 60), (60, 60)]
    assert {r.camid for r in ds.query} == {0} and {r.camid for r in ds.gallery} == {1}
    assert {r.pid for r in ds.query} == {r.pid for r in ds.gallery}
    assert not {r.path for r in ds.query} & {r.path for r in ds.gallery}


def test_ilids_split_file_is_the_documented_one(tmp_path: Path) -> None:
    ft.ilids(tmp_path, num_ids=4)
    ILIDS(tmp_path)
    splits = json.loads((tmp_path / SPLIT_FILE_NAME).read_text())["splits"]
    assert splits[:2] == [
        {"train": [1, 3], "query": ["0002004.jpg", "0004001.jpg"],
         "gallery": ["0002001.jpg", "0004003.jpg"]},
        {"train": [1, 4], "query": ["0002002.jpg", "0003001.jpg"],
         "gallery": ["0002004.jpg", "0003002.jpg"]},
    ]  # fmt: skip


def test_ilids_single_image_id_and_bad_name(tmp_path: Path) -> None:
    ft.ilids(tmp_path, num_ids=4)
    persons = tmp_path / "i-LIDS_Pedestrian" / "Persons"
    ft.put(persons / "0009001.jpg")
    with pytest.raises(ValueError, match=r"at least 2 images.*\[9\]"):
        ILIDS(tmp_path)
    (persons / "0009001.jpg").unlink()
    ft.put(persons / "ab01001.jpg")
    with pytest.raises(ValueError, match=r"ab01001\.jpg.*first 4 characters"):
        ILIDS(tmp_path)


def test_split_file_that_cannot_be_written_warns(tmp_path: Path, monkeypatch) -> None:
    ft.viper(tmp_path, ids=(0, 2, 4, 6))
    import metareid.data.datasets._splits as splits

    def refuse(path: Path, text: str) -> None:
        raise PermissionError("read-only")

    monkeypatch.setattr(splits, "_write_atomic", refuse)
    with pytest.warns(UserWarning, match="could not write the split file"):
        ds = VIPeR(tmp_path)
    assert ds.num_train_pids == 2 and not (tmp_path / SPLIT_FILE_NAME).exists()
