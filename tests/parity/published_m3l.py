"""Float64 transcription of one training iteration of the authors' published M3L code.

What this is
------------
An independent, test-only reference for the parity tests: plain PyTorch (no ``metareid``
import), float64, written from a reading of the published repository
``HeliosZhao/M3L`` (commit f2faeab3749951e08548ef29276f23149b1a2738; ``main.py`` read at
68ec0c02c26426cd72b3a3381778b54e3d51d28a, byte-identical to the local copy used for the line
numbers).  It reproduces, for a *tiny* network with the published forward structure,

* the memory initialisation of ``main.py:157-183`` (features from
  ``reid/evaluators.py:24-39`` ``extract_features``: ``model.eval()``, ``torch.no_grad()``),
* one iteration of ``Trainer.train`` (``reid/trainers.py:38-116``) with ``metaTestID`` given
  by the caller instead of ``np.random.choice`` (trainers.py:39) and the random numbers of the
  MixUpBatchNorm1d meta-test forward given by the caller (:class:`Draw`).

Citations below name the file without its directory: ``trainers.py`` = ``reid/trainers.py``,
``MetaModules.py`` / ``resMeta.py`` / ``memory.py`` = ``reid/models/...``, ``triplet.py`` =
``reid/loss/triplet.py``, ``evaluators.py`` = ``reid/evaluators.py``.  Line numbers are those of
the published files.

The network
-----------
A ResNet-10 in the layout of ``MetaResNetBase`` (resMeta.py:84-124), one published
``BasicBlock`` (resMeta.py:52-82) per stage, and the published ``MetaResNet`` head
(resMeta.py:127-209) with ``num_features=0``, ``norm=True``, ``BNNeck=True`` (``--BNNeck``
defaults to False, main.py:254-255, but the trainer unpacks two outputs, trainers.py:65,
87, 112, so the published runs set it), ``dropout=0``:

* stem: conv 7x7/2 pad 3 -> MetaBatchNorm2d -> max-pool 3/2 pad 1, **no ReLU**
  (resMeta.py:88-90, 114-117);
* stages 64, 128/2, 256/2, 512/``last_stride``; a 1x1 conv + BN downsample where the stride or
  the width changes (resMeta.py:96-112);
* BasicBlock: conv3x3(stride) -> bn -> relu -> conv3x3 -> bn -> (+ downsample(x) or x) -> relu
  (resMeta.py:67-82);
* head: global average pooling -> flatten = ``tri_features`` -> ``feat_bn``
  (MixUpBatchNorm1d, MetaModules.py:335-411) -> L2 normalisation (resMeta.py:169-209).

Every 2-d BN is ``MetaBatchNorm2d`` (MetaModules.py:226-257): ``F.batch_norm`` with
``momentum=0.1, eps=1e-5`` (the ``nn.BatchNorm2d`` defaults it copies, MetaModules.py:229-233);
it never increments ``num_batches_tracked``.  Parameter names are torchvision style (the
published names carry a ``base.`` prefix, resMeta.py:152; the prefix is dropped here).

Initial state: parameters from the caller; every running mean 0 and running variance 1,
because the published ``copyWeight`` copies the parameters only (MetaModules.py:126-148, called
by resMeta.py:128-131) and the buffers keep their constructor values (MetaModules.py:241-244,
275-278, 341-344).

``nn.DataParallel`` semantics encoded (``num_gpus``)
-----------------------------------------------------
The authors wrap the model (main.py:95), each memory (main.py:180) and the inner-step copy
(trainers.py:85) in ``nn.DataParallel``.  Facts taken from torch's own source:

* ``torch/nn/parallel/data_parallel.py`` ``DataParallel.forward``: with one device the module
  is called directly; otherwise scatter -> ``replicate(module, device_ids[:len(inputs)])`` ->
  ``parallel_apply`` -> gather.  ``num_gpus=1`` is therefore the plain run.
* ``scatter_gather.py`` / ``_functions.py`` (``Scatter``) / ``comm.py`` ``scatter``: each input
  tensor is cut along dim 0 with ``tensor.chunk(num_gpus)`` (64 -> 22/22/20, 8 -> 3/3/2;
  ``chunk`` can give fewer chunks than ``num_gpus``, e.g. 4 -> 2/2 or 6 over 4 -> 2/2/2);
  non-tensor kwargs (``MTE``, ``save_index``) are copied to every replica. With fewer
  chunks than GPUs, ``scatter_kwargs`` pads the missing inputs with ``()`` for the calls
  that pass keyword arguments (trainers.py:65, 87), so the published code would call a
  spare replica without ``x`` and raise ``TypeError``; here fewer replicas run instead
  (INFERENCE: the only sensible reading; the parity tests use 16 -> 6/6/4, never this).
* ``replicate.py`` + ``torch/csrc/cuda/comm.cpp`` ``broadcast_coalesced`` (``outputs[0] =
  tensors``): replica 0 holds the module's own buffer tensors, replicas 1.. hold copies made
  before any replica runs.  In-place buffer updates (running statistics inside
  ``F.batch_norm``, ``num_batches_tracked += 1``, ``meta_mean1.copy_(...)``) therefore persist
  from replica 0's chunk only.  Every replica reads the same buffer values at the start.
  The published "parameters" are buffers with ``requires_grad`` (MetaModules.py:212, 238-239);
  ``replicate`` broadcasts those with the differentiable ``Broadcast`` function, so gradients
  reach the parameters from every replica: here all chunks simply use the same tensors.
* gather (``scatter_gather.py`` ``gather_map``): tensors are concatenated along dim 0 in
  replica order; tuples and lists are gathered element-wise (mixture 1 of all replicas, then
  mixture 2); 0-d outputs (``Gather`` in ``_functions.py``) are unsqueezed into a vector of one
  value per replica, which the published ``.mean()`` (trainers.py:67, 92, 96) averages: the
  memory loss is the mean of the per-chunk mean cross-entropies.
* ``np.random.beta`` and ``Normal.sample`` run once per replica: replica ``c`` consumes
  ``draws[c]``.
* The triplet criterion is not wrapped (main.py:192-193): it runs on the gathered outputs.
  ``MomentumUpdate`` is called on ``.module`` (trainers.py:113): not wrapped.
* Eval mode (memory initialisation) is per sample, so chunking makes no difference; it is not
  emulated there.

Assumptions and inferences (marked as such)
-------------------------------------------
* INFERENCE (layer4 stride): the published backbone is a Bottleneck ResNet-50 whose last
  stride is set to 1 on ``conv2`` and on the downsample conv (resMeta.py:153-154).  In a
  BasicBlock the stride is carried by ``conv1`` and the downsample conv (resMeta.py:58-59,
  100); here both take ``last_stride`` (default 1), which is what the published assignment
  intends for this block type.
* INFERENCE (dtype): the published code runs in float32 and resets the meta statistics with
  ``.float()`` tensors (trainers.py:43-46); everything here is float64, including those.
* INFERENCE (sampling): ``Normal(meta_mean, meta_var).sample`` (MetaModules.py:362-365) uses
  the recorded *variance* as the scale; its value is written ``meta_mean + meta_var * noise``
  with the caller's standard-normal ``noise`` (which is what ``torch.normal`` computes from a
  standard draw).  Argument validation of ``Normal`` (a zero variance in a dead channel) is not
  reproduced.
* INFERENCE (meta lr): ``metaLR`` is read once per epoch from ``param_groups[0]['lr']``
  (trainers.py:32); here it is read at every call of :meth:`PublishedM3L.train_iteration`.
* INFERENCE (identities): the memory rows follow ``sorted(pid)`` (main.py:171) while the
  update and the loss index them by pid (memory.py:46-47; memory.py:56 with the targets): the
  pids of each domain are required to be exactly ``0..C-1``.
* The meta-test BN type is ``'sample'`` (the ``--BNtype`` default, main.py:258); the triplet
  loss is ``TripletLoss(margin, num_instances, False)`` (main.py:192), i.e. ``use_semi=False``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

BN_MOMENTUM = 0.1  # nn.BatchNorm2d/1d default copied by MetaModules.py:229-233, :336
BN_EPS = 1e-5  # idem
FEAT_DIM = 512  # the tiny backbone's channels (the published ResNet-50: 2048, resMeta.py:156, 163)
SOURCE_COUNT = 3  # three source domains (main.py:128, 139)
META_KEYS = ("meta_mean1", "meta_var1", "meta_mean2", "meta_var2")  # MetaModules.py:341-344

# (stage, in_planes, planes, stride); None = last_stride (resMeta.py:91-94, 153-154)
_STAGES = (
    ("layer1", 64, 64, 1),
    ("layer2", 64, 128, 2),
    ("layer3", 128, 256, 2),
    ("layer4", 256, 512, None),
)


def _has_downsample(in_planes: int, planes: int, stride: int | None) -> bool:
    # resMeta.py:98: stride != 1 or inplanes != planes * expansion (expansion 1, resMeta.py:53).
    # layer4 always has one (256 != 512), whatever its stride.
    return stride != 1 or in_planes != planes


def parameter_shapes() -> dict[str, tuple[int, ...]]:
    """Names and shapes of the trained parameters, in the published ``named_params`` order.

    ``named_params`` (MetaModules.py:31-49) yields each Meta module's ``named_leaves``
    (weight, then bias if not None; MetaModules.py:222-223, 256-257, 288-289) walking
    ``named_children`` in construction order: conv1, bn1, layer1..4 (each block: conv1, bn1,
    conv2, bn2, downsample.0, downsample.1; resMeta.py:59-64, 99-102), then feat_bn
    (resMeta.py:165).  The neck bias is a leaf, hence trained.
    """
    shapes: dict[str, tuple[int, ...]] = {
        "conv1.weight": (64, 3, 7, 7),  # resMeta.py:88
        "bn1.weight": (64,),  # resMeta.py:89
        "bn1.bias": (64,),
    }
    for stage, cin, planes, stride in _STAGES:
        p = f"{stage}.0"
        shapes[f"{p}.conv1.weight"] = (planes, cin, 3, 3)  # resMeta.py:59
        shapes[f"{p}.bn1.weight"] = (planes,)  # resMeta.py:60
        shapes[f"{p}.bn1.bias"] = (planes,)
        shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)  # resMeta.py:62
        shapes[f"{p}.bn2.weight"] = (planes,)  # resMeta.py:63
        shapes[f"{p}.bn2.bias"] = (planes,)
        if _has_downsample(cin, planes, stride):
            shapes[f"{p}.downsample.0.weight"] = (planes, cin, 1, 1)  # resMeta.py:100
            shapes[f"{p}.downsample.1.weight"] = (planes,)  # resMeta.py:101
            shapes[f"{p}.downsample.1.bias"] = (planes,)
    shapes["feat_bn.weight"] = (FEAT_DIM,)  # resMeta.py:165-167
    shapes["feat_bn.bias"] = (FEAT_DIM,)
    return shapes


def bn2d_prefixes() -> list[str]:
    """Every MetaBatchNorm2d of the network (resMeta.py:60, 63, 89, 101)."""
    out = ["bn1"]
    for stage, cin, planes, stride in _STAGES:
        out += [f"{stage}.0.bn1", f"{stage}.0.bn2"]
        if _has_downsample(cin, planes, stride):
            out.append(f"{stage}.0.downsample.1")
    return out


def initial_buffers() -> dict[str, Tensor]:
    """Buffers as constructed: mean 0, var 1, count 0 (MetaModules.py:241-244, 275-278, 341-344).

    ``copyWeight`` never touches them (MetaModules.py:126-148).
    """
    buffers: dict[str, Tensor] = {}
    for prefix in [*bn2d_prefixes(), "feat_bn"]:
        width = FEAT_DIM if prefix == "feat_bn" else _bn_width(prefix)
        buffers[f"{prefix}.running_mean"] = torch.zeros(width, dtype=torch.float64)
        buffers[f"{prefix}.running_var"] = torch.ones(width, dtype=torch.float64)
        buffers[f"{prefix}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    for key in META_KEYS:
        buffers[f"feat_bn.{key}"] = torch.zeros(FEAT_DIM, dtype=torch.float64)
    return buffers


def _bn_width(prefix: str) -> int:
    if prefix == "bn1":
        return 64
    stage = prefix.split(".")[0]
    return {s: planes for s, _, planes, _ in _STAGES}[stage]


@dataclass
class Draw:
    """Random numbers one replica's MixUpBatchNorm1d consumes in one meta-test forward."""

    lam: float  # the np.random.beta(1., 1.) value (MetaModules.py:366)
    noise1: Tensor  # (B_c, 512) standard normal: sample1 = meta_mean1 + meta_var1 * noise1
    noise2: Tensor  # (B_c, 512) likewise for distribution 2


