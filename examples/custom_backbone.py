"""MetaBN, MemoryBank, the losses and MetaLearner wired into your own model.

A small CNN stands in for your backbone; three random "domains" stand in for your data.
Run: ``python examples/custom_backbone.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metareid import (
    HardTripletLoss,
    MemoryBank,
    MemoryIDLoss,
    MetaBN,
    MetaLearner,
    Phase,
    mixture_count,
)

NUM_DOMAINS, IDS_PER_DOMAIN, P, K = 3, 10, 4, 4  # any NUM_DOMAINS >= 2 works


class MyReIDNet(nn.Module):
    """Any backbone, then a BNNeck whose BatchNorm1d is a MetaBN (Sec. 3.4)."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, dim, 3, stride=2, padding=1),
            nn.BatchNorm2d(dim),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.neck = MetaBN(dim)  # or MetaBN.from_batchnorm(existing_bn)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.backbone(x)  # triplet loss input
        return pooled, F.normalize(self.neck(pooled), dim=1)  # memory loss input


def sample_batch(
    domain: int, gen: torch.Generator, ids: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """P identities x K images of one domain (random pixels shifted per domain)."""
    if ids is None:
        ids = torch.randperm(IDS_PER_DOMAIN, generator=gen)[:P]
    labels = ids.repeat_interleave(K)
    images = torch.randn(len(labels), 3, 32, 16, generator=gen) + 0.5 * domain
    images += labels.view(-1, 1, 1, 1) / IDS_PER_DOMAIN  # identity signal
    return images, labels


def main(num_domains: int = NUM_DOMAINS, iterations: int = 20) -> list[nn.Module]:
    """Train ``iterations`` M3L steps on ``num_domains`` random domains; return the memories."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = MyReIDNet()
    memories = nn.ModuleList(MemoryBank(IDS_PER_DOMAIN, 64) for _ in range(num_domains))
    id_loss, triplet = MemoryIDLoss(temperature=0.05), HardTripletLoss(margin=0.3)

    # Memory initialisation (Sec. 3.3): class means of eval-mode features.
    model.eval()
    with torch.no_grad():
        for d, memory in enumerate(memories):
            x, y = sample_batch(d, gen, ids=torch.arange(IDS_PER_DOMAIN))
            memory.init_from(model(x)[1], y)  # eval mode: (pooled, normalised neck)
    model.train()

    stash: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def loss_fn(model: nn.Module, batch: tuple, domain: int, phase: Phase) -> torch.Tensor:
        images, labels = batch
        k = mixture_count(model)  # MetaBN: k mixtures in meta-test (train mode), else 1
        pooled, feats = model(images)
        if phase is not Phase.META_TEST:  # meta-test features are mixtures: never stored
            stash.append((domain, feats.detach(), labels))  # memory update (Eq. 2)
        return id_loss(feats, labels.repeat(k), memories[domain]) + triplet(pooled, labels)

    optimizer = torch.optim.Adam(model.parameters(), lr=3.5e-4, weight_decay=5e-4)
    learner = MetaLearner(model, optimizer, generator=torch.Generator().manual_seed(1))
    for it in range(iterations):
        batches = [sample_batch(d, gen) for d in range(num_domains)]
        result = learner.step(batches, loss_fn)  # Algorithm 1, one iteration
        for d, feats, labels in stash:
            memories[d].update(feats, labels)
        stash.clear()
        if it % 5 == 0:
            print(
                f"iter {it:2d}  meta-test domain {result.meta_test_domain}  "
                f"L_mtr {result.meta_train_loss:.3f}  L_mte {result.meta_test_loss:.3f}"
            )
    return list(memories)


if __name__ == "__main__":
    main()
