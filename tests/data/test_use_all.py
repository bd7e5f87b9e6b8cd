"""use="all": train + query + gallery as training data, ids 0 / -1 dropped, test ids apart."""

from __future__ import annotations

from pathlib import Path

import fake_trees as ft
import pytest

from metareid.data import (
    CUHK03,
    CUHK03NP,
    GenericDataset,
    ImageRecord,
    Market1501,
    ReIDDataset,
    merge_test_into_train,
)


def test_market_use_all_drops_distractors_and_junk(tmp_path: Path) -> None:
    wrote = ft.market1501(tmp_path, train_ids=(2, 7, 9), test_ids=(11, 12), distractors=2)
    ds = Market1501(tmp_path, use="all")
    assert ds.use == "all" and ds.query == [] and ds.gallery == []
    assert {r.orig_pid for r in ds.train} == {2, 7, 9, 11, 12}  # no 0, no -1
    assert ds.num_train_imgs == wrote["train"][1] + wrote["query"][1] + 2 * 2  # 2 gallery / id
    labels = {r.orig_pid: r.pid for r in ds.train}
    assert labels == {2: 0, 7: 1, 9: 2, 11: 3, 12: 4}  # test ids after the train ids


def test_ids_that_restart_in_the_test_split_stay_apart() -> None:
    train = [ImageRecord("t0.jpg", 0, 0, 0, 0), ImageRecord("t1.jpg", 1, 0, 0, 1)]
    query = [ImageRecord("q0.jpg", 0, 1, 0, 0)]
    gallery = [ImageRecord("g0.jpg", 0, 2, 0, 0), ImageRecord("g1.jpg", 1, 2, 0, 1)]
    ds = ReIDDataset(train, query, gallery, use="all")  # id 0 is a person here
    assert [(r.path, r.pid) for r in ds.train] == [
        ("t0.jpg", 0),
        ("t1.jpg", 1),
        ("q0.jpg", 2),
        ("g0.jpg", 2),
        ("g1.jpg", 3),
    ]


def test_merge_keeps_a_doubly_listed_image_once_and_drops_distractors() -> None:
    train = [ImageRecord("a.jpg", 5, 0, 0, 5)]
    test = [
        ImageRecord("b.jpg", 8, 0, 0, 8),
        ImageRecord("b.jpg", 8, 0, 0, 8),
        ImageRecord("c.jpg", 0, 1, 0, 0),
    ]
    merged = merge_test_into_train(train, test, distractor_pid=0)
    assert [(r.path, r.pid, r.orig_pid) for r in merged] == [("a.jpg", 0, 5), ("b.jpg", 1, 8)]


def test_cuhk03np_and_old_protocol_use_all(tmp_path: Path) -> None:
    ft.cuhk03np(tmp_path / "np", train_ids=(1, 2, 4), test_ids=(5, 6))
    ds = CUHK03NP(tmp_path / "np", use="all")
    assert tuple(ds.train_stats) == (5, 12 + 2 + 4, 2)
    ft.cuhk03_old(tmp_path / "old", num_ids=4)
    old = CUHK03(tmp_path / "old", use="all")
    assert old.num_train_pids == 4 and old.num_train_imgs == 16  # each image once


def test_generic_use_all_with_a_distractor_id(tmp_path: Path) -> None:
    ft.market1501(tmp_path, folder="")
    plain = GenericDataset(tmp_path, use="all")
    without = GenericDataset(tmp_path, use="all", distractor_pid=0)
    assert plain.num_train_pids == without.num_train_pids + 1


def test_bad_use_value(tmp_path: Path) -> None:
    ft.market1501(tmp_path)
    with pytest.raises(ValueError, match=r"use must be one of \['all', 'train'\], got 'test'"):
        Market1501(tmp_path, use="test")  # type: ignore[arg-type]