# ----------------------------------------------------------------------------------------
# Layers of one replica
# ----------------------------------------------------------------------------------------


def _bn2d(x: Tensor, params: dict, buffers: dict, prefix: str, training: bool) -> Tensor:
    """MetaBatchNorm2d.forward (MetaModules.py:250-254).

    In training mode ``F.batch_norm`` normalises with the batch (biased) statistics and updates
    the running buffers *in place* (unbiased variance, momentum 0.1); ``num_batches_tracked`` is
    not touched by the functional call.
    """
    return F.batch_norm(
        x,
        buffers[f"{prefix}.running_mean"],
        buffers[f"{prefix}.running_var"],
        params[f"{prefix}.weight"],
        params[f"{prefix}.bias"],
        training,  # self.training or not track_running_stats (track_running_stats=True)
        BN_MOMENTUM,
        BN_EPS,
    )


def _basic_block(
    x: Tensor, params: dict, buffers: dict, prefix: str, stride: int, downsample: bool, training
) -> Tensor:
    """BasicBlock.forward (resMeta.py:67-82); MetaConv2d convolutions (MetaModules.py:219-220)."""
    out = F.conv2d(x, params[f"{prefix}.conv1.weight"], None, stride, 1)  # resMeta.py:59, 69
    out = _bn2d(out, params, buffers, f"{prefix}.bn1", training)  # resMeta.py:70
    out = F.relu(out)  # resMeta.py:71
    out = F.conv2d(out, params[f"{prefix}.conv2.weight"], None, 1, 1)  # resMeta.py:62, 73
    out = _bn2d(out, params, buffers, f"{prefix}.bn2", training)  # resMeta.py:74
    if downsample:  # resMeta.py:76-77, downsample = conv1x1(stride) + BN (resMeta.py:99-102)
        identity = F.conv2d(x, params[f"{prefix}.downsample.0.weight"], None, stride, 0)
        identity = _bn2d(identity, params, buffers, f"{prefix}.downsample.1", training)
    else:
        identity = x  # resMeta.py:68
    return F.relu(out + identity)  # resMeta.py:79-80


