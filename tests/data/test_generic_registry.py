"""GenericDataset (folders and list files) and the name registry."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from metareid.data import (
    CUHK03NP,
    MSMT17,
    GenericDataset,
    Market1501,
    ReIDDataset,
    SyntheticReID,
    build_dataset,
    list_datasets,
    register_dataset,
)
from metareid.data.datasets import registry

MakeFiles = Callable[[Path, Iterable[str]], None]


def test_generic_market_style_folders(tmp_path: Path, touch: MakeFiles) -> None:
    touch(tmp_path / "bounding_box_train", ["0010_c1_a.png", "0010_c3_b.jpg", "0020_c2_c.jpg"])
    touch(tmp_path / "query", ["0030_c1_x.jpg"])
    touch(tmp_path / "bounding_box_test", ["0030_c2_y.jpg", "-1_c1_z.jpg", "notes.txt"])
    ds = GenericDataset(tmp_path)
    assert [(r.pid, r.orig_pid, r.camid) for r in ds.train] == [(0, 10, 0), (0, 10, 2), (1, 20, 1)]
    assert [r.pid for r in ds.gallery] == [30]  # junk dropped, .txt ignored


def test_generic_list_files(tmp_path: Path, touch: MakeFiles) -> None:
    touch(tmp_path / "imgs", ["p1_c4.jpg", "p2.jpg", "p3_c2.jpg"])
    (tmp_path / "train.txt").write_text(
        "# relpath pid camera\nimgs/p1_c4.jpg 5 0\n\nimgs/p2.jpg 9 2\n"
    )
    (tmp_path / "gallery.txt").write_text("imgs/p3_c2.jpg 3\n")
    ds = GenericDataset(
        tmp_path,
        train="train.txt",
        query=None,
        gallery="gallery.txt",
        pattern=r"p(\d+)_c(\d+)",
        camid_base=0,
    )
    assert [(r.pid, r.orig_pid, r.camid) for r in ds.train] == [(0, 5, 0), (1, 9, 2)]
    assert ds.query == []
    # camera column missing: read from the name with the pattern
    assert [(r.pid, r.camid) for r in ds.gallery] == [(3, 2)]
    assert ds.gallery[0].path == str(tmp_path / "imgs" / "p3_c2.jpg")


def test_generic_errors(tmp_path: Path, touch: MakeFiles) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        GenericDataset(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="bounding_box_train"):
        GenericDataset(tmp_path)
    with pytest.raises(ValueError, match="two groups"):
        GenericDataset(tmp_path, pattern=r"(\d+)")
    (tmp_path / "bad.txt").write_text("a.jpg five\n")
    with pytest.raises(ValueError, match=r"line 1 of .*bad\.txt"):
        GenericDataset(tmp_path, "bad.txt", None, None)
    (tmp_path / "cam.txt").write_text("a.jpg 5 0\n")
    with pytest.raises(ValueError, match="camid_base=1"):
        GenericDataset(tmp_path, "cam.txt", None, None)
    touch(tmp_path / "odd", ["IMG_001.jpg"])
    with pytest.raises(ValueError, match=r"IMG_001\.jpg"):
        GenericDataset(tmp_path, "odd", None, None)


def test_builtin_names_are_registered() -> None:
    names = list_datasets()
    for name in ("market1501", "dukemtmc", "cuhk03np", "cuhk03", "msmt17", "synthetic", "generic"):
        assert name in names


def test_build_dataset_forwards_kwargs(tmp_path: Path, touch: MakeFiles) -> None:
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        touch(tmp_path / "labeled" / split, ["0001_c1_1.png"])
    ds = build_dataset("cuhk03np", tmp_path, subset="labeled")
    assert isinstance(ds, CUHK03NP) and ds.subset == "labeled"
    with pytest.raises(FileNotFoundError, match="MSMT17_V2"):
        build_dataset("msmt17", tmp_path, version="V2")
    with pytest.raises(FileNotFoundError, match="synth_d2"):
        build_dataset("synthetic", tmp_path, domain=2)
    assert registry._REGISTRY["msmt17"] is MSMT17
    assert registry._REGISTRY["synthetic"] is SyntheticReID


def test_unknown_name_lists_the_registered_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown dataset 'market'.*market1501"):
        build_dataset("market", tmp_path)


def test_register_a_user_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    def toy(root: str | Path, size: int = 1) -> ReIDDataset:
        return ReIDDataset([], [], [])

    assert register_dataset("toy", toy) is toy
    assert isinstance(build_dataset("toy", tmp_path, size=2), ReIDDataset)
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("toy", toy)
    before = dict(registry._REGISTRY)
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("market1501", toy)
    assert registry._REGISTRY == before and before["market1501"] is Market1501
    register_dataset("market1501", toy, overwrite=True)
    assert registry._REGISTRY["market1501"] is toy
    with pytest.raises(ValueError, match="non-empty"):
        register_dataset("", toy)
    with pytest.raises(TypeError, match="callable"):
        register_dataset("x", 3)  # type: ignore[arg-type]
