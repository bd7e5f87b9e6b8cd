"""Naive per-sample reference implementations shared by several test modules.

Deliberately written as plain Python loops, independent of the vectorised library code
they check. ``tests`` is on ``sys.path`` (``pythonpath`` in ``pyproject.toml``).
"""

from __future__ import annotations

import torch
from torch import Tensor


def loop_memory_init(features: torch.Tensor, labels: torch.Tensor, num_ids: int) -> torch.Tensor:
    sums = [torch.zeros(features.shape[1], dtype=features.dtype) for _ in range(num_ids)]
    counts = [0] * num_ids
    for feature, label in zip(features, labels.tolist(), strict=True):
        sums[label] = sums[label] + feature
        counts[label] += 1
    rows = [s / c for s, c in zip(sums, counts, strict=True)]
    return torch.stack([r / r.norm() for r in rows])


def loop_mean_update(memory: Tensor, features: Tensor, labels: Tensor, momentum: float) -> Tensor:
    memory = memory.clone()
    sums: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}
    for feature, label in zip(features, labels.tolist(), strict=True):
        sums[label] = sums.get(label, torch.zeros_like(feature)) + feature
        counts[label] = counts.get(label, 0) + 1
    for label, total in sums.items():
        row = momentum * memory[label] + (1 - momentum) * total / counts[label]
        memory[label] = row / row.norm()
    return memory


def loop_sequential_update(
    memory: Tensor, features: Tensor, labels: Tensor, momentum: float
) -> Tensor:
    memory = memory.clone()
    for feature, label in zip(features, labels.tolist(), strict=True):
        row = momentum * memory[label] + (1 - momentum) * feature
        memory[label] = row / row.norm()
    return memory
