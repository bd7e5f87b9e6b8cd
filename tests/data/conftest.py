"""Fixtures for the data tests: tiny fake dataset trees with the real naming conventions."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from PIL import Image

MakeFiles = Callable[[Path, Iterable[str]], None]


def _write(folder: Path, names: Iterable[str], decodable: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if decodable:
            fmt = "PNG" if path.suffix == ".png" else "JPEG"
            Image.new("RGB", (2, 2), (10, 20, 30)).save(path, format=fmt)
        else:
            path.touch()


@pytest.fixture
def touch() -> MakeFiles:
    """Create empty files (enough where nothing gets decoded)."""
    return lambda folder, names: _write(folder, names, decodable=False)


@pytest.fixture
def images() -> MakeFiles:
    """Create real 2x2 images."""
    return lambda folder, names: _write(folder, names, decodable=True)