def _mixup_bn1d(
    x: Tensor,
    params: dict,
    buffers: dict,
    *,
    training: bool,
    mte: str,
    save_index: int,
    draw: Draw | None,
) -> Tensor | list[Tensor]:
    """MixUpBatchNorm1d.forward (MetaModules.py:347-411) on one replica's chunk."""
    weight, bias = params["feat_bn.weight"], params["feat_bn.bias"]
    factor = 0.0  # MetaModules.py:348
    if training:  # MetaModules.py:350-356 (track_running_stats=True, momentum=0.1)
        buffers["feat_bn.num_batches_tracked"] += 1  # in place: persists for replica 0 only
        factor = BN_MOMENTUM

    if training and mte == "sample":
        # MetaModules.py:360-380: mix the input with samples of the two recorded meta-train
        # distributions; running mean/var untouched, nothing recorded.
        if draw is None:
            raise ValueError("MTE='sample' needs a Draw")
        n = x.size(0)
        if draw.noise1.shape != (n, FEAT_DIM) or draw.noise2.shape != (n, FEAT_DIM):
            raise ValueError(f"noise must have shape {(n, FEAT_DIM)}")
        with torch.no_grad():  # Distribution.sample runs under no_grad (MetaModules.py:362-365)
            sample1 = buffers["feat_bn.meta_mean1"] + buffers["feat_bn.meta_var1"] * draw.noise1
            sample2 = buffers["feat_bn.meta_mean2"] + buffers["feat_bn.meta_var2"] * draw.noise2
        lam = float(draw.lam)  # MetaModules.py:366
        outputs = []
        for sample in (sample1, sample2):
            mix = lam * sample + (1 - lam) * x  # MetaModules.py:367-368
            mean = mix.mean(dim=0)  # MetaModules.py:370, 372
            var = mix.var(dim=0, correction=0)  # biased (MetaModules.py:371, 373)
            out = (mix - mean[None, :]) / torch.sqrt(var[None, :] + BN_EPS)  # :375-376
            out = out * weight[None, :] + bias[None, :]  # MetaModules.py:377-379
            outputs.append(out)
        return outputs  # MetaModules.py:380

    if training:
        # MetaModules.py:382-401: batch statistics (biased var) for the normalisation.
        mean = x.mean(dim=0)
        var = x.var(dim=0, correction=0)
        n = x.numel() / x.size(1)  # MetaModules.py:386 (a float)
        with torch.no_grad():  # MetaModules.py:388-401
            running_mean = factor * mean + (1 - factor) * buffers["feat_bn.running_mean"]
            # running var from the unbiased var (MetaModules.py:391-393)
            running_var = factor * var * n / (n - 1) + (1 - factor) * buffers["feat_bn.running_var"]
            buffers["feat_bn.running_mean"].copy_(running_mean)  # MetaModules.py:394
            buffers["feat_bn.running_var"].copy_(running_var)  # MetaModules.py:395
            if save_index == 1:  # MetaModules.py:396-398 (biased var recorded)
                buffers["feat_bn.meta_mean1"].copy_(mean)
                buffers["feat_bn.meta_var1"].copy_(var)
            elif save_index == 2:  # MetaModules.py:399-401
                buffers["feat_bn.meta_mean2"].copy_(mean)
                buffers["feat_bn.meta_var2"].copy_(var)
    else:  # MetaModules.py:403-405
        mean = buffers["feat_bn.running_mean"]
        var = buffers["feat_bn.running_var"]

    out = (x - mean[None, :]) / torch.sqrt(var[None, :] + BN_EPS)  # MetaModules.py:407
    return out * weight[None, :] + bias[None, :]  # MetaModules.py:408-409


