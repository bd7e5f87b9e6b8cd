"""Dataset specs: one string that names a dataset, its options and where it lives.

A spec is ``name[:options]`` where ``options`` is a comma-separated list of ``key=value``
items and at most one bare value for the dataset's main option:

=============  ==============  =========================================================
name           bare value      examples
=============  ==============  =========================================================
cuhk03np       ``subset``      ``cuhk03np:labeled``, ``cuhk03np:detected,use=all``
msmt17         ``version``     ``msmt17:V1``, ``msmt17:V2,merge_val=false``,
                               ``msmt17:layout=market``
cuhk03         ``split_id``    ``cuhk03:0``
prid, grid,    ``split_id``    ``prid:3``, ``viper:0,query_camera=b``
viper, ilids
cuhk02         ``cameras``     ``cuhk02:use=all``, ``cuhk02:shared``
cuhksysu       ``layout``      ``cuhksysu:market``, ``cuhksysu:camera=scene``
synthetic      ``domain``      ``synthetic:2``
=============  ==============  =========================================================

Any dataset takes ``use=all`` (train + query + gallery as training data) where its class
does. Values ``true``/``false`` become booleans and integers become ints.

A real dataset lives in a folder of the data directory: ``<data-dir>/<name>/`` first, then
the other names of :attr:`~metareid.data.ReIDDataset.folder_names` (torchreid's
``dukemtmc-reid``, ``prid2011`` ...; ``""`` is the data directory itself, where fast-reid
keeps ``Market-1501-v15.09.15/`` and ``DukeMTMC-reID/``). The synthetic benchmark is the
data directory itself.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metareid.data.datasets.base import ReIDDataset
from metareid.data.datasets.registry import build_dataset, dataset_factory, list_datasets

__all__ = [
    "DatasetSpec",
    "build_dataset_from_spec",
    "check_target_not_in_sources",
    "dataset_family",
    "parse_dataset_spec",
]

_MAIN_OPTION = {
    "cuhk03np": "subset",
    "msmt17": "version",
    "cuhk03": "split_id",
    "prid": "split_id",
    "grid": "split_id",
    "viper": "split_id",
    "ilids": "split_id",
    "cuhk02": "cameras",
    "cuhksysu": "layout",
    "synthetic": "domain",
}
_FAMILY = {"cuhk03np": "cuhk03"}
"""Datasets that hold the same people under two names (CUHK03-NP re-splits CUHK03)."""

_INT = re.compile(r"-?\d+")


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed dataset spec.

    Attributes:
        text: the spec as written.
        name: the registry name.
        kwargs: the options, passed to the dataset's constructor.

    Example:
        >>> parse_dataset_spec("msmt17:V1,use=all")
        DatasetSpec(text='msmt17:V1,use=all', name='msmt17', kwargs={'version': 'V1', 'use': 'all'})
    """

    text: str
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def parse_dataset_spec(spec: str) -> DatasetSpec:
    """Split a spec ``name[:options]`` into the dataset name and its constructor options.

    Args:
        spec: e.g. ``"market1501"``, ``"prid:3"``, ``"cuhk03np:labeled,use=all"``.

    Returns:
        The parsed spec.

    Raises:
        TypeError: ``spec`` is not a string.
        ValueError: an empty name, an empty option, a repeated option, a bare value for a
            dataset without a main option, or two bare values.

    Example:
        >>> parse_dataset_spec("prid:3").kwargs
        {'split_id': 3}
        >>> parse_dataset_spec("cuhk03np:labeled,use=all").kwargs
        {'subset': 'labeled', 'use': 'all'}
    """
    if not isinstance(spec, str):
        raise TypeError(f"a dataset spec must be a string like 'market1501', got {spec!r}")
    name, _, options = spec.partition(":")
    if not name:
        raise ValueError(f"dataset spec {spec!r} has no dataset name before ':'")
    kwargs: dict[str, Any] = {}
    if options:
        for item in options.split(","):
            key, eq, value = item.partition("=")
            if not eq:
                key, value = _MAIN_OPTION.get(name, ""), item
                if not key:
                    raise ValueError(
                        f"dataset spec {spec!r}: {name!r} has no main option, so {item!r} must "
                        "be written key=value (e.g. use=all)"
                    )
            if not key or not value:
                raise ValueError(f"dataset spec {spec!r}: empty option in {item!r}")
            if key in kwargs:
                raise ValueError(f"dataset spec {spec!r} gives {key!r} twice")
            kwargs[key] = _convert(value)
    return DatasetSpec(spec, name, kwargs)


def _convert(value: str) -> Any:
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    if _INT.fullmatch(value):
        return int(value)
    return value


