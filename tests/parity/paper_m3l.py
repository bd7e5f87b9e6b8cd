"""One M3L training iteration as the PAPER writes it, in plain PyTorch (float64).

Source: Zhao et al., "Learning to Generalize Unseen Domains via Memory-based Multi-Source
Meta-Learning for Person Re-Identification", CVPR 2021 (``shared/reference/m3l-paper.md``).
This file is deliberately independent of metareid: it imports only torch, math and
dataclasses, and was written from the paper plus the list of readings below.

Network (tiny, standard; the paper uses ResNet-50 / IBN-Net50, Sec. 4.2): a torchvision-style
ResNet-10 (BasicBlocks, one block per stage, ``last_stride`` for layer4), global average
pooling -> ``pooled`` (B, 512) -> neck BatchNorm1d(512) (the "last batch normalization layer"
that MetaBN replaces, Sec. 3.4) -> L2 normalisation -> embedding ``f(x)``.
All BatchNorms (paper silent; reading R12): eps 1e-5, momentum 0.1, train mode normalises
with the batch statistics (biased variance) and moves the running statistics (unbiased
variance) exactly like ``torch.nn.BatchNorm``; eval mode uses the running statistics.

Steps of ``PaperM3L.train_iteration`` (Algorithm 1, one iteration, meta-test domain given):

1. Meta-train (Alg. 1 lines 4-6; Eq. 8, Eq. 9). For each meta-train domain i, in increasing
   domain index order: forward at Theta in train mode (the model's running statistics move);
   save the neck input's mini-batch mean mu_i and variance var_i (Sec. 3.4, "saves the
   mini-batch mean mu_i and mini-batch variance sigma_i"); L_mtr^i = L_Tri + L_M (Eq. 8) with
   L_M against the memory of domain i (Eq. 3) and L_Tri batch-hard (Eq. 4);
   L_mtr = mean_i L_mtr^i (Eq. 9).
2. Inner step (Alg. 1 lines 7-8): Theta' = Adam(grad_Theta L_mtr, Theta, alpha), kept in the
   autograd graph (the gradient of line 15 is the "high-order gradient", Sec. 3.2 / Eq. 1).
3. Meta-test (Alg. 1 lines 9-12; Eq. 5, 6, 7, 10) at Theta' in train mode: the neck input
   F_T is diversified by MetaBN: Z_i ~ N(mu_i, sigma_i) (Eq. 5), F_T^i = lambda F_T +
   (1 - lambda) Z^i (Eq. 6), f_T^i = gamma (F_T^i - mu_T^i) / sqrt(sigma_T^i^2 + eps) + beta
   (Eq. 7); L_mte = L_Tri(X_T; Theta') + mean_i L_M(f_T^i, M_T; Theta') (Eq. 10).
4. Meta optimisation (Alg. 1 lines 13-16): g = grad_Theta (L_mtr(Theta) + L_mte(Theta'))
   (line 15, Eq. 1), Theta <- Adam(g, Theta, beta) (line 16).
5. Memory update (Sec. 3.3 "Memory Updating", Eq. 2) with the meta-train features of step 1.

Memory initialisation: Sec. 3.3 "Memory Initialization" (per-identity mean of the model's
features over the whole domain).

Readings (the paper is silent; these are the library's "paper preset" choices, implemented
here and marked "(paper silent; reading: ...)" in the code, never claimed as the paper's words):

* R1 neck: BNNeck whose weight (gamma) is trained and whose bias (beta) is a constant that is
  never trained.
* R2 embedding: f(x) is the L2-normalised neck output (the memory holds normalised centroids).
* R3 memory initialisation: the model in eval mode; ids 0..C-1; centroids L2-normalised.
* R4 triplet feature: the pooled (pre-neck) feature; batch-hard mining (hardest positive among
  the OTHER samples of the identity, hardest negative), averaged over the anchors that have
  both; distances sqrt(max(|a|^2 + |b|^2 - 2 a.b, 1e-12)) (the usual numerically safe form).
  A batch with no such anchor is outside the paper's setting and raises ValueError (this
  file's own guard, not a reading of the library).
* R5 "Adam" of line 8: torch.optim.Adam's first step from zero moments (betas 0.9/0.999,
  eps 1e-8) with the same coupled weight decay 5e-4 as the outer Adam, alpha = the caller's
  lr (Sec. 4.2 gives alpha and beta the same schedule); fully differentiable
  (create_graph=True, Theta kept in the graph).
* R6 Eq. 5 "N(mu_i, sigma_i)": the paper calls sigma_i the mini-batch variance (Sec. 3.4);
  the Gaussian is read as having variance var_i, i.e. standard deviation sqrt(var_i), var_i
  the biased mini-batch variance; mu_i and var_i are constants (detached).
* R7 lambda ~ Beta(1, 1) (Eq. 6): one draw per mixture (the caller passes the draws).
* R8 meta-test forward: train mode with batch statistics; the running statistics it would move
  are discarded (the copied model of Alg. 1 line 7 is thrown away) -> run on buffer copies.
* R9 outer Adam: every trained parameter decays (weight decay 5e-4, Sec. 4.2, no exclusions).
* R10 memory update: only the meta-train domains' memories, with the detached features of
  step 1 (at Theta); the meta-test memory is not updated this iteration (its features were
  MetaBN mixtures). NOT IN THE PAPER: after Eq. 2 each updated slot is re-normalised to unit
  length (the library's documented addition).
* R11 in-batch order: meta-train domains in increasing index order; mixture i of MetaBN uses
  the statistics of the i-th meta-train domain, lambdas[i] and noise[i].
* R12 numerics the paper does not give: BN eps 1e-5 and momentum 0.1; the outer Adam's betas
  0.9/0.999 and eps 1e-8 with coupled (L2) weight decay; ``last_stride`` (the paper never
  mentions it; default 1); the initial BN running statistics are the caller's (the paper
  says "ImageNet-pretrained" only for the weights).
* Eq. 3 is written per sample; L_M of a batch is its mean over the batch (reading).
* Eq. 9 and Eq. 10 sum over i = 0..N_S-1 (N_S terms) but divide by N_S - 1: read as the mean
  over the N_S - 1 meta-train domains / mixtures (an index typo in the paper).

Parameter order (optimizer): torchvision's module order. Adam's update is element-wise per
parameter, so the order has no numerical effect.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

BN_EPS = 1e-5
BN_MOMENTUM = 0.1
ADAM_BETA1 = 0.9
ADAM_BETA2 = 0.999
ADAM_EPS = 1e-8
FEATURE_DIM = 512

_LAYER_CHANNELS = {1: (64, 64), 2: (64, 128), 3: (128, 256), 4: (256, 512)}


def param_names() -> list[str]:
    """Trained parameter names, torchvision module order (neck.bias is a constant, R1)."""
    names = ["conv1.weight", "bn1.weight", "bn1.bias"]
    for layer in (1, 2, 3, 4):
        p = f"layer{layer}.0"
        names += [
            f"{p}.conv1.weight",
            f"{p}.bn1.weight",
            f"{p}.bn1.bias",
            f"{p}.conv2.weight",
            f"{p}.bn2.weight",
            f"{p}.bn2.bias",
        ]
        if layer > 1:
            names += [
                f"{p}.downsample.0.weight",
                f"{p}.downsample.1.weight",
                f"{p}.downsample.1.bias",
            ]
    names.append("neck.weight")
    return names


def bn_prefixes() -> list[str]:
    """Every BatchNorm prefix P (buffers ``P.running_mean`` / ``P.running_var``)."""
    prefixes = ["bn1"]
    for layer in (1, 2, 3, 4):
        p = f"layer{layer}.0"
        prefixes += [f"{p}.bn1", f"{p}.bn2"]
        if layer > 1:
            prefixes.append(f"{p}.downsample.1")
    prefixes.append("neck")
    return prefixes


# ----------------------------------------------------------------------------------------------
# Network (Sec. 4.2 backbone family, shrunk to ResNet-10), run functionally on a parameter dict.
# ----------------------------------------------------------------------------------------------


def _bn(
    x: Tensor, w: Tensor, b: Tensor, buffers: dict[str, Tensor], prefix: str, train: bool
) -> Tensor:
    # torch.nn.BatchNorm semantics: train -> batch statistics (biased variance) and in-place
    # running-statistic update (unbiased variance); eval -> running statistics.
    return F.batch_norm(
        x,
        buffers[f"{prefix}.running_mean"],
        buffers[f"{prefix}.running_var"],
        w,
        b,
        training=train,
        momentum=BN_MOMENTUM,
        eps=BN_EPS,
    )


def _block(
    x: Tensor,
    params: dict[str, Tensor],
    buffers: dict[str, Tensor],
    layer: int,
    stride: int,
    train: bool,
) -> Tensor:
    p = f"layer{layer}.0"
    out = F.conv2d(x, params[f"{p}.conv1.weight"], stride=stride, padding=1)
    out = F.relu(
        _bn(out, params[f"{p}.bn1.weight"], params[f"{p}.bn1.bias"], buffers, f"{p}.bn1", train)
    )
    out = F.conv2d(out, params[f"{p}.conv2.weight"], stride=1, padding=1)
    out = _bn(out, params[f"{p}.bn2.weight"], params[f"{p}.bn2.bias"], buffers, f"{p}.bn2", train)
    if layer > 1:
        identity = F.conv2d(x, params[f"{p}.downsample.0.weight"], stride=stride)
        identity = _bn(
            identity,
            params[f"{p}.downsample.1.weight"],
            params[f"{p}.downsample.1.bias"],
            buffers,
            f"{p}.downsample.1",
            train,
        )
    else:
        identity = x
    return F.relu(out + identity)


def backbone(
    x: Tensor,
    params: dict[str, Tensor],
    buffers: dict[str, Tensor],
    *,
    last_stride: int,
    train: bool,
) -> Tensor:
    """ResNet-10 trunk + global average pooling -> ``pooled`` (B, 512) (= the neck input F)."""
    out = F.conv2d(x, params["conv1.weight"], stride=2, padding=3)
    out = F.relu(_bn(out, params["bn1.weight"], params["bn1.bias"], buffers, "bn1", train))
    out = F.max_pool2d(out, kernel_size=3, stride=2, padding=1)
    for layer, stride in ((1, 1), (2, 2), (3, 2), (4, last_stride)):
        out = _block(out, params, buffers, layer, stride, train)
    return out.mean(dim=(2, 3))


def neck_embedding(
    pooled: Tensor,
    params: dict[str, Tensor],
    neck_bias: Tensor,
    buffers: dict[str, Tensor],
    *,
    train: bool,
) -> Tensor:
    """f(x): neck BatchNorm1d (paper silent; reading R1: BNNeck, trained weight, constant bias)
    then L2 normalisation (paper silent; reading R2: L2-normalised BNNeck output)."""
    neck = _bn(pooled, params["neck.weight"], neck_bias, buffers, "neck", train)
    return F.normalize(neck, dim=1)


# ----------------------------------------------------------------------------------------------
# Losses (Sec. 3.3).
# ----------------------------------------------------------------------------------------------


def memory_loss(features: Tensor, memory: Tensor, pids: Tensor, temp: float) -> Tensor:
    """Eq. 3: -log softmax(M^T f / tau)[y], averaged over the mini-batch; the memory is a
    constant (it is updated by momentum, Eq. 2, not by the optimizer, Sec. 3.3)."""
    logits = features @ memory.detach().to(features.dtype).t() / temp
    return F.cross_entropy(logits, pids)


def pairwise_distance(x: Tensor) -> Tensor:
    """Euclidean distances (paper silent on the form; reading R4: the numerically safe
    sqrt(max(|a|^2 + |b|^2 - 2 a.b, 1e-12)))."""
    sq = (x * x).sum(dim=1)
    d2 = sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * (x @ x.t())
    return d2.clamp(min=1e-12).sqrt()


def triplet_loss(features: Tensor, pids: Tensor, margin: float) -> Tensor:
    """Eq. 4: [d_p - d_n + delta]_+ with the hard positive / hard negative of each anchor
    (batch-hard, [12]); (paper silent; reading R4: hardest positive among the OTHER samples of
    the identity, hardest negative, mean over the anchors that have both)."""
    dist = pairwise_distance(features)
    same = pids.unsqueeze(0) == pids.unsqueeze(1)
    eye = torch.eye(len(pids), dtype=torch.bool, device=features.device)
    pos = same & ~eye
    neg = ~same
    valid = pos.any(dim=1) & neg.any(dim=1)
    if not bool(valid.any()):
        raise ValueError("no anchor has both a positive and a negative (Eq. 4 undefined)")
    d_p = dist.masked_fill(~pos, float("-inf")).max(dim=1).values
    d_n = dist.masked_fill(~neg, float("inf")).min(dim=1).values
    return F.relu(d_p[valid] - d_n[valid] + margin).mean()


# ----------------------------------------------------------------------------------------------
# Inner Adam step (Alg. 1 line 8) and MetaBN (Sec. 3.4).
# ----------------------------------------------------------------------------------------------


def adam_first_step(theta: Tensor, grad: Tensor, lr: float, weight_decay: float) -> Tensor:
    """Alg. 1 line 8, Theta' = Adam(grad L_mtr, Theta, alpha): (paper silent on the moments;
    reading R5: torch.optim.Adam's first step from zero moments, coupled weight decay as in the
    outer Adam).  g' = g + wd * Theta; m = (1 - b1) g'; v = (1 - b2) g'^2;
    m_hat = m / (1 - b1) = g'; sqrt(v_hat) = sqrt(v / (1 - b2)) = |g'|;
    Theta' = Theta - alpha * m_hat / (sqrt(v_hat) + eps) = Theta - alpha * g' / (|g'| + eps).
    Written in the closed form so that its derivative stays finite where g' = 0 (sqrt'(0) is
    infinite); it stays differentiable in both Theta and g (no detach)."""
    g = grad + weight_decay * theta
    return theta - lr * g / (g.abs() + ADAM_EPS)


def meta_bn(
    f_t: Tensor,
    mu: Tensor,
    var: Tensor,
    lam: Tensor,
    noise: Tensor,
    gamma: Tensor,
    beta: Tensor,
) -> Tensor:
    """One MetaBN mixture (Sec. 3.4), before the L2 normalisation of R2.

    Eq. 5: z_j ~ N(mu_i, sigma_i), one sample per meta-test feature (paper silent; reading R6:
    sigma_i = sqrt(var_i), the standard deviation: z = mu + sqrt(var) * noise).
    Eq. 6: F_T^i = lambda F_T + (1 - lambda) Z^i.
    Eq. 7: f_T^i = gamma (F_T^i - mu_T^i) / sqrt(sigma_T^i^2 + eps) + beta, mu_T^i / sigma_T^i^2
    the mini-batch mean / (biased) variance of F_T^i, eps = 1e-5 (the BN's).
    """
    z = mu + var.sqrt() * noise  # Eq. 5
    mixed = lam * f_t + (1.0 - lam) * z  # Eq. 6
    mean = mixed.mean(dim=0)
    v = mixed.var(dim=0, unbiased=False)
    return gamma * (mixed - mean) / (v + BN_EPS).sqrt() + beta  # Eq. 7


# ----------------------------------------------------------------------------------------------
# The reference learner.
# ----------------------------------------------------------------------------------------------


class PaperM3L:
    """M3L as the paper writes it (see the module docstring for steps and readings)."""

    def __init__(
        self,
        weights: dict[str, Tensor],
        buffers: dict[str, Tensor],
        *,
        lr: float,
        last_stride: int = 1,
        weight_decay: float = 5e-4,
        temp: float = 0.05,
        momentum: float = 0.2,
        margin: float = 0.3,
    ) -> None:
        self.lr = float(lr)  # alpha = beta (Sec. 4.2: both follow the same schedule)
        self.last_stride = int(last_stride)
        self.weight_decay = float(weight_decay)  # Sec. 4.2: 0.0005
        self.temp = float(temp)  # Sec. 4.2: tau = 0.05
        self.momentum = float(momentum)  # Sec. 4.2: m = 0.2
        self.margin = float(margin)  # Sec. 4.2: delta = 0.3
        self.params: dict[str, Tensor] = {
            name: weights[name].detach().to(torch.float64).clone().requires_grad_(True)
            for name in param_names()
        }
        # (paper silent; reading R1: BNNeck bias is a constant, never trained)
        self.neck_bias = weights["neck.bias"].detach().to(torch.float64).clone()
        self.buffers: dict[str, Tensor] = {
            f"{p}.{kind}": buffers[f"{p}.{kind}"].detach().to(torch.float64).clone()
            for p in bn_prefixes()
            for kind in ("running_mean", "running_var")
        }
        self.memories: list[Tensor] = []
        # Sec. 4.2 / Alg. 1 line 16: Adam, weight decay 5e-4
        # (paper silent on exclusions; reading R9: every trained parameter decays).
        self.optimizer = torch.optim.Adam(
            list(self.params.values()), lr=self.lr, weight_decay=self.weight_decay
        )

    # -- helpers ---------------------------------------------------------------------------------

    def embed(self, images: Tensor, *, train: bool) -> tuple[Tensor, Tensor]:
        """(pooled, f(x)) at Theta with the model's own buffers."""
        x = images.to(torch.float64)
        pooled = backbone(x, self.params, self.buffers, last_stride=self.last_stride, train=train)
        return pooled, neck_embedding(
            pooled, self.params, self.neck_bias, self.buffers, train=train
        )

    # -- Sec. 3.3 Memory Initialization -----------------------------------------------------------

    @torch.no_grad()
    def init_memories(self, train_sets: list[tuple[Tensor, Tensor]]) -> None:
        """Sec. 3.3 "Memory Initialization": one memory per source domain with one slot per
        identity, initialised with the mean of the model's features of that identity over all
        samples of the domain (paper silent; reading R3: eval mode, ids 0..C-1, each centroid
        L2-normalised like the features)."""
        self.memories = []
        for images, pids in train_sets:
            _, feats = self.embed(images, train=False)
            pids = pids.to(torch.long)
            n_ids = int(pids.max()) + 1
            counts = torch.bincount(pids, minlength=n_ids)
            if bool((counts == 0).any()):
                raise ValueError("every identity 0..C-1 needs at least one image")
            sums = torch.zeros(n_ids, feats.shape[1], dtype=feats.dtype).index_add_(0, pids, feats)
            centroids = sums / counts.unsqueeze(1).to(feats.dtype)
            self.memories.append(F.normalize(centroids, dim=1))

    # -- Alg. 1, one iteration --------------------------------------------------------------------

    def meta_objective(
        self,
        batches: list[tuple[Tensor, Tensor]],
        meta_test: int,
        lambdas: Tensor,
        noise: Tensor,
        *,
        _inner_detach: str = "none",
    ) -> tuple[Tensor, Tensor, list[tuple[int, Tensor, Tensor]], dict[str, Tensor]]:
        """Steps 1-3: (L_mtr(Theta), L_mte(Theta'), meta-train features for Eq. 2, Theta').

        Moves the model's running statistics (meta-train forwards only). ``_inner_detach`` is a
        test hook only: "grad" detaches g in the inner step (first-order approximation), "all"
        detaches Theta and g (Theta' a constant); the paper's path (Alg. 1 line 15) is "none".
        """
        if _inner_detach not in ("none", "grad", "all"):
            raise ValueError(f"unknown _inner_detach {_inner_detach!r}")
        n_domains = len(batches)
        if n_domains < 2 or not 0 <= meta_test < n_domains:
            raise ValueError("need N_S >= 2 domains and a valid meta-test index")
        names = list(self.params)
        # Alg. 1 lines 2-3: the remaining domains are meta-train (R11: increasing index order).
        meta_train = [d for d in range(n_domains) if d != meta_test]
        lambdas = lambdas.to(torch.float64)
        noise = noise.to(torch.float64)

        # ---- 1. Meta-train (Alg. 1 lines 4-6, Eq. 8-9) at Theta, train mode ----------------
        losses_mtr: list[Tensor] = []
        stats: list[tuple[Tensor, Tensor]] = []
        mem_feats: list[tuple[int, Tensor, Tensor]] = []
        for d in meta_train:
            images, pids = batches[d]
            pids = pids.to(torch.long)
            pooled, feats = self.embed(images, train=True)  # running statistics move
            # Sec. 3.4: MetaBN saves the meta-train mini-batch mean and variance of its input
            # (paper silent; reading R6: biased variance, constants -> detached).
            stats.append((pooled.mean(dim=0).detach(), pooled.var(dim=0, unbiased=False).detach()))
            loss_tri = triplet_loss(pooled, pids, self.margin)  # Eq. 4 (R4: pooled feature)
            loss_mem = memory_loss(feats, self.memories[d], pids, self.temp)  # Eq. 3
            losses_mtr.append(loss_tri + loss_mem)  # Eq. 8
            mem_feats.append((d, feats.detach(), pids))  # for Eq. 2 (R10)
        loss_mtr = torch.stack(losses_mtr).mean()  # Eq. 9: 1/(N_S - 1) sum_i L_mtr^i

        # ---- 2. Inner step (Alg. 1 lines 7-8), differentiable (R5) ---------------------------
        theta = [self.params[n] for n in names]
        # create_graph=True: line 15 differentiates L_mte(Theta') through g as well
        grads = torch.autograd.grad(
            loss_mtr, theta, create_graph=_inner_detach == "none", retain_graph=True
        )
        if _inner_detach != "none":  # test hook only
            grads = tuple(g.detach() for g in grads)
        if _inner_detach == "all":  # test hook only
            theta = [t.detach() for t in theta]
        fast = {
            n: adam_first_step(t, g, self.lr, self.weight_decay)
            for n, t, g in zip(names, theta, grads)
        }

        # ---- 3. Meta-test (Alg. 1 lines 9-12, Eq. 5-7, 10) at Theta', train mode -------------
        # (paper silent; reading R8: the copied model's running statistics are discarded)
        scratch = {k: v.clone() for k, v in self.buffers.items()}
        images_t, pids_t = batches[meta_test]
        pids_t = pids_t.to(torch.long)
        f_t = backbone(
            images_t.to(torch.float64), fast, scratch, last_stride=self.last_stride, train=True
        )  # F_T: the neck input (Sec. 3.4: MetaBN replaces the last BN)
        memory_t = self.memories[meta_test]
        losses_mem_t: list[Tensor] = []
        for i, (mu_i, var_i) in enumerate(stats):  # N_S - 1 mixtures (R7, R11)
            mixed = meta_bn(
                f_t, mu_i, var_i, lambdas[i], noise[i], fast["neck.weight"], self.neck_bias
            )
            f_mix = F.normalize(mixed, dim=1)  # (paper silent; reading R2: L2-normalised)
            losses_mem_t.append(memory_loss(f_mix, memory_t, pids_t, self.temp))  # Eq. 3
        # Eq. 10: L_Tri(X_T; Theta') + 1/(N_S - 1) sum_k L_M(f_T^k, M_T; Theta')
        loss_mte = triplet_loss(f_t, pids_t, self.margin) + torch.stack(losses_mem_t).mean()
        return loss_mtr, loss_mte, mem_feats, fast

    def train_iteration(
        self,
        batches: list[tuple[Tensor, Tensor]],
        meta_test: int,
        lambdas: Tensor,
        noise: Tensor,
    ) -> dict[str, float]:
        """Algorithm 1, one iteration (lines 2-16) plus the memory update of Sec. 3.3 (Eq. 2)."""
        if not self.memories:
            raise RuntimeError("call init_memories first (Sec. 3.3 Memory Initialization)")
        loss_mtr, loss_mte, mem_feats, _ = self.meta_objective(batches, meta_test, lambdas, noise)

        # ---- 4. Meta optimisation (Alg. 1 lines 13-16) ---------------------------------------
        theta = list(self.params.values())
        # line 15 / Eq. 1: g = grad_Theta (L_mtr(Theta) + L_mte(Theta')), high-order terms kept
        grads = torch.autograd.grad(loss_mtr + loss_mte, theta)
        self.optimizer.zero_grad(set_to_none=True)
        for t, g in zip(theta, grads):
            t.grad = g.detach()
        self.optimizer.step()  # line 16: Theta <- Adam(g, Theta, beta)

        # ---- 5. Memory update (Sec. 3.3 "Memory Updating", Eq. 2) -----------------------------
        self._update_memories(mem_feats)
        return {
            "loss_meta_train": float(loss_mtr.detach()),
            "loss_meta_test": float(loss_mte.detach()),
        }

    @torch.no_grad()
    def _update_memories(self, mem_feats: list[tuple[int, Tensor, Tensor]]) -> None:
        # (paper silent; reading R10: meta-train domains only, features of step 1 at Theta,
        # meta-train order; the meta-test memory is left as it is this iteration)
        for d, feats, pids in mem_feats:
            memory = self.memories[d]
            for k in torch.unique(pids).tolist():
                batch_mean = feats[pids == k].mean(dim=0)  # 1/|B_k| sum_{x in B_k} f(x)
                # Eq. 2: M[k] <- m M[k] + (1 - m) mean
                slot = self.momentum * memory[k] + (1.0 - self.momentum) * batch_mean
                # NOT IN THE PAPER: unit-length renormalisation (the library's documented addition)
                memory[k] = F.normalize(slot, dim=0)
