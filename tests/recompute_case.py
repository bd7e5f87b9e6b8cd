"""A tiny float64 ReID model, batches and memories for the recomputed-chunks tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metareid import MemoryBank
from metareid.models import ReIDModel

DIM = 6


def tiny_model(seed: int = 0, metabn: bool = True) -> ReIDModel:
    torch.manual_seed(seed)
    trunk = nn.Sequential(
        nn.Conv2d(3, DIM, 3, bias=False),
        nn.BatchNorm2d(DIM),
        nn.ReLU(),
        nn.Conv2d(DIM, DIM, 3),
        nn.BatchNorm2d(DIM),
        nn.ReLU(),
    )
    model = ReIDModel(trunk, feat_dim=DIM)
    if not metabn:  # the "meta" ablation: a plain BatchNorm1d neck
        plain = nn.BatchNorm1d(DIM)
        plain.load_state_dict(model.neck.state_dict())
        model.neck = plain
    return model.double().train()


def batch(seed: int, n_ids: int = 4, k: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "img": torch.randn(n_ids * k, 3, 8, 6, generator=g, dtype=torch.float64),
        "pid": torch.randperm(n_ids, generator=g).repeat_interleave(k),
    }


def banks(update_rule: str = "mean") -> list[MemoryBank]:
    g = torch.Generator().manual_seed(5)
    out = []
    for _ in range(3):
        bank = MemoryBank(4, DIM, dtype=torch.float64, update_rule=update_rule)
        feats = torch.randn(4, DIM, generator=g, dtype=torch.float64)
        bank.init_from(F.normalize(feats, dim=1), torch.arange(4))
        out.append(bank)
    return out
