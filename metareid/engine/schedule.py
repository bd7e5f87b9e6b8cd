"""Learning-rate schedule of M3L: linear warm-up, then step decay (Sec. 4.2)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch

__all__ = ["warmup_multistep_factor", "warmup_multistep_scheduler"]


def warmup_multistep_factor(
    epoch: int,
    warmup_epochs: int = 10,
    warmup_factor: float = 0.01,
    milestones: Sequence[int] = (30, 50),
    gamma: float = 0.1,
) -> float:
    """Multiplier of the base learning rate at ``epoch`` (0-based).

    Linear warm-up from ``warmup_factor`` at epoch 0 to 1 at ``warmup_epochs``, then
    ``gamma`` per milestone reached. The paper: 3.5e-4 reached after 10 epochs, x0.1 at
    epochs 30 and 50.

    Example:
        >>> [round(warmup_multistep_factor(e, 10, 0.01), 3) for e in (0, 5, 10, 30, 50)]
        [0.01, 0.505, 1.0, 0.1, 0.01]
    """
    factor = 1.0
    if epoch < warmup_epochs:
        alpha = epoch / warmup_epochs
        factor = warmup_factor * (1 - alpha) + alpha
    return factor * gamma ** sum(1 for m in milestones if epoch >= m)


def warmup_multistep_scheduler(
    optimizer: torch.optim.Optimizer,
    warmup_epochs: int = 10,
    warmup_factor: float = 0.01,
    milestones: Sequence[int] = (30, 50),
    gamma: float = 0.1,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepped once per epoch with :func:`warmup_multistep_factor`.

    Example:
        >>> opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1.0)
        >>> sched = warmup_multistep_scheduler(opt, warmup_epochs=2, warmup_factor=0.5)
        >>> opt.param_groups[0]["lr"]
        0.5
    """
    fn = partial(
        warmup_multistep_factor,
        warmup_epochs=warmup_epochs,
        warmup_factor=warmup_factor,
        milestones=tuple(milestones),
        gamma=gamma,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
