"""A tiny synthetic benchmark shared by the engine tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_setup import make_tiny_bench, tiny_train_config


@pytest.fixture(scope="session")
def tiny_bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bench(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture
def tiny_config():
    """``tiny_config(root, out, **overrides)``: a TrainConfig that trains in seconds."""
    return _tiny_config


def _tiny_config(root: Path, out: Path, **overrides):
    return tiny_train_config(root, out, **{"arch": "resnet18", **overrides})