def forward_replica(
    params: dict,
    buffers: dict,
    images: Tensor,
    *,
    training: bool,
    last_stride: int = 1,
    mte: str = "",
    save_index: int = 0,
    draw: Draw | None = None,
):
    """``MetaResNet.forward`` (resMeta.py:169-209) of one replica on its own chunk.

    Returns, as the published head does with ``norm=True, BNNeck=True``:
    train, MTE != 'sample': ``(normalize(neck), pooled)`` (resMeta.py:198-207);
    train, MTE == 'sample': ``([normalize(out1), normalize(out2)], pooled)`` (resMeta.py:187-194);
    eval: ``normalize(neck with running statistics)`` (resMeta.py:183-185).
    """
    # MetaResNetBase.forward (resMeta.py:114-124)
    x = F.conv2d(images, params["conv1.weight"], None, 2, 3)  # resMeta.py:88, 115
    x = _bn2d(x, params, buffers, "bn1", training)  # resMeta.py:89, 116
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)  # resMeta.py:90, 117 (no ReLU)
    for stage, cin, planes, stride in _STAGES:  # resMeta.py:119-122
        s = last_stride if stride is None else stride  # INFERENCE: resMeta.py:153-154
        x = _basic_block(
            x, params, buffers, f"{stage}.0", s, _has_downsample(cin, planes, stride), training
        )
    # MetaResNet head
    x = F.adaptive_avg_pool2d(x, 1)  # resMeta.py:155, 171
    pooled = x.view(x.size(0), -1)  # resMeta.py:172; tri_features (resMeta.py:181)
    neck = _mixup_bn1d(  # resMeta.py:179-180 (no embedding)
        pooled, params, buffers, training=training, mte=mte, save_index=save_index, draw=draw
    )
    if not training:  # resMeta.py:183-185
        return F.normalize(neck)
    if isinstance(neck, list):  # resMeta.py:187-194 (norm=True, BNNeck=True)
        return [F.normalize(o) for o in neck], pooled
    return F.normalize(neck), pooled  # resMeta.py:198-207 (dropout=0)


