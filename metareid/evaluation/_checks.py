"""Private input conversion and checks for :mod:`metareid.evaluation`.

The evaluation functions accept numpy arrays as well as torch tensors. These helpers turn
them into CPU or device tensors without copying where possible and raise ``TypeError`` or
``ValueError`` naming the argument, the value received and what was expected.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from metareid._validation import check_finite, check_int, describe

__all__ = [
    "as_distances",
    "as_features",
    "as_ids",
    "check_nonnegative_int",
]


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
