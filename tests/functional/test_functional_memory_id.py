"""Tests for metareid.functional.memory_id_loss."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from metareid.functional import memory_id_loss


def _loop_loss(features: Tensor, labels: Tensor, memory: Tensor, temperature: float) -> Tensor:
    losses = []
    for feature, label in zip(features.tolist(), labels.tolist(), strict=True):
        scores = [
            sum(a * b for a, b in zip(feature, row, strict=True)) / temperature
            for row in memory.tolist()
        ]
        top = max(scores)
        log_total = top + math.log(sum(math.exp(s - top) for s in scores))
        losses.append(log_total - scores[label])
    return torch.tensor(losses, dtype=torch.float64)


def _inputs(seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    features = F.normalize(torch.randn(6, 4, generator=gen, dtype=torch.float64), dim=1)
    memory = F.normalize(torch.randn(5, 4, generator=gen, dtype=torch.float64), dim=1)
    labels = torch.tensor([0, 4, 2, 2, 1, 0])
    return features, labels, memory


@pytest.mark.parametrize("temperature", [0.05, 1.0])
def test_matches_loop(temperature: float) -> None:
    features, labels, memory = _inputs()
    expected = _loop_loss(features, labels, memory, temperature)
    none = memory_id_loss(features, labels, memory, temperature, reduction="none")
    torch.testing.assert_close(none, expected)
    torch.testing.assert_close(
        memory_id_loss(features, labels, memory, temperature), expected.mean()
    )
    torch.testing.assert_close(
        memory_id_loss(features, labels, memory, temperature, reduction="sum"), expected.sum()
    )


def test_default_temperature_is_005() -> None:
    features, labels, memory = _inputs()
    torch.testing.assert_close(
        memory_id_loss(features, labels, memory), _loop_loss(features, labels, memory, 0.05).mean()
    )


def test_gradcheck() -> None:
    features, labels, memory = _inputs()
    features.requires_grad_(True)
    memory.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda f, m: memory_id_loss(f, labels, m, 0.5), (features, memory)
    )
    assert torch.autograd.gradcheck(
        lambda f: memory_id_loss(f, labels, memory.detach(), 0.05, "none"), (features,)
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"temperature": 0.0}, ValueError, "temperature must be a finite real number > 0, got 0.0"),
        ({"temperature": -1.0}, ValueError, "temperature"),
        ({"temperature": float("inf")}, ValueError, "temperature"),
        ({"temperature": float("nan")}, ValueError, "temperature"),
        ({"temperature": "0.05"}, TypeError, "temperature"),
        ({"reduction": "avg"}, ValueError, r"reduction must be one of .* got 'avg'"),
        ({"labels": torch.tensor([0, 5, 2, 2, 1, 0])}, ValueError, r"\[0, 5\).*\[5\]"),
        ({"labels": torch.tensor([0, 1])}, ValueError, r"labels must have shape \(6,\)"),
        ({"labels": torch.zeros(6)}, TypeError, "integer"),
        ({"features": torch.randn(6, 3, dtype=torch.float64)}, ValueError, r"\(B, 4\)"),
        ({"memory": torch.randn(5)}, ValueError, r"memory must have shape \(C, D\)"),
        ({"memory": None}, TypeError, "memory must be a torch.Tensor"),
    ],
)
def test_errors(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    features, labels, memory = _inputs()
    args = {"features": features, "labels": labels, "memory": memory} | kwargs
    with pytest.raises(error, match=match):
        memory_id_loss(**args)