# ----------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------


def memory_loss(features: Tensor, targets: Tensor, memory: Tensor, temp: float) -> Tensor:
    """``MemoryClassifier.forward`` (memory.py:50-57) on one replica's chunk.

    ``MC`` (memory.py:7-25) computes ``inputs @ features.T`` and passes gradient to the inputs
    only (memory.py:19-25): the memory is a constant, hence ``detach``.
    """
    sim = features.mm(memory.detach().t())  # memory.py:14, 52
    sim = sim / temp  # memory.py:54
    return F.cross_entropy(sim, targets)  # memory.py:56


def triplet_loss(inputs: Tensor, targets: Tensor, margin: float) -> Tensor:
    """``TripletLoss.forward`` with ``use_semi=False`` (triplet.py:19-57; main.py:192).

    Euclidean distances |x|^2 + |y|^2 - 2 x.y clamped at 1e-12 then sqrt (triplet.py:26-29);
    for every anchor the max distance over all samples with its label, itself included, and the
    min over the other labels (triplet.py:31, 41-44); ``MarginRankingLoss(margin)`` with y = 1,
    mean over the anchors (triplet.py:15, 51-55).
    """
    n = inputs.size(0)
    sq = torch.pow(inputs, 2).sum(dim=1, keepdim=True).expand(n, n)  # triplet.py:26
    dist = sq + sq.t()  # triplet.py:27
    dist = torch.addmm(dist, inputs, inputs.t(), beta=1, alpha=-2)  # triplet.py:28
    dist = dist.clamp(min=1e-12).sqrt()  # triplet.py:29
    same = targets.expand(n, n).eq(targets.expand(n, n).t())  # triplet.py:31
    dist_ap = torch.stack([torch.max(dist[i][same[i]]) for i in range(n)])  # triplet.py:43
    dist_an = torch.stack([torch.min(dist[i][~same[i]]) for i in range(n)])  # triplet.py:44
    y = torch.ones_like(dist_an)  # triplet.py:51-54
    return F.margin_ranking_loss(dist_an, dist_ap, y, margin=margin)  # triplet.py:55