def build_dataset_from_spec(spec: str | DatasetSpec, data_dir: str | Path) -> ReIDDataset:
    """Build the dataset a spec names, finding its folder under ``data_dir``.

    The folders tried are those of the dataset class's ``folder_names`` (metareid's name
    first, then torchreid's and fast-reid's, see the module docstring); the first one that
    holds the dataset's layout is used.

    Args:
        spec: a spec string or a parsed :class:`DatasetSpec`.
        data_dir: the data directory (for ``synthetic``: the benchmark root).

    Returns:
        The dataset.

    Raises:
        ValueError: an unknown dataset name (the message lists the registered ones), an
            option the dataset does not take, or the dataset's own errors.
        FileNotFoundError: no folder under ``data_dir`` holds the dataset; the message
            names the folders tried and the expected layout.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> with tempfile.TemporaryDirectory() as tmp:  # the fast-reid root: no market1501/
        ...     for split in ("bounding_box_train", "query", "bounding_box_test"):
        ...         folder = Path(tmp) / "Market-1501-v15.09.15" / split
        ...         folder.mkdir(parents=True)
        ...         (folder / "0002_c1s1_000451_03.jpg").touch()
        ...     build_dataset_from_spec("market1501:use=all", tmp).train_stats
        SplitStats(num_pids=2, num_imgs=3, num_cams=1)
    """
    parsed = parse_dataset_spec(spec) if isinstance(spec, str) else spec
    name, kwargs = parsed.name, parsed.kwargs
    if name not in list_datasets():
        raise ValueError(
            f"dataset spec {parsed.text!r}: unknown dataset {name!r}; registered datasets: "
            f"{list_datasets()}"
        )
    factory = dataset_factory(name)
    _check_options(parsed, factory)
    data_dir = Path(data_dir)
    if name == "synthetic":
        return build_dataset(name, data_dir, **kwargs)
    folders = list(getattr(factory, "folder_names", ())) or [name]
    if name not in folders:
        folders.insert(0, name)
    candidates = [data_dir / folder if folder else data_dir for folder in folders]
    errors: list[tuple[Path, FileNotFoundError]] = []
    for root in candidates:
        if not root.is_dir():
            continue
        try:
            return build_dataset(name, root, **kwargs)
        except FileNotFoundError as err:
            errors.append((root, err))
    tried = ", ".join(f"'{c}'" for c in candidates)
    if errors and errors[0][0] == candidates[0]:  # metareid's own folder exists: its error
        first = errors[0][1]
        raise FileNotFoundError(
            f"{first}\n(dataset spec {parsed.text!r}; folders tried: {tried})"
        ) from first
    layout = getattr(factory, "layout", "")
    raise FileNotFoundError(
        f"dataset spec {parsed.text!r}: no folder under the data directory '{data_dir}' holds "
        f"{name}; tried {tried}. Expected layout inside '{candidates[0]}':\n{layout}"
    )


def _check_options(spec: DatasetSpec, factory: Any) -> None:
    """Refuse options that the dataset's constructor does not take."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items() if n != "root" and p.kind is not p.VAR_POSITIONAL]
    unknown = sorted(set(spec.kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"dataset spec {spec.text!r}: {spec.name!r} takes no option {unknown}; its options "
            f"are {accepted}"
        )


def dataset_family(spec: str) -> str:
    """The people a spec's images show: equal families mean a train/test leak.

    Versions, subsets, splits and ``use`` do not change the family; CUHK03-NP and the old
    CUHK03 protocol are one family; each synthetic domain is its own.

    Example:
        >>> dataset_family("cuhk03np:labeled,use=all"), dataset_family("synthetic:2")
        ('cuhk03', 'synthetic:2')
    """
    parsed = parse_dataset_spec(spec)
    if parsed.name == "synthetic":
        return f"synthetic:{parsed.kwargs.get('domain', 0)}"
    return _FAMILY.get(parsed.name, parsed.name)


def check_target_not_in_sources(sources: tuple[str, ...], targets: tuple[str, ...]) -> None:
    """Refuse a run that trains on a dataset it is evaluated on.

    Args:
        sources: the source specs.
        targets: the target specs (the monitored target and any further ones).

    Raises:
        ValueError: a target shares its family (:func:`dataset_family`) with a source; the
            message names both specs.

    Example:
        >>> check_target_not_in_sources(("market1501:use=all", "cuhksysu"), ("prid",))
        >>> check_target_not_in_sources(("msmt17:V1", "dukemtmc"), ("msmt17",))
        Traceback (most recent call last):
        ...
        ValueError: target 'msmt17' is also a source ('msmt17:V1'): ...
    """
    families = {dataset_family(s): s for s in sources}
    for target in targets:
        source = families.get(dataset_family(target))
        if source is not None:
            raise ValueError(
                f"target {target!r} is also a source ({source!r}): domain generalisation "
                "evaluates on an unseen domain, and training on the target's images (its "
                "train split, or all of it with use=all) would leak them; drop it from the "
                "sources or choose another target"
            )
