"""The argument checks of metareid, in one module.

Every helper raises ``TypeError`` or ``ValueError`` with a message that names the offending
argument, the value it received and what was expected. None of them mutates anything, so a
caller that runs all its checks before touching its state leaves that state unchanged when a
check fails.

Two checks read tensor values and so force a device-to-host synchronisation on a GPU:
labels within ``[0, num_classes)`` (:func:`check_labels`) and finite values
(:func:`check_finite`). :func:`value_checks` turns them off, for a block or for good
(:func:`set_value_checks`); shape, dtype and type checks always run.

The ``as_*`` helpers also convert: evaluation, inference and visualisation accept numpy
arrays as well as tensors.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "as_distances",
    "as_feature_pair",
    "as_features",
    "as_ids",
    "as_numpy",
    "check_choice",
    "check_features",
    "check_finite",
    "check_int",
    "check_labels",
    "check_memory",
    "check_nonnegative_int",
    "check_optional_nonnegative",
    "check_positive_finite",
    "check_positive_int",
    "check_unit_interval",
    "describe",
    "format_ids",
    "set_value_checks",
    "value_checks",
    "value_checks_enabled",
]

_VALUE_CHECKS = [True]


def value_checks_enabled() -> bool:
    """Whether the checks that read tensor values (and synchronise a GPU) run.

    Example:
        >>> value_checks_enabled()
        True
    """
    return _VALUE_CHECKS[0]


def set_value_checks(enabled: bool) -> None:
    """Turn the value checks (label ranges, finiteness) on or off for the process.

    Example:
        >>> set_value_checks(False); value_checks_enabled()
        False
        >>> set_value_checks(True)
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {enabled!r}")
    _VALUE_CHECKS[0] = enabled


@contextmanager
def value_checks(enabled: bool) -> Iterator[None]:
    """Run a block with the value checks on or off (off: no host sync from metareid's checks).

    Example:
        >>> import torch
        >>> from metareid.functional import memory_id_loss
        >>> with value_checks(False):  # out-of-range labels are not looked for
        ...     _ = memory_id_loss(torch.randn(2, 3), torch.tensor([0, 1]), torch.randn(2, 3))
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {enabled!r}")
    before = _VALUE_CHECKS[0]
    _VALUE_CHECKS[0] = enabled
    try:
        yield
    finally:
        _VALUE_CHECKS[0] = before


def describe(value: object) -> str:
    """A short description of ``value`` for error messages (shape and dtype of arrays)."""
    if isinstance(value, (Tensor, np.ndarray)):
        kind = "tensor" if isinstance(value, Tensor) else "numpy array"
        return f"a {kind} of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"{type(value).__name__} {value!r}"[:200]


def check_int(name: str, value: object, minimum: int) -> int:
    """Return ``value`` as an int if it is an integer (NumPy ones too, bool excluded) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= {minimum}, got {describe(value)}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def check_choice(name: str, value: object, choices: Collection[str]) -> str:
    """Return ``value`` if it is one of ``choices``, raise otherwise."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {sorted(choices)}, got {describe(value)}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an int >= 1 (bool excluded), raise otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 1, got {describe(value)}")
    if value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value}")
    return value


def _check_real(name: str, value: object, expected: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be {expected}, got {describe(value)}")
    return float(value)


def check_unit_interval(name: str, value: object) -> float:
    """Return ``value`` as a float if it lies in [0, 1], raise otherwise."""
    expected = "a real number in [0, 1]"
    number = _check_real(name, value, expected)
    if not 0.0 <= number <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return number


def check_positive_finite(name: str, value: object) -> float:
    """Return ``value`` as a float if it is finite and > 0, raise otherwise."""
    expected = "a finite real number > 0"
    number = _check_real(name, value, expected)
    if not (math.isfinite(number) and number > 0.0):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return number


def check_optional_nonnegative(name: str, value: object) -> float | None:
    """Return ``value`` as a float if it is ``None`` or finite and >= 0, raise otherwise."""
    if value is None:
        return None
    expected = "a finite real number >= 0 or None"
    number = _check_real(name, value, expected)
    if not (math.isfinite(number) and number >= 0.0):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return number


def check_features(name: str, value: object, dim: int | None = None) -> Tensor:
    """Check that ``value`` is a non-empty floating-point tensor of shape (B, D).

    Args:
        name: argument name used in error messages.
        value: the object to check.
        dim: the required feature dimension D, or ``None`` to accept any.

    Returns:
        ``value``, unchanged.
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, D), got {describe(value)}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    expected = "(B, D)" if dim is None else f"(B, {dim})"
    if value.dim() != 2 or (dim is not None and value.shape[1] != dim):
        raise ValueError(f"{name} must have shape {expected}, got shape {tuple(value.shape)}")
    if value.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one sample, got shape {tuple(value.shape)}")
    return value