# ----------------------------------------------------------------------------------------
# The published training step
# ----------------------------------------------------------------------------------------


class PublishedM3L:
    """State of the published training (model, memories, optimizer) for the tiny network."""

    def __init__(
        self,
        weights: dict[str, Tensor],
        *,
        lr: float,
        num_gpus: int = 1,
        last_stride: int = 1,
        weight_decay: float = 5e-4,
        temp: float = 0.05,
        momentum: float = 0.2,
        margin: float = 0.3,
    ) -> None:
        shapes = parameter_shapes()
        if set(weights) != set(shapes):
            missing = sorted(set(shapes) - set(weights))
            extra = sorted(set(weights) - set(shapes))
            raise KeyError(f"weights: missing {missing}, unexpected {extra}")
        for name, shape in shapes.items():
            if tuple(weights[name].shape) != shape:
                raise ValueError(f"{name}: shape {tuple(weights[name].shape)} != {shape}")
        if num_gpus < 1:
            raise ValueError("num_gpus must be >= 1")
        # Leaves, in the published named_params order (MetaModules.py:21-23, 31-49).
        self.params: dict[str, Tensor] = {
            name: weights[name].detach().to(torch.float64).clone().requires_grad_(True)
            for name in shapes
        }
        self.buffers: dict[str, Tensor] = initial_buffers()
        self.memories: list[Tensor] = []
        self.num_gpus = num_gpus
        self.last_stride = last_stride
        self.weight_decay = weight_decay
        self.temp = temp  # main.py:176-177, memory.py:54
        self.momentum = momentum  # main.py:176-177, memory.py:43-47
        self.margin = margin  # main.py:192
        # One group per parameter (main.py:186), Adam with lr and weight decay (main.py:188).
        self.optimizer = torch.optim.Adam(
            [{"params": [p]} for p in self.params.values()], lr=lr, weight_decay=weight_decay
        )

    # -- nn.DataParallel emulation ---------------------------------------------------------

    def _replica_buffers(self, count: int) -> list[dict[str, Tensor]]:
        """replicate.py + comm.cpp broadcast_coalesced: replica 0 gets the module's own buffer
        tensors, replicas 1.. copies taken before any replica runs."""
        return [self.buffers] + [
            {k: v.clone() for k, v in self.buffers.items()} for _ in range(1, count)
        ]

    def model_forward(
        self,
        params: dict[str, Tensor],
        images: Tensor,
        *,
        training: bool,
        mte: str = "",
        save_index: int = 0,
        draws: list[Draw] | None = None,
    ):
        """``DataParallel(model)(images, MTE=..., save_index=...)`` in train mode.

        Scatter with ``chunk`` (scatter_gather.py), replica ``c`` runs on chunk ``c`` with
        ``draws[c]``, outputs gathered by concatenation, lists element-wise.
        """
        chunks = images.chunk(self.num_gpus)
        if draws is not None and len(draws) != len(chunks):
            raise ValueError(f"{len(chunks)} replicas need {len(chunks)} draws, got {len(draws)}")
        replica_buffers = self._replica_buffers(len(chunks))
        outs = [
            forward_replica(
                params,
                replica_buffers[c],
                chunk,
                training=training,
                last_stride=self.last_stride,
                mte=mte,
                save_index=save_index,
                draw=None if draws is None else draws[c],
            )
            for c, chunk in enumerate(chunks)
        ]
        if not training:
            return torch.cat(outs)
        first, pooled = zip(*outs)
        pooled = torch.cat(pooled)
        if isinstance(first[0], list):  # gather_map: element-wise over the list
            return [torch.cat([o[k] for o in first]) for k in range(len(first[0]))], pooled
        return torch.cat(first), pooled

    def memory_forward(self, domain: int, features: Tensor, targets: Tensor) -> Tensor:
        """``self.memory[domain](features, targets).mean()`` with the DataParallel memory
        (main.py:180; trainers.py:67, 92, 96): mean of the per-chunk mean cross-entropies."""
        memory = self.memories[domain]
        losses = [
            memory_loss(f, y, memory, self.temp)
            for f, y in zip(features.chunk(self.num_gpus), targets.chunk(self.num_gpus))
        ]
        return torch.stack(losses).mean()  # Gather of 0-d -> vector; .mean()

    # -- memory initialisation (main.py:157-183) --------------------------------------------

    @torch.no_grad()
    def extract_features(self, images: Tensor) -> Tensor:
        """evaluators.py:24-39: ``model.eval()`` forward under ``no_grad``; eval mode is per
        sample, so the DataParallel chunking is not emulated."""
        return forward_replica(
            self.params, self.buffers, images, training=False, last_stride=self.last_stride
        )

    def init_memories(self, train_sets: list[tuple[Tensor, Tensor]]) -> None:
        """main.py:157-183: per domain, mean eval-mode feature per identity (sorted pids),
        L2-normalised, as the memory of that domain."""
        self.memories = []
        for images, pids in train_sets:  # main.py:160
            features = self.extract_features(images)  # main.py:165
            labels = sorted(set(pids.tolist()))
            if labels != list(range(len(labels))):  # INFERENCE: pids are 0..C-1
                raise ValueError("pids of a domain must be exactly 0..C-1")
            # main.py:166-171: per pid, the mean of its features (image order kept)
            centers = torch.stack([features[pids == pid].mean(0) for pid in labels], 0)
            self.memories.append(F.normalize(centers, dim=1))  # main.py:172-173, 178

    # -- one iteration (trainers.py:38-116) -------------------------------------------------

    def reset_meta_statistics(self) -> None:
        """trainers.py:40-46: the neck's meta_mean/meta_var replaced by zeros."""
        for key in META_KEYS:
            self.buffers[f"feat_bn.{key}"] = torch.zeros(FEAT_DIM, dtype=torch.float64)

    def meta_train_loss(self, batches: list[tuple[Tensor, Tensor]], meta_test: int) -> Tensor:
        """trainers.py:50-71."""
        domains = [d for d in range(len(batches)) if d != meta_test]  # trainers.py:50-51
        loss_meta_train: Tensor | float = 0.0  # trainers.py:57
        save_index = 0  # trainers.py:58
        for t in domains:  # trainers.py:59
            save_index += 1  # trainers.py:62
            inputs, targets = batches[t]  # trainers.py:61, 63
            f_out, tri_features = self.model_forward(  # trainers.py:65
                self.params, inputs, training=True, mte="", save_index=save_index
            )
            loss_mtr_tri = triplet_loss(tri_features, targets, self.margin)  # trainers.py:66
            loss_s = self.memory_forward(t, f_out, targets)  # trainers.py:67
            loss_meta_train = loss_meta_train + loss_s + loss_mtr_tri  # trainers.py:69
        return loss_meta_train / (len(batches) - 1)  # trainers.py:71

    def inner_update(
        self,
        grads: dict[str, Tensor],
        lr_inner: float,
        beta1: float = 0.9,
        beta2: float = 0.999,
        weight_decay: float = 5e-4,
    ) -> dict[str, Tensor]:
        """The new model's parameters (trainers.py:75-81).

        ``copyModel`` (MetaModules.py:103-124, same_var=False): every parameter of the new
        model is a fresh leaf ``param.data.clone()`` with ``requires_grad`` (MetaModules.py:
        116-119), i.e. cut from theta.  ``update_params(solver='adam')`` (MetaModules.py:59-73)
        with zero moments then moves it with the meta-train gradient (trainers.py:80), whose
        graph (``create_graph=True``, trainers.py:74) is the only path back to theta.
        The weight decay is the published default (MetaModules.py:52; trainers.py:79-81 passes
        none), applied to the leaf copy (MetaModules.py:66).
        """
        new_params: dict[str, Tensor] = {}
        for name, theta in self.params.items():  # zip(named_params, grads), MetaModules.py:60
            param_t = theta.detach().clone().requires_grad_(True)  # MetaModules.py:118
            grad = grads[name] + weight_decay * param_t  # MetaModules.py:66
            exp_avg = (1 - beta1) * grad  # zero moment (MetaModules.py:62-63, 67)
            exp_avg_sq = (1 - beta2) * grad * grad  # MetaModules.py:68
            exp_avg_sq = exp_avg_sq + 1e-8  # MetaModules.py:69
            denom = exp_avg_sq.sqrt() / math.sqrt(1 - beta2) + 1e-8  # MetaModules.py:65, 70
            step_size = lr_inner / (1 - beta1)  # MetaModules.py:64, 71
            new_params[name] = param_t + (-step_size) * (exp_avg / denom)  # MetaModules.py:72
        return new_params

    def meta_test_loss(
        self, new_params: dict[str, Tensor], images: Tensor, pids: Tensor, meta_test: int, draws
    ) -> Tensor:
        """trainers.py:85-99.

        The new model's buffers share storage with the model's (MetaModules.py:120-124:
        ``state_dict()`` tensors wrapped by ``Variable``), so the train-mode forward of the
        DataParallel copy (trainers.py:85-87) updates the model's BatchNorm2d running
        statistics and the neck's ``num_batches_tracked`` (from replica 0).
        """
        f_test, mte_tri = self.model_forward(  # trainers.py:87, MTE=args.BNtype='sample'
            new_params, images, training=True, mte="sample", draws=draws
        )
        loss_meta_test: Tensor | float = 0.0  # trainers.py:89
        for feature in f_test:  # trainers.py:90-92
            loss_meta_test = loss_meta_test + self.memory_forward(meta_test, feature, pids)
        loss_meta_test = loss_meta_test / len(f_test)  # trainers.py:93
        loss_mte_tri = triplet_loss(mte_tri, pids, self.margin)  # trainers.py:98
        return loss_meta_test + loss_mte_tri  # trainers.py:99

    @torch.no_grad()
    def update_memories(self, batches: list[tuple[Tensor, Tensor]]) -> None:
        """trainers.py:109-113: train-mode forward (MTE='', save_index=0) of every source batch
        through the DataParallel model, then ``MomentumUpdate`` (memory.py:43-47) per sample in
        batch order: ``M[y] = m M[y] + (1 - m) x``, ``M[y] /= |M[y]|``."""
        for m_ind in range(len(batches)):  # trainers.py:110
            imgs, pids = batches[m_ind]  # trainers.py:111
            f_new, _ = self.model_forward(self.params, imgs, training=True)  # trainers.py:112
            memory = self.memories[m_ind]
            for x, y in zip(f_new, pids.tolist()):  # memory.py:45
                memory[y] = self.momentum * memory[y] + (1.0 - self.momentum) * x  # memory.py:46
                memory[y] = memory[y] / memory[y].norm()  # memory.py:47

    def train_iteration(
        self, batches: list[tuple[Tensor, Tensor]], meta_test: int, draws: list[Draw]
    ) -> dict[str, float]:
        """One iteration of ``Trainer.train`` (trainers.py:38-116) with ``metaTestID=meta_test``."""
        if len(batches) != SOURCE_COUNT or len(self.memories) != SOURCE_COUNT:
            raise ValueError("exactly 3 source domains (and their memories) are expected")
        if not 0 <= meta_test < SOURCE_COUNT:
            raise ValueError("meta_test must be 0, 1 or 2")
        meta_lr = self.optimizer.param_groups[0]["lr"]  # trainers.py:32
        self.reset_meta_statistics()  # trainers.py:40-46
        test_inputs, test_pids = batches[meta_test]  # trainers.py:53, 56

        # Meta-train (trainers.py:57-71)
        loss_meta_train = self.meta_train_loss(batches, meta_test)

        # Inner step (trainers.py:73-81)
        names = list(self.params)
        grad_info = torch.autograd.grad(  # trainers.py:74
            loss_meta_train, [self.params[n] for n in names], create_graph=True
        )
        new_params = self.inner_update(dict(zip(names, grad_info)), meta_lr)  # trainers.py:75-81
        del grad_info  # trainers.py:83

        # Meta-test (trainers.py:85-99)
        loss_meta_test = self.meta_test_loss(new_params, test_inputs, test_pids, meta_test, draws)

        # Outer step (trainers.py:101-107): the model's parameters only
        loss_final = loss_meta_train + loss_meta_test  # trainers.py:101
        self.optimizer.zero_grad()  # trainers.py:105
        loss_final.backward()  # trainers.py:106
        self.optimizer.step()  # trainers.py:107

        # Memory update (trainers.py:109-113)
        self.update_memories(batches)
        return {
            "loss_meta_train": float(loss_meta_train.item()),  # trainers.py:102
            "loss_meta_test": float(loss_meta_test.item()),  # trainers.py:103
        }
