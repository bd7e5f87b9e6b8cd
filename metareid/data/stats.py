"""Dataset statistics checked against the numbers of the releases.

:data:`REFERENCE_STATS` holds the ids, images and cameras per split that the released files
give (gathered from the public toolboxes and the DG methods' code, see
``docs/protocols.md``). :func:`check_dataset` compares a dataset with them and names the
likely cause of each mismatch; :func:`scan_data_dir` does it for every dataset found in a
data directory (the ``metareid datasets`` command) and :func:`source_check_line` gives the
one-line check the trainer prints per source.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from metareid.data.datasets.base import ReIDDataset, SplitStats

__all__ = [
    "REFERENCE_STATS",
    "SCAN_SPECS",
    "DatasetCheck",
    "Expected",
    "SplitCheck",
    "check_dataset",
    "format_scan",
    "reference_key",
    "scan_data_dir",
    "source_check_line",
]


class Expected(NamedTuple):
    """Reference counts of one split; None where the releases give no number.

    ``num_imgs`` may list several accepted values (DukeMTMC-reID's gallery is counted as
    17,661 or 17,660 images depending on the list).

    Example:
        >>> Expected(751, 12936, 6).num_imgs
        12936
    """

    num_pids: int | None
    num_imgs: int | tuple[int, ...] | None
    num_cams: int | None


_DUKE = {
    "train": Expected(702, 16522, 8),
    "query": Expected(702, 2228, 8),
    "gallery": Expected(1110, (17661, 17660), 8),
}
_MSMT = {
    "train": Expected(1041, 32621, 15),
    "query": Expected(3060, 11659, 15),
    "gallery": Expected(3060, 82161, 15),
}

REFERENCE_STATS: dict[str, dict[str, Expected]] = {
    "market1501": {
        "train": Expected(751, 12936, 6),
        "query": Expected(750, 3368, 6),
        "gallery": Expected(751, 15913, 6),  # 750 ids + the distractors (id 0)
    },
    "market1501:use=all": {"train": Expected(1501, None, 6)},
    "dukemtmc": _DUKE,
    "dukemtmc:use=all": {"train": Expected(1812, None, 8)},
    "cuhk03np:detected": {
        "train": Expected(767, 7365, 2),
        "query": Expected(700, 1400, 2),
        "gallery": Expected(700, 5332, 2),
    },
    "cuhk03np:labeled": {
        "train": Expected(767, 7368, 2),
        "query": Expected(700, 1400, 2),
        "gallery": Expected(700, 5328, 2),
    },
    "cuhk03np:detected,use=all": {"train": Expected(1467, 14097, 2)},
    "cuhk03np:labeled,use=all": {"train": Expected(1467, 14096, 2)},
    "cuhk03": {"train": Expected(1367, 26263, 2)},
    "msmt17": _MSMT,
    "msmt17:merge_val=false": {
        "train": Expected(1041, None, 15),
        "query": _MSMT["query"],
        "gallery": _MSMT["gallery"],
    },
    "msmt17:use=all": {"train": Expected(4101, 126441, 15)},
    "cuhk02": {
        "train": Expected(1577, None, 8),
        "query": Expected(239, None, 1),
        "gallery": Expected(239, None, 1),
    },
    "cuhk02:use=all": {"train": Expected(1816, None, 10)},
    "cuhksysu": {"train": Expected(11934, 34574, None)},
    "prid": {
        "train": Expected(100, 200, 2),
        "query": Expected(100, 100, 1),
        "gallery": Expected(649, 649, 1),
    },
    "grid": {
        "train": Expected(125, 250, None),
        "query": Expected(125, 125, None),
        "gallery": Expected(126, 900, None),  # 125 ids + the distractors (id 0)
    },
    "viper": {
        "train": Expected(316, 632, 2),
        "query": Expected(316, 316, 1),
        "gallery": Expected(316, 316, 1),
    },
    "ilids": {
        "train": Expected(59, None, 1),
        "query": Expected(60, 60, 1),
        "gallery": Expected(60, 60, 1),
    },
}
"""Reference counts per split, keyed by :func:`reference_key`. Sums over splits (``use=all``)
are given only where they follow from the release's numbers without a count of
distractors; MSMT17 V1 and V2 share their counts."""

SCAN_SPECS: tuple[str, ...] = (
    "market1501",
    "dukemtmc",
    "cuhk03np:detected",
    "cuhk03np:labeled",
    "cuhk03",
    "msmt17:V2",
    "msmt17:V1",
    "msmt17:layout=market",
    "cuhk02",
    "cuhksysu",
    "cuhksysu:layout=market",
    "prid",
    "grid",
    "viper",
    "ilids",
)
"""What :func:`scan_data_dir` looks for, in this order."""


def reference_key(dataset: ReIDDataset) -> str | None:
    """The :data:`REFERENCE_STATS` key of a dataset's configuration, or None if it has none.

    Example:
        >>> from metareid.data import ImageRecord, ReIDDataset
        >>> reference_key(ReIDDataset([ImageRecord("a.jpg", 1, 0, 0, 1)], [], []))  # custom
    """
    name, use = dataset.name, dataset.use
    if name == "cuhk03np":
        key = f"cuhk03np:{getattr(dataset, 'subset', 'detected')}"
        return f"{key},use=all" if use == "all" else key
    if name == "msmt17" and use == "train" and not getattr(dataset, "merge_val", True):
        return "msmt17:merge_val=false"
    if name == "cuhk02" and getattr(dataset, "cameras", "per_pair") != "per_pair":
        return None  # the camera counts above are those of the per-pair cameras
    key = f"{name}:use=all" if use == "all" else name
    return key if key in REFERENCE_STATS else None


@dataclass(frozen=True)
class SplitCheck:
    """One split's counts next to the reference.

    Attributes:
        split: ``"train"``, ``"query"`` or ``"gallery"``.
        stats: the counts found.
        expected: the reference counts (None: no reference for this split).
        mismatches: one text per count that differs, e.g. ``"images 12,930 vs 12,936"``.
    """

    split: str
    stats: SplitStats
    expected: Expected | None
    mismatches: tuple[str, ...]


@dataclass(frozen=True)
class DatasetCheck:
    """A dataset's counts per split, checked against :data:`REFERENCE_STATS`.

    Attributes:
        spec: the dataset spec (or name) it was built from.
        root: where it was read from.
        splits: one :class:`SplitCheck` per non-empty split (train always).
        causes: the likely causes of the mismatches, most likely first.
        reference: the reference key used, None when there is none.

    Example:
        >>> from metareid.data import ImageRecord, ReIDDataset
        >>> check = check_dataset(ReIDDataset([ImageRecord("a.jpg", 1, 0, 0, 1)], [], []))
        >>> check.ok, check.reference
        (True, None)
    """

    spec: str
    root: str
    splits: tuple[SplitCheck, ...]
    causes: tuple[str, ...]
    reference: str | None

    @property
    def ok(self) -> bool:
        """True when no count differs from the reference."""
        return not any(s.mismatches for s in self.splits)


def _fmt(value: int | tuple[int, ...] | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, tuple):
        return " or ".join(f"{v:,}" for v in value)
    return f"{value:,}"


def _differs(found: int, expected: int | tuple[int, ...] | None) -> bool:
    if expected is None:
        return False
    return found not in (expected if isinstance(expected, tuple) else (expected,))


def check_dataset(
    dataset: ReIDDataset,
    spec: str | None = None,
    reference: dict[str, dict[str, Expected]] | None = None,
) -> DatasetCheck:
    """Compare a dataset's counts per split with the reference and name likely causes.

    Args:
        dataset: the dataset.
        spec: its spec, for the report. Default: its name.
        reference: the reference table. Default :data:`REFERENCE_STATS` (tests pass their
            own, scaled-down numbers).

    Returns:
        The check.

    Example:
        >>> from metareid.data import ImageRecord, ReIDDataset
        >>> ds = ReIDDataset([ImageRecord("a.jpg", 1, 0, 0, 1)], [], [])
        >>> table = {"custom": {"train": Expected(2, 2, 1)}}
        >>> check_dataset(ds, reference=table).splits[0].mismatches
        ('ids 1 vs 2', 'images 1 vs 2')
    """
    table = REFERENCE_STATS if reference is None else reference
    key = reference_key(dataset) if reference is None else _custom_key(dataset, table)
    expected_splits = table.get(key, {}) if key is not None else {}
    checks = []
    for split, stats in (
        ("train", dataset.train_stats),
        ("query", dataset.query_stats),
        ("gallery", dataset.gallery_stats),
    ):
        expected = expected_splits.get(split)
        if split != "train" and stats.num_imgs == 0 and expected is None:
            continue
        mismatches = []
        if expected is not None:
            for label, found, want in (
                ("ids", stats.num_pids, expected.num_pids),
                ("images", stats.num_imgs, expected.num_imgs),
                ("cameras", stats.num_cams, expected.num_cams),
            ):
                if _differs(found, want):
                    mismatches.append(f"{label} {found:,} vs {_fmt(want)}")
        checks.append(SplitCheck(split, stats, expected, tuple(mismatches)))
    causes = _likely_causes(dataset, checks, table) if any(c.mismatches for c in checks) else []
    root = str(getattr(dataset, "dataset_dir", getattr(dataset, "root", "")))
    return DatasetCheck(spec or dataset.name, root, tuple(checks), tuple(causes), key)


def _custom_key(dataset: ReIDDataset, table: dict[str, dict[str, Expected]]) -> str | None:
    key = reference_key(dataset)
    if key is not None and key in table:
        return key
    return dataset.name if dataset.name in table else None


def _likely_causes(
    dataset: ReIDDataset, checks: list[SplitCheck], table: dict[str, dict[str, Expected]]
) -> list[str]:
    """The likely causes of the mismatches, most specific first."""
    causes: list[str] = []
    found = {c.split: c.stats for c in checks}
    # Another configuration of the same dataset gives exactly these counts.
    for key, splits in table.items():
        if key == reference_key(dataset) or key.split(":")[0] != dataset.name:
            continue
        if all(
            split in found
            and not _differs(found[split].num_pids, want.num_pids)
            and not _differs(found[split].num_imgs, want.num_imgs)
            for split, want in splits.items()
        ):
            causes.append(f"the counts are those of '{key}': {_VARIANT_HINT.get(key, key)}")
    name = dataset.name
    train = next(c for c in checks if c.split == "train")
    ids_ok = train.expected is not None and not _differs(
        train.stats.num_pids, train.expected.num_pids
    )
    if name == "cuhk03np" and ids_ok and not causes:
        causes.append(
            "CUHK03-NP detected vs labeled: the two subsets differ by a few images "
            "(train 7,365 vs 7,368); check subset= and which folder the files came from"
        )
    if name == "msmt17":
        if ids_ok and any(m.startswith("images") for m in train.mismatches):
            causes.append(
                "MSMT17 list_train.txt only vs list_train + list_val (merge_val): train + val "
                "hold 32,621 images of the 1,041 ids; toolboxes that train on list_train "
                "only give fewer"
            )
        causes.append(
            "MSMT17 V1 vs V2: the list files and image folders must come from the same "
            "version (version='V1' / 'V2'); a Market-style copy holds what its author put in it"
        )
    if name in ("market1501", "dukemtmc", "grid") and any(
        c.split == "gallery" and c.mismatches for c in checks
    ):
        causes.append(
            "distractor or junk images removed from or added to the gallery folder "
            "(Market-1501: id 0 distractors kept, -1 junk dropped)"
        )
    fewer, more = [], []
    for c in checks:
        want = c.expected.num_imgs if c.expected is not None else None
        if isinstance(want, int) and c.stats.num_imgs < want:
            fewer.append(f"{c.split} {want - c.stats.num_imgs:,}")
        elif isinstance(want, int) and c.stats.num_imgs > want:
            more.append(f"{c.split} {c.stats.num_imgs - want:,}")
    if fewer:
        causes.append(f"missing files (fewer images than the release: {', '.join(fewer)})")
    if more:
        causes.append(
            f"extra files (more images than the release: {', '.join(more)}): another "
            "version, a copy or augmented images mixed in"
        )
    if not causes:
        causes.append("missing or extra files, or a different release of the dataset")
    return causes


_VARIANT_HINT = {
    "cuhk03np:detected": "CUHK03-NP detected vs labeled; select it with cuhk03np:detected",
    "cuhk03np:labeled": "CUHK03-NP detected vs labeled; select it with cuhk03np:labeled",
    "msmt17:merge_val=false": "list_train.txt only, without list_val.txt",
    "msmt17": "list_train + list_val merged",
}


def source_check_line(spec: str, dataset: ReIDDataset) -> str:
    """One line with a source's training split next to the reference, for the training log.

    Example:
        >>> from metareid.data import ImageRecord, ReIDDataset
        >>> print(source_check_line("toy", ReIDDataset([ImageRecord("a.jpg", 1, 0, 0, 1)], [], [])))
        source toy: train 1 ids / 1 images / 1 cameras (no reference numbers)
    """
    check = check_dataset(dataset, spec)
    train = check.splits[0]
    s = train.stats
    line = f"source {spec}: train {s.num_pids:,} ids / {s.num_imgs:,} images / {s.num_cams} cameras"
    if train.expected is None:
        return line + " (no reference numbers)"
    e = train.expected
    line += f"; reference {_fmt(e.num_pids)} / {_fmt(e.num_imgs)} / {_fmt(e.num_cams)}"
    if not train.mismatches:
        return line + ": ok"
    return line + f": MISMATCH ({'; '.join(train.mismatches)}; likely cause: {check.causes[0]})"


ScanResult = tuple[list[DatasetCheck], list[tuple[str, str]], list[str]]
"""Checks of the datasets found, (spec, error) of the broken ones, specs not found."""


def scan_data_dir(
    data_dir: str | Path,
    specs: Sequence[str] = SCAN_SPECS,
    reference: dict[str, dict[str, Expected]] | None = None,
    build: Callable[[str, Path], ReIDDataset] | None = None,
) -> ScanResult:
    """Find every dataset of ``specs`` under ``data_dir`` and check its counts.

    A dataset whose folder is missing is "not found"; one whose folder is there but does not
    parse (a missing list file, a file name that breaks the pattern) is reported with its
    error. The split files of PRID, VIPeR and iLIDS are written if they are not there yet,
    as on a first use.

    Args:
        data_dir: the data directory.
        specs: the dataset specs to look for. Default :data:`SCAN_SPECS`.
        reference: the reference table (default :data:`REFERENCE_STATS`).
        build: builds a spec under ``data_dir``. Default
            :func:`~metareid.data.build_dataset_from_spec`.

    Returns:
        ``(checks, errors, not_found)``.

    Raises:
        FileNotFoundError: ``data_dir`` is not a directory.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     checks, errors, missing = scan_data_dir(tmp, specs=["viper"])
        >>> checks, errors, missing
        ([], [], ['viper'])
    """
    from metareid.data.specs import build_dataset_from_spec

    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"data_dir '{root}' is not a directory")
    make = build or build_dataset_from_spec
    checks: list[DatasetCheck] = []
    errors: list[tuple[str, str]] = []
    absent: list[tuple[str, str]] = []
    for spec in specs:
        try:
            dataset = make(spec, root)
        except FileNotFoundError as err:
            absent.append((spec, str(err).splitlines()[0]))
            continue
        except ValueError as err:
            errors.append((spec, str(err).splitlines()[0]))
            continue
        checks.append(check_dataset(dataset, spec, reference))
    found = {c.spec.partition(":")[0] for c in checks}
    not_found: list[str] = []
    for spec, message in absent:
        name = spec.partition(":")[0]
        if name in found:
            continue  # another variant of it is there (MSMT17 V1 when V2 was looked for)
        found.add(name)  # report each dataset once
        if _folder_present(name, root):  # its folder is there but a file is missing
            errors.append((spec, message))
        else:
            not_found.append(name)
    return checks, errors, not_found


def _folder_present(name: str, data_dir: Path) -> bool:
    from metareid.data.datasets.registry import dataset_factory, list_datasets

    factory = dataset_factory(name) if name in list_datasets() else None
    folders = [f for f in getattr(factory, "folder_names", (name,)) if f]
    return any((data_dir / f).is_dir() for f in folders)


def format_scan(result: ScanResult, data_dir: str | Path) -> str:
    """The report of :func:`scan_data_dir` as a Markdown table, mismatches flagged.

    Example:
        >>> print(format_scan(([], [], ["prid"]), "data"))
        No dataset found under 'data'.
        Not found: prid
    """
    checks, errors, not_found = result
    lines: list[str] = []
    if checks:
        lines += [
            "| dataset | split | ids | images | cameras | reference (ids / images / cameras) "
            "| check |",
            "|---|---|---|---|---|---|---|",
        ]
        for check in checks:
            for i, split in enumerate(check.splits):
                s, e = split.stats, split.expected
                ref = (
                    "-"
                    if e is None
                    else f"{_fmt(e.num_pids)} / {_fmt(e.num_imgs)} / {_fmt(e.num_cams)}"
                )
                verdict = "ok" if e is not None and not split.mismatches else "no reference"
                if split.mismatches:
                    verdict = "**MISMATCH** " + "; ".join(split.mismatches)
                where = f"{check.spec} ({check.root})" if i == 0 else ""
                lines.append(
                    f"| {where} | {split.split} | {s.num_pids:,} | {s.num_imgs:,} | "
                    f"{s.num_cams} | {ref} | {verdict} |"
                )
        flagged = [c for c in checks if not c.ok]
        for check in flagged:
            lines.append(f"{check.spec}: likely cause: " + "; or ".join(check.causes))
        if not flagged:
            lines.append("All counts agree with the reference numbers.")
    else:
        lines.append(f"No dataset found under '{data_dir}'.")
    for spec, message in errors:
        lines.append(f"{spec}: **ERROR** {message}")
    if not_found:
        lines.append("Not found: " + ", ".join(not_found))
    return "\n".join(lines)
