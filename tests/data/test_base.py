"""Record helpers shared by all datasets: relabelling, junk, counts, image decoding."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import pytest
from PIL import Image

from metareid.data import (
    BadImageError,
    ImageRecord,
    ReIDDataset,
    SplitStats,
    drop_junk,
    load_image,
    relabel,
    split_stats,
    verify_images,
)


def rec(pid: int, camid: int = 0, path: str | None = None) -> ImageRecord:
    return ImageRecord(path or f"{pid}_{camid}.jpg", pid, camid, domain=0, orig_pid=pid)


def test_record_is_frozen() -> None:
    r = rec(3)
    with pytest.raises(AttributeError):
        r.pid = 4  # type: ignore[misc]


def test_relabel_is_sorted_contiguous_and_keeps_original() -> None:
    records = [rec(p) for p in (42, 7, 42, 1000, 7)]
    out = relabel(records)
    assert [r.pid for r in out] == [1, 0, 1, 2, 0]
    assert [r.orig_pid for r in out] == [42, 7, 42, 1000, 7]
    assert [r.pid for r in records] == [42, 7, 42, 1000, 7]  # input unchanged


def test_junk_dropped_distractors_kept_in_dataset() -> None:
    gallery = [rec(0, 1), rec(-1, 2), rec(5, 3)]
    ds = ReIDDataset([rec(-1), rec(9), rec(4)], [rec(5, 0)], gallery)
    assert [(r.pid, r.orig_pid) for r in ds.train] == [(1, 9), (0, 4)]
    assert [r.pid for r in ds.gallery] == [0, 5]
    assert drop_junk(gallery) == [gallery[0], gallery[2]]
    assert ds.gallery_stats == SplitStats(2, 2, 2)


def test_split_stats_counts() -> None:
    assert split_stats([]) == SplitStats(0, 0, 0)
    assert split_stats([rec(1, 0), rec(1, 3), rec(2, 3)]) == SplitStats(2, 3, 2)


def test_load_image_errors_name_the_file(tmp_path: Path) -> None:
    good = tmp_path / "0001_c1s1_000001_01.png"
    Image.new("RGB", (3, 5), (1, 2, 3)).save(good)
    assert load_image(good).size == (3, 5)
    bad = tmp_path / "0001_c1s1_000002_01.jpg"
    bad.write_bytes(b"garbage")
    with pytest.raises(BadImageError, match=r"0001_c1s1_000002_01\.jpg"):
        load_image(bad)
    truncated = tmp_path / "0001_c1s1_000003_01.jpg"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(BadImageError, match=r"0001_c1s1_000003_01\.jpg"):
        load_image(truncated)
    with pytest.raises(BadImageError, match=r"missing\.jpg"):
        load_image(tmp_path / "missing.jpg")


def test_verify_images_raise_and_skip(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.new("RGB", (2, 2)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    records = [rec(1, path=str(good)), rec(2, path=str(bad))]
    with pytest.raises(BadImageError, match=r"bad\.png"):
        verify_images(records)
    with pytest.warns(UserWarning, match=r"skipped 1 undecodable image\(s\): .*bad\.png"):
        kept = verify_images(records, on_bad_image="skip")
    assert kept == records[:1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert verify_images(records[:1], on_bad_image="skip") == records[:1]
    with pytest.raises(ValueError, match="on_bad_image"):
        verify_images(records, on_bad_image="drop")  # type: ignore[arg-type]


def test_record_pickles_for_worker_processes() -> None:
    record = rec(7, 2)
    assert pickle.loads(pickle.dumps(record)) == record
