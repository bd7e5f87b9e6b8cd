"""Per-domain id ranges and the combined view of several sources."""

from __future__ import annotations

import pytest

from metareid.data import ImageRecord, MultiSourceDataset, ReIDDataset


def dataset(pids: list[int], name: str = "custom") -> ReIDDataset:
    records = [ImageRecord(f"{name}_{i}.jpg", p, i % 2, 0, p) for i, p in enumerate(pids)]
    return ReIDDataset(records, [], [])


def test_per_domain_ranges_and_domain_index() -> None:
    ms = MultiSourceDataset([dataset([10, 11, 11]), dataset([3, 3]), dataset([7, 8, 9])])
    assert ms.num_domains == 3
    assert ms.num_classes_per_domain == (2, 1, 3)
    assert ms.pid_offsets == (0, 2, 3)
    for d, train in enumerate(ms.per_domain_train):
        assert {r.domain for r in train} == {d}
        assert {r.pid for r in train} == set(range(ms.num_classes_per_domain[d]))
    assert [r.orig_pid for r in ms.per_domain_train[0]] == [10, 11, 11]


def test_combined_view_is_one_id_space() -> None:
    ms = MultiSourceDataset([dataset([10, 11, 11]), dataset([3, 3]), dataset([7, 8, 9])])
    combined = ms.combined_train
    assert len(combined) == 8
    assert [r.pid for r in combined] == [0, 1, 1, 2, 2, 3, 4, 5]
    assert [r.domain for r in combined] == [0, 0, 0, 1, 1, 2, 2, 2]
    assert [r.orig_pid for r in combined] == [10, 11, 11, 3, 3, 7, 8, 9]
    assert ms.num_combined_classes == 6
    # the same images in both views
    flat = [r.path for train in ms.per_domain_train for r in train]
    assert [r.path for r in combined] == flat


def test_names_summary_and_errors() -> None:
    ms = MultiSourceDataset([dataset([1]), dataset([2, 3])], names=["a", "b"])
    assert ms.names == ("a", "b")
    assert "b" in ms.summary() and "MultiSourceDataset" in repr(ms)
    long = MultiSourceDataset([dataset([1]), dataset([2, 3])], names=["synthetic:0", "m" * 25])
    lines = long.summary().splitlines()
    assert len(lines) == 4 and "m" * 25 in lines[2]
    bars = {tuple(i for i, c in enumerate(line) if c == "|")[:5] for line in lines}
    assert len(bars) == 1  # every row's columns line up, however long the names
    with pytest.raises(ValueError, match="at least one"):
        MultiSourceDataset([])
    with pytest.raises(ValueError, match="names must have one entry per dataset"):
        MultiSourceDataset([dataset([1])], names=["a", "b"])
    broken = dataset([1, 2])
    broken.train = [ImageRecord("x.jpg", 5, 0, 0, 5)]
    with pytest.raises(ValueError, match=r"source 1 .*contiguous"):
        MultiSourceDataset([dataset([1]), broken])
