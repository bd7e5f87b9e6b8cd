"""Atomic checkpoint files, loaded with ``weights_only=True``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["load_checkpoint", "save_checkpoint"]


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically.

    The file is written to a temporary file in the same directory, flushed to disk and
    renamed over ``path``: a crash at any point leaves either the previous file or the new
    one, never a half-written file. ``state`` must hold only what ``weights_only`` loading
    accepts (tensors, numbers, strings, lists, tuples, dicts, None).

    Example:
        >>> import tempfile, os
        >>> d = tempfile.mkdtemp()
        >>> p = save_checkpoint({"epoch": 3, "w": torch.ones(2)}, os.path.join(d, "last.pt"))
        >>> load_checkpoint(p)["epoch"]
        3
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device | None = "cpu") -> Any:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises:
        FileNotFoundError: if ``path`` does not exist (the message names it).

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "c.pt")
        >>> _ = save_checkpoint({"a": [1, 2]}, p)
        >>> load_checkpoint(p)
        {'a': [1, 2]}
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    return torch.load(path, map_location=map_location, weights_only=True)
