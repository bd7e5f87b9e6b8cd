"""check_images and ``metareid datasets --verify``: every bad file found, with its reason."""

from __future__ import annotations

import io
from pathlib import Path

import fake_trees as ft
import pytest

from metareid.cli import main
from metareid.data import (
    BadImage,
    Market1501,
    check_images,
    dataset_image_paths,
    format_bad_images,
)


def _spoil(good: Path, corrupt: Path, empty: Path, truncated: Path | None = None) -> None:
    """Garbage bytes in ``corrupt``, nothing in ``empty``, half of ``good``'s bytes in
    ``truncated`` (a valid header: only a full decode finds it)."""
    data = good.read_bytes()
    corrupt.write_bytes(b"\x00garbage, not an image\xff" * 8)
    empty.write_bytes(b"")
    if truncated is not None:
        truncated.write_bytes(data[: len(data) // 2])


def test_finds_exactly_the_corrupt_the_empty_and_the_truncated_file(tmp_path: Path) -> None:
    ft.market1501(tmp_path, images=True)
    ds = Market1501(tmp_path)
    paths = dataset_image_paths([ds])
    assert len(paths) == len(ds.train) + len(ds.query) + len(ds.gallery)
    corrupt, empty, truncated = ds.train[0].path, ds.gallery[-1].path, ds.query[0].path
    _spoil(Path(ds.train[1].path), Path(corrupt), Path(empty), Path(truncated))
    bad = check_images(paths, workers=0)
    assert [b.path for b in bad] == [p for p in paths if p in (corrupt, empty, truncated)]
    reasons = {b.path: b.reason for b in bad}
    assert reasons[empty] == "empty file (0 bytes)"
    assert "cannot identify image file" in reasons[corrupt]
    assert "truncated" in reasons[truncated].lower()  # "Truncated File Read"
    assert check_images([*paths, corrupt], workers=0) == bad  # each file once


def test_the_readers_list_empty_files(tmp_path: Path) -> None:
    ft.market1501(tmp_path, images=True)
    empty = tmp_path / "Market-1501-v15.09.15" / "bounding_box_train" / "0002_c1s1_000099_00.jpg"
    empty.touch()
    paths = dataset_image_paths([Market1501(tmp_path)])
    assert str(empty) in paths
    assert check_images(paths, workers=0) == [BadImage(str(empty), "empty file (0 bytes)")]


def test_processes_find_the_same_files_in_order(tmp_path: Path) -> None:
    ft.prid(tmp_path, num_paired=150, cam_a=150, cam_b=150, images=True)  # 300 > SERIAL_BELOW
    folder = tmp_path / "prid_2011" / "single_shot"
    paths = sorted(str(p) for p in folder.rglob("*.png"))
    _spoil(Path(paths[0]), Path(paths[200]), Path(paths[7]))
    serial = check_images(paths, workers=1)
    assert [b.path for b in serial] == [paths[7], paths[200]]
    assert check_images(paths, workers=2) == serial
    assert check_images([]) == []


def test_missing_file_and_bad_arguments(tmp_path: Path) -> None:
    missing = str(tmp_path / "gone.jpg")
    (bad,) = check_images([missing], workers=0)
    assert bad.path == missing and "No such file" in bad.reason
    with pytest.raises(ValueError, match="workers must be an int >= 0, got -1"):
        check_images([missing], workers=-1)
    with pytest.raises(TypeError, match=r"workers must be an int >= 0, got float 2\.0"):
        check_images([missing], workers=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="splits must name some of"):
        dataset_image_paths([], splits=["val"])


def test_progress_on_a_non_terminal_is_plain(tmp_path: Path, monkeypatch) -> None:
    from metareid.data import verify

    ft.market1501(tmp_path, images=True)
    paths = dataset_image_paths([Market1501(tmp_path)])
    stream = io.StringIO()
    monkeypatch.setattr(verify, "PLAIN_PROGRESS_EVERY_S", 0.0)  # a line per image
    check_images(paths, workers=0, progress=True, stream=stream, desc="checking")
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and len(lines) == len(paths)
    assert lines[-1] == f"checking: {len(paths)}/{len(paths)} (100%)"
    stream = io.StringIO()
    monkeypatch.setattr(verify, "PLAIN_PROGRESS_EVERY_S", 30.0)
    check_images(paths, workers=0, progress=True, stream=stream)
    assert stream.getvalue() == ""  # a short check: the summary alone


def test_report_lists_every_bad_file() -> None:
    bad = [BadImage(f"d/{i}.jpg", "empty file (0 bytes)") for i in range(7)]
    report = format_bad_images(bad, 100)
    assert report.splitlines()[0] == "7 of 100 images cannot be decoded:"
    assert all(f"  d/{i}.jpg: empty file (0 bytes)" in report for i in range(7))


# ----------------------------------------------------------------------- the command
def _prid_release(data_dir: Path) -> Path:
    """PRID at the release's counts (the count check passes), as real PNG files."""
    ft.prid(data_dir / "prid", num_paired=200, cam_a=385, cam_b=749, images=True)
    return data_dir / "prid" / "prid_2011" / "single_shot"


def test_datasets_verify_exit_status_and_report(tmp_path: Path, capsys) -> None:
    folder = _prid_release(tmp_path)
    args = ["datasets", "--data-dir", str(tmp_path), "--verify", "--workers", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "All counts agree with the reference numbers." in out
    assert "All 949 images decode." in out
    corrupt, empty = folder / "cam_a" / "person_0003.png", folder / "cam_b" / "person_0700.png"
    _spoil(folder / "cam_a" / "person_0001.png", corrupt, empty)
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "All counts agree with the reference numbers." in out  # 1 from the images alone
    assert "2 of 949 images cannot be decoded:" in out
    assert f"  {corrupt}: cannot identify image file" in out
    assert f"  {empty}: empty file (0 bytes)" in out
    assert main(["datasets", "--data-dir", str(tmp_path)]) == 0  # without --verify: counts
