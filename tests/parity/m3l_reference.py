"""An independent transcription of one M3L training iteration, in plain torch.

Written from ``shared/reference/official-code-notes.md`` (published code) and
``m3l-paper.md`` (paper), without importing metareid. The network is a tiny
``conv -> BatchNorm2d -> ReLU -> global average pooling -> BNNeck`` run functionally from
a dict of tensors, so that the meta-test can run at ``Theta'`` on copies of the buffers.

Published code (``variant="published"``):

* memory loss on the L2-normalised BNNeck output, ``-log softmax(M f / 0.05)[y]``;
* batch-hard triplet loss on the pooled (pre-neck) feature, Euclidean, margin 0.3;
* ``update_params(solver='adam')``: zero moments, ``g' = g + 5e-4 theta``,
  ``m = 0.1 g'``, ``v = 0.001 g'^2 + 1e-8``,
  ``theta' = theta - (lr / 0.1) m / (sqrt(v) / sqrt(0.001) + 1e-8)``, gradient taken with
  ``create_graph=True`` (exact second order);
* ``MixUpBatchNorm1d`` in meta-test: for each meta-train domain i, ``Normal(mean_i, var_i)``
  (the variance as scale), one lambda for all, ``lambda x + (1 - lambda) z``, each
  mixture batch-normalised with its own statistics and L2-normalised; the memory loss is
  averaged over the mixtures;
* outer loss ``L_mtr + L_mte``, outer ``torch.optim.Adam`` (lr, weight decay 5e-4);
* memory update after the outer step: an extra no-grad train-mode forward of every
  source batch, then per sample ``M[y] <- 0.2 M[y] + 0.8 f`` and ``M[y] /= |M[y]|``.

Paper (``variant="paper"``): Eq. 2 with the batch mean of each identity (followed by the
L2 renormalisation that metareid documents as its one addition), Eq. 3, Eq. 4, Eq. 5-7
with ``z ~ N(mu, sigma)`` (``sigma`` the standard deviation) and one lambda per mixture,
Eq. 8-10, Algorithm 1 with ``torch.optim.Adam``'s step from zero moments as the inner
step, memories updated with the meta-train features of the step.

Assumptions of this transcription (not stated by the notes): meta-train domains run in
index order; MetaBN records the biased batch variance; ``L_mtr`` is the mean over
meta-train domains (Eq. 9); the random draws of one meta-test call are the lambdas
first, then the standard-normal noise of shape (k, B, C), from one generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

TEMPERATURE = 0.05
MARGIN = 0.3
MOMENTUM = 0.2
WEIGHT_DECAY = 5e-4
BN_EPS = 1e-5
BN_MOMENTUM = 0.1

TRAINABLE = ("conv.weight", "bn.weight", "bn.bias", "neck.weight")


@dataclass
class State:
    params: dict[str, Tensor]  # leaf tensors, TRAINABLE order
    neck_bias: Tensor  # frozen (BNNeck practice)
    buffers: dict[str, Tensor]  # bn.running_mean/var/num_batches_tracked, same for neck
    memories: list[Tensor]
    optimizer: torch.optim.Adam
    metabn_generator: torch.Generator
    meta_generator: torch.Generator
    log: list[dict[str, float]] = field(default_factory=list)


def forward(
    params: dict[str, Tensor],
    neck_bias: Tensor,
    buffers: dict[str, Tensor],
    images: Tensor,
    *,
    train: bool,
) -> Tensor:
    """The pooled feature (the neck's input), BatchNorm2d in train or eval mode."""
    x = F.conv2d(images, params["conv.weight"])
    x = F.batch_norm(
        x,
        buffers["bn.running_mean"],
        buffers["bn.running_var"],
        params["bn.weight"],
        params["bn.bias"],
        training=train,
        momentum=BN_MOMENTUM,
        eps=BN_EPS,
    )
    if train:
        buffers["bn.num_batches_tracked"] += 1
    x = F.relu(x)
    return x.mean(dim=(2, 3))


def neck_plain(params, neck_bias, buffers, pooled: Tensor, *, train: bool) -> Tensor:
    out = F.batch_norm(
        pooled,
        buffers["neck.running_mean"],
        buffers["neck.running_var"],
        params["neck.weight"],
        neck_bias,
        training=train,
        momentum=BN_MOMENTUM,
        eps=BN_EPS,
    )
    if train:
        buffers["neck.num_batches_tracked"] += 1
    return out


def memory_loss(feats: Tensor, labels: Tensor, memory: Tensor) -> Tensor:
    """Eq. 3 per sample, averaged: ``-log softmax(M f / tau)[y]``."""
    total = feats.new_zeros(())
    for f, y in zip(feats, labels.tolist()):
        logits = memory @ f / TEMPERATURE
        total = total - (logits[y] - torch.logsumexp(logits, dim=0))
    return total / feats.shape[0]


def triplet_loss(x: Tensor, labels: Tensor) -> Tensor:
    """Eq. 4, batch-hard, one anchor at a time."""
    total = x.new_zeros(())
    ys = labels.tolist()
    for a in range(x.shape[0]):
        d = ((x - x[a]) ** 2).sum(dim=1).clamp(min=1e-12).sqrt()
        pos = [d[j] for j in range(len(ys)) if ys[j] == ys[a] and j != a]
        neg = [d[j] for j in range(len(ys)) if ys[j] != ys[a]]
        total = total + F.relu(torch.stack(pos).max() - torch.stack(neg).min() + MARGIN)
    return total / x.shape[0]


def published_update_params(theta: Tensor, grad: Tensor, lr: float) -> Tensor:
    g = grad + WEIGHT_DECAY * theta
    m = 0.1 * g
    v = 0.001 * g * g + 1e-8
    return theta - (lr / 0.1) * m / (torch.sqrt(v) / math.sqrt(0.001) + 1e-8)


def adam_fresh_step(theta: Tensor, grad: Tensor, lr: float) -> Tensor:
    """torch.optim.Adam's first step from zero moments (coupled weight decay, eps 1e-8)."""
    g = grad + WEIGHT_DECAY * theta
    m, v = 0.1 * g, 0.001 * g * g
    return theta - (lr / 0.1) * m / (torch.sqrt(v) / math.sqrt(0.001) + 1e-8)


def init_memories(state: State, domains: list[tuple[Tensor, Tensor]], num_ids: int) -> None:
    """Centroid = L2-normalised mean eval-mode feature of each identity."""
    state.memories = []
    with torch.no_grad():
        for images, pids in domains:
            pooled = forward(state.params, state.neck_bias, state.buffers, images, train=False)
            feats = F.normalize(
                neck_plain(state.params, state.neck_bias, state.buffers, pooled, train=False),
                dim=1,
            )
            rows = []
            for k in range(num_ids):
                mean = feats[pids == k].mean(dim=0)
                rows.append(mean / mean.norm())
            state.memories.append(torch.stack(rows))


def iteration(state: State, batches: list[tuple[Tensor, Tensor]], lr: float, variant: str) -> None:
    """One iteration of Algorithm 1 as the published code (or the paper) runs it."""
    published = variant == "published"
    n = len(batches)
    t = int(torch.randint(n, (1,), generator=state.meta_generator).item())
    train_domains = [d for d in range(n) if d != t]
    names = list(TRAINABLE)
    theta = [state.params[k] for k in names]

    # Meta-train on the model itself (running statistics move).
    losses, stats, step_feats = [], [], []
    for d in train_domains:
        images, pids = batches[d]
        pooled = neck_in = forward(state.params, state.neck_bias, state.buffers, images, train=True)
        mean, var = neck_in.detach().mean(dim=0), neck_in.detach().var(dim=0, unbiased=False)
        stats.append((mean, var))
        feats = F.normalize(
            neck_plain(state.params, state.neck_bias, state.buffers, neck_in, train=True), dim=1
        )
        step_feats.append((d, feats.detach(), pids))
        losses.append(memory_loss(feats, pids, state.memories[d]) + triplet_loss(pooled, pids))
    l_mtr = sum(losses) / len(losses)

    # Inner step, differentiable.
    grads = torch.autograd.grad(l_mtr, theta, create_graph=True)
    step = published_update_params if published else adam_fresh_step
    fast = {k: step(p, g, lr) for k, p, g in zip(names, theta, grads)}

    # Meta-test at Theta' on copies of the buffers.
    images, pids = batches[t]
    copies = {k: v.clone() for k, v in state.buffers.items()}
    pooled = neck_in = forward(fast, state.neck_bias, copies, images, train=True)
    k = len(stats)
    gen = state.metabn_generator
    lambdas = torch.rand(1 if published else k, generator=gen, dtype=neck_in.dtype)
    noise = torch.randn(k, *neck_in.shape, generator=gen, dtype=neck_in.dtype)
    mem_losses = []
    for i, (mean, var) in enumerate(stats):
        scale = var if published else var.sqrt()
        z = mean + scale * noise[i]
        lam = lambdas[0] if published else lambdas[i]
        mixed = lam * neck_in + (1 - lam) * z
        normed = F.batch_norm(
            mixed, None, None, fast["neck.weight"], state.neck_bias, training=True, eps=BN_EPS
        )
        mem_losses.append(memory_loss(F.normalize(normed, dim=1), pids, state.memories[t]))
    l_mte = triplet_loss(pooled, pids) + sum(mem_losses) / k

    # Outer step.
    total = l_mtr + l_mte
    outer = torch.autograd.grad(total, theta)
    state.optimizer.zero_grad(set_to_none=True)
    for p, g in zip(theta, outer):
        p.grad = g.detach()
    state.optimizer.step()
    state.log.append(
        {"meta_test": t, "l_mtr": float(l_mtr.detach()), "l_mte": float(l_mte.detach())}
    )

    # Memory update.
    with torch.no_grad():
        if published:
            for d, (images, pids) in enumerate(batches):
                neck_in = forward(state.params, state.neck_bias, state.buffers, images, train=True)
                feats = F.normalize(
                    neck_plain(state.params, state.neck_bias, state.buffers, neck_in, train=True),
                    dim=1,
                )
                memory = state.memories[d]
                for f, y in zip(feats, pids.tolist()):
                    memory[y] = MOMENTUM * memory[y] + (1 - MOMENTUM) * f
                    memory[y] = memory[y] / memory[y].norm()
        else:
            for d, feats, pids in step_feats:  # Eq. 2 with the identity means of the batch
                memory = state.memories[d]
                for y in sorted(set(pids.tolist())):
                    row = MOMENTUM * memory[y] + (1 - MOMENTUM) * feats[pids == y].mean(dim=0)
                    memory[y] = row / row.norm()
