"""Slow check: a small CNN trained on three synthetic domains beats an untrained one on the
fourth (held-out) domain. Run with ``pytest -m slow tests/data``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metareid.data import (
    ImageRecord,
    ReIDDataset,
    build_dataset,
    build_test_loader,
    build_test_transform,
    prepare_synthetic_benchmark,
)

TARGET = 3


def small_cnn() -> nn.Module:
    def block(cin: int, cout: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )

    return nn.Sequential(
        block(3, 16),
        block(16, 32),
        block(32, 64),
        nn.Conv2d(64, 128, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def tensors(records: Sequence[ImageRecord]) -> tuple[Tensor, Tensor, Tensor]:
    loader = build_test_loader(records, build_test_transform((64, 32)), num_workers=0)
    batches = list(loader)
    return (
        torch.cat([b["img"] for b in batches]),
        torch.cat([b["pid"] for b in batches]),
        torch.cat([b["camid"] for b in batches]),
    )


def market_map(model: nn.Module, ds: ReIDDataset) -> float:
    """mAP with the Market-1501 protocol, one query at a time."""
    model.eval()
    (qx, qp, qc), (gx, gp, gc) = tensors(ds.query), tensors(ds.gallery)
    with torch.no_grad():
        qf, gf = F.normalize(model(qx), dim=1), F.normalize(model(gx), dim=1)
    aps = []
    for i in range(len(qp)):
        keep = ~((gp == qp[i]) & (gc == qc[i]))
        scores = (gf[keep] @ qf[i]).numpy()
        match = (gp[keep] == qp[i]).numpy()[np.argsort(-scores, kind="stable")]
        if match.any():
            precision = np.cumsum(match) / np.arange(1, len(match) + 1)
            aps.append(float((precision * match).sum() / match.sum()))
    return 100.0 * float(np.mean(aps))


@pytest.mark.slow
def test_training_on_three_domains_transfers_to_the_fourth(tmp_path: Path) -> None:
    prepare_synthetic_benchmark(tmp_path)
    domains = [build_dataset("synthetic", tmp_path, domain=d) for d in range(4)]
    sources = [d for d in range(4) if d != TARGET]
    train = [tensors(domains[d].train) for d in sources]
    torch.manual_seed(0)
    model = small_cnn()
    untrained = market_map(model, domains[TARGET])
    head = nn.Linear(128, 40 * len(sources))
    params = list(model.parameters()) + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3, weight_decay=5e-4)
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        model.train()
        xs, ys = [], []
        for k, (x, y, _) in enumerate(train):
            idx = torch.randint(len(x), (32,), generator=generator)
            flip = torch.rand(32, generator=generator) < 0.5
            xs.append(torch.where(flip[:, None, None, None], x[idx].flip(3), x[idx]))
            ys.append(y[idx] + 40 * k)
        loss = F.cross_entropy(head(model(torch.cat(xs))), torch.cat(ys))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    trained = market_map(model, domains[TARGET])
    assert trained > untrained + 8.0, (trained, untrained)
