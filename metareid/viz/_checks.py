"""Argument checks shared by the visualisation functions."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from metareid._validation import describe

__all__ = ["as_numpy", "describe"]


def as_numpy(name: str, value: object, expected: str) -> np.ndarray:
    """``value`` (tensor, array, list or tuple) as a numpy array, or a ``TypeError``."""
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, (np.ndarray, list, tuple)):
        try:
            return np.asarray(value)
        except ValueError as error:  # ragged nested sequences
            raise TypeError(f"{name} must be {expected}, got a ragged sequence") from error
    raise TypeError(f"{name} must be {expected}, got {describe(value)}")
