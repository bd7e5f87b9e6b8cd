"""Statistics against the reference numbers: ok on real-size trees, mismatches flagged."""

from __future__ import annotations

from pathlib import Path

import fake_trees as ft

from metareid.data import (
    CUHK03NP,
    MSMT17,
    PRID,
    Expected,
    check_dataset,
    format_scan,
    scan_data_dir,
    source_check_line,
)


def test_real_size_prid_agrees_with_the_reference(tmp_path: Path) -> None:
    ft.prid(tmp_path, num_paired=200, cam_a=385, cam_b=749)
    check = check_dataset(PRID(tmp_path), "prid")
    assert check.ok and check.reference == "prid" and check.causes == ()
    assert "reference 100 / 200 / 2: ok" in source_check_line("prid", PRID(tmp_path))


def test_missing_file_is_flagged_with_its_cause(tmp_path: Path) -> None:
    ft.prid(tmp_path, num_paired=200, cam_a=385, cam_b=749)
    (tmp_path / "prid_2011" / "single_shot" / "cam_b" / "person_0700.png").unlink()
    check = check_dataset(PRID(tmp_path))
    gallery = next(s for s in check.splits if s.split == "gallery")
    assert gallery.mismatches == ("ids 648 vs 649", "images 648 vs 649")
    assert check.causes[0] == "missing files (fewer images than the release: gallery 1)"


def test_cuhk03_detected_vs_labeled_is_named(tmp_path: Path) -> None:
    ft.cuhk03np(tmp_path, subset="labeled", train_ids=(1, 2, 4), test_ids=(5, 6))
    scaled = {  # detected and labeled scaled down: they differ by train images, as 7,365 / 7,368
        "cuhk03np:detected": {"train": Expected(3, 11, 2)},
        "cuhk03np:labeled": {"train": Expected(3, 12, 2)},
    }
    ds = CUHK03NP(tmp_path, subset="labeled")
    assert check_dataset(ds, reference=scaled).ok
    (tmp_path / "labeled" / "bounding_box_train" / "0001_c1_1.png").unlink()
    check = check_dataset(CUHK03NP(tmp_path, subset="labeled"), reference=scaled)
    assert not check.ok
    assert "those of 'cuhk03np:detected'" in check.causes[0]
    assert "detected vs labeled" in check.causes[0]


def test_msmt17_list_train_vs_train_plus_val(tmp_path: Path) -> None:
    ft.msmt17(tmp_path, train_ids=(0, 1), test_ids=(0, 2))
    scaled = {"msmt17": {"train": Expected(2, 5, 3)}}  # list_train 4 images + list_val 1
    assert check_dataset(MSMT17(tmp_path), reference=scaled).ok
    (tmp_path / "MSMT17_V2" / "list_val.txt").write_text("")
    check = check_dataset(MSMT17(tmp_path), reference=scaled)
    assert any("list_train.txt only vs list_train + list_val" in c for c in check.causes)
    assert any("V1 vs V2" in c for c in check.causes)


def test_scan_finds_flags_and_reports(tmp_path: Path) -> None:
    ft.prid(tmp_path / "prid", num_paired=200, cam_a=385, cam_b=749)
    ft.viper(tmp_path / "viper", ids=tuple(range(632)))
    (tmp_path / "viper" / "VIPeR" / "cam_a" / "005_45.bmp").unlink()  # breaks the pairs
    ft.msmt17(tmp_path / "msmt17", version="V1")
    (tmp_path / "grid").mkdir()  # there, but empty
    checks, errors, missing = scan_data_dir(tmp_path)
    assert [c.spec for c in checks] == ["msmt17:V1", "prid"]
    assert checks[1].ok and not checks[0].ok  # the tiny MSMT17 is far from the release
    assert sorted(spec for spec, _ in errors) == ["grid", "viper"]
    assert "market1501" in missing and "msmt17" not in missing
    report = format_scan((checks, errors, missing), tmp_path)
    assert "| prid (" in report and "| 100 / 200 / 2 | ok |" in report
    assert "**MISMATCH** ids 2 vs 1,041" in report
    assert "msmt17:V1: likely cause:" in report and "viper: **ERROR**" in report