def check_memory(name: str, value: object) -> Tensor:
    """Check that ``value`` is a floating-point tensor of shape (C, D) with C, D >= 1."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (C, D), got {describe(value)}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if value.dim() != 2 or value.numel() == 0:
        raise ValueError(
            f"{name} must have shape (C, D) with C, D >= 1, got shape {tuple(value.shape)}"
        )
    return value


def check_labels(
    name: str, value: object, batch_size: int | None, num_classes: int | None = None
) -> Tensor:
    """Check that ``value`` is an integer tensor of shape (B,) with values in [0, num_classes).

    Args:
        name: argument name used in error messages.
        value: the object to check.
        batch_size: the required length B (the batch size of the matching features), or
            ``None`` to accept any length.
        num_classes: the exclusive upper bound of the labels, or ``None`` to accept any
            integer (negative values included).

    Returns:
        ``value``, unchanged.
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B,), got {describe(value)}")
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor (e.g. torch.long), got {value.dtype}")
    if value.dim() != 1 and batch_size is None:
        raise ValueError(f"{name} must have shape (B,), got shape {tuple(value.shape)}")
    if value.dim() != 1 or (batch_size is not None and value.shape[0] != batch_size):
        raise ValueError(
            f"{name} must have shape ({batch_size},) to match the batch size of the features, "
            f"got shape {tuple(value.shape)}"
        )
    if num_classes is not None and value.numel() > 0 and _VALUE_CHECKS[0]:
        out_of_range = (value < 0) | (value >= num_classes)
        if bool(out_of_range.any()):
            bad = torch.unique(value[out_of_range]).tolist()
            raise ValueError(
                f"{name} must lie in [0, {num_classes}), got out-of-range values {format_ids(bad)}"
            )
    return value


def check_finite(name: str, value: Tensor) -> Tensor:
    """Raise ``ValueError`` if ``value`` holds NaN or infinite entries (naming the first)."""
    if not _VALUE_CHECKS[0] or value.numel() == 0:
        return value
    finite = torch.isfinite(value)
    if not bool(finite.all()):
        count = int((~finite).sum())
        first = tuple((~finite).nonzero()[0].tolist())
        raise ValueError(
            f"{name} must be finite, got {count} NaN or infinite entries in a tensor of shape "
            f"{tuple(value.shape)} (first at index {first}: {value[first].item()})"
        )
    return value


def format_ids(ids: list[int], limit: int = 20) -> str:
    """Format a list of ids for an error message, truncated after ``limit`` entries."""
    if len(ids) <= limit:
        return str(ids)
    shown = ", ".join(str(i) for i in ids[:limit])
    return f"[{shown}, ...] ({len(ids)} in total)"


# ----------------------------------------------------------- arrays or tensors in
# (evaluation, inference and visualisation accept numpy arrays as well as tensors)


def _to_tensor(name: str, value: object, expected: str) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, np.ndarray):
        if value.dtype == object or value.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be {expected}, got {describe(value)}")
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, (list, tuple)):
        try:
            array = np.asarray(value)
        except ValueError as error:  # ragged nested lists
            raise TypeError(
                f"{name} must be {expected}, got a ragged {type(value).__name__}"
            ) from error
        if array.dtype == object or array.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be {expected}, got {describe(value)}")
        return torch.from_numpy(array)
    raise TypeError(f"{name} must be {expected}, got {describe(value)}")


