"""Name registry of the datasets: :func:`build_dataset` by name, :func:`register_dataset` to add."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from metareid.data.datasets.base import ReIDDataset
from metareid.data.datasets.cuhk02 import CUHK02
from metareid.data.datasets.cuhk03 import CUHK03, CUHK03NP
from metareid.data.datasets.cuhksysu import CUHKSYSU
from metareid.data.datasets.dukemtmc import DukeMTMCreID
from metareid.data.datasets.generic import GenericDataset
from metareid.data.datasets.grid import GRID
from metareid.data.datasets.ilids import ILIDS
from metareid.data.datasets.market1501 import Market1501
from metareid.data.datasets.msmt17 import MSMT17
from metareid.data.datasets.prid import PRID
from metareid.data.datasets.synthetic_benchmark import SyntheticReID
from metareid.data.datasets.viper import VIPeR

__all__ = [
    "DatasetFactory",
    "build_dataset",
    "dataset_factory",
    "list_datasets",
    "register_dataset",
]

DatasetFactory = Callable[..., ReIDDataset]
"""Anything called as ``factory(root, **kwargs)`` that returns a :class:`ReIDDataset`."""

_REGISTRY: dict[str, DatasetFactory] = {
    "market1501": Market1501,
    "dukemtmc": DukeMTMCreID,
    "cuhk03np": CUHK03NP,
    "cuhk03": CUHK03,
    "msmt17": MSMT17,
    "cuhk02": CUHK02,
    "cuhksysu": CUHKSYSU,
    "prid": PRID,
    "grid": GRID,
    "viper": VIPeR,
    "ilids": ILIDS,
    "synthetic": SyntheticReID,
    "generic": GenericDataset,
}


def register_dataset(
    name: str, factory: DatasetFactory, *, overwrite: bool = False
) -> DatasetFactory:
    """Make a dataset available to :func:`build_dataset` under ``name``.

    Args:
        name: the registry name, a non-empty string.
        factory: a :class:`ReIDDataset` subclass, or any callable ``factory(root, **kwargs)``
            returning one.
        overwrite: replace an existing entry. Default False: registering a taken name raises.

    Returns:
        ``factory``, unchanged.

    Raises:
        ValueError: ``name`` is empty or already registered (without ``overwrite``).
        TypeError: ``factory`` is not callable.

    Example:
        >>> class Mine(GenericDataset):
        ...     pass
        >>> _ = register_dataset("mine", Mine)
        >>> "mine" in list_datasets()
        True
        >>> _ = _REGISTRY.pop("mine")
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise TypeError(f"factory must be callable, got {factory!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(
            f"a dataset named {name!r} is already registered ({_REGISTRY[name]!r}); "
            "pass overwrite=True to replace it"
        )
    _REGISTRY[name] = factory
    return factory


def build_dataset(name: str, root: str | Path, **kwargs: Any) -> ReIDDataset:
    """Build the dataset registered under ``name``.

    Built-in names: ``market1501``, ``dukemtmc``, ``cuhk03np`` (``subset="detected"``
    default, or ``"labeled"``), ``cuhk03`` (old protocol, ``split_id=0``), ``msmt17``
    (``version="V2"`` default, or ``"V1"``; ``layout="lists"`` or ``"market"``), ``cuhk02``
    (``cameras``, ``test_pair``), ``cuhksysu`` (``layout``, ``camera``), the small
    Protocol-1 targets ``prid``, ``grid``, ``viper`` and ``ilids`` (``split_id`` 0-9),
    ``synthetic`` (``domain=0``) and ``generic``. Most take ``use="train"`` (default) or
    ``"all"`` (train + query + gallery as training data).

    Args:
        name: a registered name (see :func:`list_datasets`).
        root: the dataset root, usually ``<data-dir>/<name>``.
        **kwargs: passed to the dataset's constructor.

    Returns:
        The dataset.

    Raises:
        ValueError: ``name`` is not registered; the message lists the registered names.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     for split in ("bounding_box_train", "query", "bounding_box_test"):
        ...         (Path(tmp) / split).mkdir()
        ...         (Path(tmp) / split / "0005_c2_f0046985.jpg").touch()
        ...     ds = build_dataset("dukemtmc", tmp)
        >>> type(ds).__name__, ds.num_train_pids
        ('DukeMTMCreID', 1)
    """
    return dataset_factory(name)(root, **kwargs)


def dataset_factory(name: str) -> DatasetFactory:
    """The factory registered under ``name`` (a dataset class, usually), not called.

    Lets callers read a factory's class attributes (``folder_names``, ``num_splits``) or
    check its keyword arguments before building anything.

    Raises:
        ValueError: ``name`` is not registered; the message lists the registered names.

    Example:
        >>> dataset_factory("prid").num_splits
        10
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; registered datasets: {list_datasets()}")
    return _REGISTRY[name]


def list_datasets() -> list[str]:
    """The registered dataset names, sorted.

    Example:
        >>> list_datasets()[:4]
        ['cuhk02', 'cuhk03', 'cuhk03np', 'cuhksysu']
    """
    return sorted(_REGISTRY)
