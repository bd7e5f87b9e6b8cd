"""The global random generators' states, in checkpoint-friendly (``weights_only``) form."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def python_rng_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def set_python_rng_state(state: list[Any]) -> None:
    random.setstate((state[0], tuple(state[1]), state[2]))


def numpy_rng_state() -> list[Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    return [
        name,
        torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        int(pos),
        int(has_gauss),
        float(cached),
    ]


def set_numpy_rng_state(state: list[Any]) -> None:
    name, keys, pos, has_gauss, cached = state
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