def as_ids(name: str, value: object, length: int | None = None, like: str = "") -> Tensor:
    """Return ``value`` (array-like of integer ids, shape (N,)) as an int64 CPU tensor.

    Args:
        name: argument name used in error messages.
        value: numpy array, tensor or list of integers.
        length: required length N, or ``None`` to accept any.
        like: what ``length`` comes from, for the error message (e.g. "distmat.shape[0]").
    """
    expected = "a 1-D integer array or tensor of ids"
    ids = _to_tensor(name, value, expected)
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"{name} must be {expected}, got dtype {ids.dtype}")
    if ids.dim() != 1:
        raise ValueError(f"{name} must be {expected} of shape (N,), got shape {tuple(ids.shape)}")
    if length is not None and ids.shape[0] != length:
        raise ValueError(
            f"{name} must have length {length} (= {like}), got shape {tuple(ids.shape)}"
        )
    return ids.to(device="cpu", dtype=torch.int64)


def as_distances(name: str, value: object) -> Tensor:
    """Return ``value`` (array-like, shape (Q, G)) as a contiguous floating-point tensor.

    Integer and boolean matrices are converted to float64 (exact below 2**53); float16 and
    bfloat16 are converted to float32 (exact). Tensors keep their device.
    """
    expected = "a 2-D floating-point array or tensor of distances of shape (Q, G)"
    dist = _to_tensor(name, value, expected)
    if dist.is_complex():
        raise TypeError(f"{name} must be {expected}, got dtype {dist.dtype}")
    if dist.dim() != 2:
        raise ValueError(f"{name} must be {expected}, got shape {tuple(dist.shape)}")
    if not dist.is_floating_point():
        dist = dist.to(torch.float64)
    elif dist.dtype in (torch.float16, torch.bfloat16):
        dist = dist.to(torch.float32)
    return dist.contiguous()


def as_features(name: str, value: object, dim: int | None = None) -> Tensor:
    """Return ``value`` (array-like, shape (N, D)) as a floating-point tensor.

    float16 and bfloat16 are converted to float32. Tensors keep their device.
    """
    expected = "a 2-D floating-point array or tensor of features of shape (N, D)"
    feats = _to_tensor(name, value, expected)
    if not feats.is_floating_point():
        raise TypeError(f"{name} must be {expected}, got dtype {feats.dtype}")
    if feats.dim() != 2:
        raise ValueError(f"{name} must be {expected}, got shape {tuple(feats.shape)}")
    if dim is not None and feats.shape[1] != dim:
        raise ValueError(
            f"{name} must have {dim} columns to match the other features, "
            f"got shape {tuple(feats.shape)}"
        )
    if feats.shape[0] == 0 or feats.shape[1] == 0:
        raise ValueError(f"{name} must have N, D >= 1, got shape {tuple(feats.shape)}")
    if feats.dtype in (torch.float16, torch.bfloat16):
        feats = feats.to(torch.float32)
    return feats


def as_feature_pair(x_name: str, x: object, y_name: str, y: object) -> tuple[Tensor, Tensor]:
    """Two feature matrices with the same width, on one device, in one dtype, finite.

    The dtype is the promotion of both (after :func:`as_features`' float16 upcast).
    """
    xt = as_features(x_name, x)
    yt = as_features(y_name, y, dim=xt.shape[1])
    if xt.device != yt.device:
        raise ValueError(
            f"{x_name} and {y_name} must be on the same device, got {xt.device} and {yt.device}"
        )
    dtype = torch.promote_types(xt.dtype, yt.dtype)
    xt, yt = xt.to(dtype), yt.to(dtype)
    check_finite(x_name, xt)
    check_finite(y_name, yt)
    return xt, yt


def check_nonnegative_int(name: str, value: object) -> int:
    """Return ``value`` if it is an int >= 0 (bool excluded), raise otherwise."""
    return check_int(name, value, 0)


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
