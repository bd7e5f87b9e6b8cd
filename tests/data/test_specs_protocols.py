"""Dataset specs, toolbox roots, target-in-sources refusal and the protocol plans."""

from __future__ import annotations

from pathlib import Path

import fake_trees as ft
import pytest

from metareid.data import (
    PROTOCOL_TARGETS,
    build_dataset_from_spec,
    check_target_not_in_sources,
    dataset_family,
    parse_dataset_spec,
    protocol_plan,
    protocol_plans,
)
from metareid.engine import TrainConfig


@pytest.mark.parametrize(
    ("spec", "name", "kwargs"),
    [
        ("market1501", "market1501", {}),
        ("cuhk03np:labeled", "cuhk03np", {"subset": "labeled"}),
        ("msmt17:V1,merge_val=false", "msmt17", {"version": "V1", "merge_val": False}),
        ("prid:3", "prid", {"split_id": 3}),
        ("synthetic:2,use=all", "synthetic", {"domain": 2, "use": "all"}),
        ("cuhksysu:market", "cuhksysu", {"layout": "market"}),
    ],
)
def test_parse_specs(spec: str, name: str, kwargs: dict) -> None:
    parsed = parse_dataset_spec(spec)
    assert (parsed.name, parsed.kwargs, parsed.text) == (name, kwargs, spec)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (":V1", "no dataset name"),
        ("market1501:V1", "has no main option"),
        ("prid:3,split_id=4", "gives 'split_id' twice"),
        ("prid:use=", "empty option"),
    ],
)
def test_bad_specs(spec: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_dataset_spec(spec)


def test_unknown_dataset_and_option(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset 'nope'; registered datasets"):
        build_dataset_from_spec("nope", tmp_path)
    with pytest.raises(ValueError, match=r"takes no option \['colour'\]"):
        build_dataset_from_spec("market1501:colour=red", tmp_path)


@pytest.mark.parametrize(
    ("folder", "release"),
    [
        ("market1501", "Market-1501-v15.09.15"),  # metareid and torchreid
        ("", "Market-1501-v15.09.15"),  # fast-reid: the release folder in the data dir
        ("market1501", ""),  # the split folders directly in <data-dir>/market1501
    ],
)
def test_market_toolbox_roots(tmp_path: Path, folder: str, release: str) -> None:
    ft.market1501(tmp_path / folder if folder else tmp_path, folder=release)
    assert build_dataset_from_spec("market1501", tmp_path).num_train_pids == 3


@pytest.mark.parametrize(
    "root", ["dukemtmc/DukeMTMC-reID", "dukemtmc-reid/DukeMTMC-reID", "DukeMTMC-reID"]
)
def test_duke_toolbox_roots(tmp_path: Path, root: str) -> None:
    ft.dukemtmc(tmp_path / root, folder="")
    assert build_dataset_from_spec("dukemtmc", tmp_path).num_train_pids == 2


def test_missing_dataset_names_the_folders_tried(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"dukemtmc-reid.*Expected layout"):
        build_dataset_from_spec("dukemtmc", tmp_path)
    ft.msmt17(tmp_path / "msmt17", version="V1")
    with pytest.raises(FileNotFoundError, match=r"msmt17:V1"):  # default V2, V1 present
        build_dataset_from_spec("msmt17", tmp_path)
    assert build_dataset_from_spec("msmt17:V1", tmp_path).version == "V1"


def test_small_targets_by_spec(tmp_path: Path) -> None:
    ft.viper(tmp_path / "viper")
    ds = build_dataset_from_spec("viper:3,query_camera=b", tmp_path)
    assert ds.split_id == 3 and ds.query_camera == "b"


def test_families_and_target_in_sources_refused() -> None:
    assert dataset_family("msmt17:V1") == dataset_family("msmt17:V2,use=all") == "msmt17"
    assert dataset_family("cuhk03") == dataset_family("cuhk03np:labeled")
    assert dataset_family("synthetic:0") != dataset_family("synthetic:1")
    with pytest.raises(
        ValueError, match=r"target 'market1501' is also a source \('market1501:use=all'\)"
    ):
        check_target_not_in_sources(("market1501:use=all", "cuhksysu"), ("market1501",))
    with pytest.raises(ValueError, match="target 'cuhk03np:detected' is also a source"):
        TrainConfig(sources=("cuhk03", "dukemtmc"), target="cuhk03np:detected")
    with pytest.raises(ValueError, match="target 'grid' is also a source"):
        TrainConfig(
            sources=("grid:use=all", "dukemtmc"), target="prid", final_targets=("prid", "grid")
        )


def test_m3l_plans_are_todays_sources() -> None:
    plan = protocol_plan("m3l", "market1501")
    assert plan.sources == ("msmt17:V2", "dukemtmc", "cuhk03") and plan.target == "market1501"
    assert plan.final_targets == ()
    assert protocol_plan("m3l", "cuhk03").target == "cuhk03np:detected"
    v1 = protocol_plan("m3l", "dukemtmc", msmt_version="V1", cuhk_source="cuhk03np")
    assert v1.sources == ("msmt17:V1", "cuhk03np:detected", "market1501")


def test_p1_plans() -> None:
    plan = protocol_plan("p1")
    assert plan.sources == (
        "market1501:use=all",
        "cuhk02:use=all",
        "cuhk03np:detected,use=all",
        "cuhksysu",
    )
    assert plan.final_targets == ("prid", "grid", "viper", "ilids") and plan.label == "p1"
    assert "PRID, GRID, VIPeR, iLIDS" in plan.describe()
    one = protocol_plan("p1", "grid", cuhk03_subset="labeled", with_duke=True)
    assert one.final_targets == ("grid",) and one.sources[-1] == "dukemtmc:use=all"
    assert one.sources[2] == "cuhk03np:labeled,use=all"


def test_p2_p3_leave_one_out() -> None:
    p2 = {p.label: p for p in protocol_plans("p2")}
    assert list(p2) == ["cuhk03", "msmt17", "market1501"] == list(PROTOCOL_TARGETS["p2"])
    assert p2["cuhk03"].sources == ("market1501", "msmt17:V2", "cuhksysu")
    assert p2["msmt17"].sources == ("market1501", "cuhksysu", "cuhk03np:detected")
    assert p2["market1501"].sources == ("msmt17:V2", "cuhksysu", "cuhk03np:detected")
    assert p2["cuhk03"].target == "cuhk03np:detected"
    p3 = protocol_plan("p3", "market1501")
    assert p3.sources == ("msmt17:V2,use=all", "cuhksysu", "cuhk03np:detected,use=all")
    assert protocol_plan("p3", "cuhk03np").sources[0] == "market1501:use=all"
    for plan in [*protocol_plans("p2"), *protocol_plans("p3"), *protocol_plans("m3l")]:
        check_target_not_in_sources(plan.sources, (plan.target,))


def test_bad_protocol_and_target() -> None:
    with pytest.raises(ValueError, match="protocol must be one of"):
        protocol_plan("p4", "market1501")
    with pytest.raises(
        ValueError,
        match=r"target for protocol 'p2' must be one of \['cuhk03', 'msmt17', 'market1501'\], got 'dukemtmc'",
    ):
        protocol_plan("p2", "dukemtmc")
    with pytest.raises(ValueError, match="got None"):
        protocol_plan("p3")
    with pytest.raises(ValueError, match=r"'p1' must be one of .*'all'"):
        protocol_plan("p1", "market1501")
