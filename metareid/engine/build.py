"""Building a training run from its :class:`~metareid.engine.TrainConfig`.

Everything the :class:`~metareid.engine.Trainer` trains with is made here, in a fixed
order (the order fixes the random numbers the model's initialisation draws): the model
(:func:`build_model_from_config`), then :func:`build_components` for the memories, the
:class:`~metareid.engine.M3LObjective`, the optimiser, the learning-rate schedule and the
:class:`~metareid.MetaLearner`. The components are usable without the trainer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from metareid.config import TrainConfig
from metareid.data import MultiSourceDataset
from metareid.distributed import RankGroup
from metareid.engine.chunks import BatchSplit, DataParallelSplit, IdentitySplit
from metareid.engine.objective import M3LObjective
from metareid.engine.schedule import warmup_multistep_scheduler
from metareid.engine.step import M3LStep
from metareid.layers.metabn import MetaBN
from metareid.losses.memory_id import MemoryIDLoss
from metareid.losses.triplet import HardTripletLoss
from metareid.memory.bank import MemoryBank
from metareid.meta.learner import MetaLearner, missing_second_derivative
from metareid.models import ReIDModel, input_config, is_external_arch, model_from_config

__all__ = [
    "TrainingComponents",
    "build_components",
    "build_model_from_config",
    "build_split",
    "check_second_order",
    "optimizer_groups",
    "resolve_device",
    "resolve_input",
    "seed_everything",
    "stored_config",
]

#: Offsets of the seeds of the single-process random streams (``seed + offset``).
META_TEST_SEED_OFFSET = 1
METABN_SEED_OFFSET = 2


def resolve_device(spec: str) -> torch.device:
    """The device of ``TrainConfig.device``: ``"auto"`` is CUDA when available.

    Raises:
        ValueError: CUDA was asked for but is not available.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} was asked for but CUDA is not available")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators with ``seed``.

    Example:
        >>> seed_everything(0); a = torch.rand(1); seed_everything(0)
        >>> bool(torch.rand(1) == a)
        True
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - for user transforms that use it
    torch.manual_seed(seed)


def resolve_input(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with ``height``, ``width``, ``mean`` and ``std`` filled in where ``None``.

    The values come from the architecture (:func:`metareid.models.input_config`: 256 x 128
    and ImageNet's statistics for the built-in ResNets, timm's ``pretrained_cfg`` for
    ``"timm:"`` models); values the config gives are kept. The trainer runs, logs and
    checkpoints the resolved config, so evaluation and export read the same input.

    Example:
        >>> cfg = resolve_input(TrainConfig(arch="resnet18", width=64))
        >>> cfg.height, cfg.width, cfg.std
        (256, 64, (0.229, 0.224, 0.225))
    """
    if None not in (cfg.height, cfg.width, cfg.mean, cfg.std):
        return cfg
    declared = input_config(cfg.arch)
    return dataclasses.replace(
        cfg,
        height=cfg.height or declared.height,
        width=cfg.width or declared.width,
        mean=cfg.mean or declared.mean,
        std=cfg.std or declared.std,
    )


def stored_config(config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's stored config as this version's :meth:`TrainConfig.to_dict` reads it.

    Keys of earlier versions are renamed, keys a checkpoint predates take their default
    (:func:`metareid.config.config_value`), keys this version no longer has are dropped,
    and an input size or normalisation left to the architecture is filled in as
    :func:`resolve_input` does. What :meth:`Trainer.load_state
    <metareid.engine.Trainer.load_state>` compares with the run's config.

    Example:
        >>> old = {"arch": "resnet18", "first_order": True}  # an earlier version's keys
        >>> cfg = stored_config(old)
        >>> cfg["meta_test_grad"], cfg["height"], cfg["mean"]
        ('first_order', 256, [0.485, 0.456, 0.406])
    """
    from metareid.config import config_value

    out = {f.name: config_value(config, f.name) for f in dataclasses.fields(TrainConfig)}
    declared = input_config(out["arch"])._asdict()
    for key, value in declared.items():
        if out[key] is None:
            out[key] = list(value) if isinstance(value, tuple) else value
    for key, value in out.items():
        if isinstance(value, tuple):
            out[key] = list(value)
    return out


def check_second_order(cfg: TrainConfig, model: nn.Module, device: torch.device) -> None:
    """Refuse, before training, a model whose exact meta step cannot be computed.

    With ``method`` ``"m3l"``/``"meta"`` and ``meta_test_grad`` ``"full"`` or
    ``"second_order_only"`` the meta step differentiates the meta-train gradient. For a
    ``"tv:"``/``"timm:"`` architecture :func:`metareid.meta.missing_second_derivative`
    probes that once (two images of the run's size, on a copy of the model); the built-in
    ResNets are known to allow it and are not probed.

    Raises:
        ValueError: naming the operation and the ``--meta-test-grad first_order`` way out.

    Example:
        >>> cfg = TrainConfig(arch="resnet10", pretrained="none")
        >>> check_second_order(cfg, nn.Identity(), torch.device("cpu"))  # not probed
    """
    if cfg.method == "baseline" or cfg.meta_test_grad == "first_order":
        return
    if not is_external_arch(cfg.arch):
        return
    height, width = cfg.height or 256, cfg.width or 128
    images = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    op = missing_second_derivative(model, images.to(device))
    if op is not None:
        raise ValueError(
            f"arch {cfg.arch!r} uses {op}, which has no derivative in torch "
            f"{torch.__version__}, and meta_test_grad={cfg.meta_test_grad!r} differentiates "
            "through the meta-train gradient (the second-order meta step). Train this "
            "backbone at first order: --meta-test-grad first_order (docs/models.md, "
            "'Backbones from torchvision and timm')"
        )


def build_model_from_config(cfg: TrainConfig, sources: MultiSourceDataset) -> ReIDModel:
    """The network of ``cfg`` (on the CPU), with classifier heads as ``cfg.id_loss`` needs.

    :func:`metareid.models.model_from_config` with ``cfg``'s pretrained weights and the
    classifier sizes of ``sources``; a MetaBN neck (``method="m3l"``) gets a generator
    seeded with ``seed + 2``.

    Example:
        >>> from metareid.data import MultiSourceDataset, build_dataset
        >>> import tempfile; from metareid.data import prepare_synthetic_benchmark
        >>> root = tempfile.mkdtemp(); _ = prepare_synthetic_benchmark(root, num_domains=2,
        ...     train_ids_per_domain=2, test_ids_per_domain=1, num_junk=0, image_size=(16, 8))
        >>> srcs = MultiSourceDataset([build_dataset("synthetic", root, domain=d) for d in (0, 1)])
        >>> cfg = TrainConfig(arch="resnet10", pretrained="none", method="meta")
        >>> type(build_model_from_config(cfg, srcs).neck).__name__
        'BatchNorm1d'
    """
    num_classes: int | list[int] | None = None
    if cfg.id_loss == "fc_global":
        num_classes = sources.num_combined_classes
    elif cfg.id_loss == "fc_domain":
        num_classes = list(sources.num_classes_per_domain)
    pretrained: bool | str = {"imagenet": True, "none": False}.get(cfg.pretrained, cfg.pretrained)
    model = model_from_config(cfg, num_classes, pretrained=pretrained)
    if isinstance(model.neck, MetaBN):
        model.neck.generator = torch.Generator().manual_seed(cfg.seed + METABN_SEED_OFFSET)
    return model


@dataclass
class TrainingComponents:
    """What one run trains with, as :func:`build_components` makes it.

    Attributes:
        memories: one :class:`~metareid.MemoryBank` per source domain (empty unless
            ``id_loss="memory"``), on the model's device.
        objective: the losses of one domain batch.
        split: how a batch is cut into chunks and combined (whole batch, identity chunks
            over ranks or micro-batches, or ``nn.DataParallel``'s chunks).
        step: one training iteration (objective, split, meta step, memory updates).
        optimizer: Adam over the trainable parameters.
        scheduler: the warm-up and step decay, stepped once per epoch.
        learner: the meta step (``None`` for ``method="baseline"``).
        meta_generator: draws the meta-test domain in a single process (``seed + 1``).
    """

    memories: nn.ModuleList
    objective: M3LObjective
    split: BatchSplit
    step: M3LStep
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    learner: MetaLearner | None
    meta_generator: torch.Generator


def build_split(cfg: TrainConfig, ranks: RankGroup | None = None) -> BatchSplit:
    """The :class:`~metareid.engine.BatchSplit` of ``cfg``: DataParallel's chunks for
    ``dataparallel > 1``, else identity chunks over ``ranks`` (``None``: whole batches).

    Example:
        >>> build_split(TrainConfig(dataparallel=3))
        DataParallelSplit(num_devices=3, recompute=False)
    """
    if cfg.dataparallel > 1:
        if ranks is not None:
            raise ValueError(
                f"dataparallel={cfg.dataparallel} computes nn.DataParallel in one process; it "
                f"cannot be combined with ranks ({ranks!r}): use micro_batches or torchrun"
            )
        return DataParallelSplit(cfg.dataparallel, recompute=cfg.recompute)
    return IdentitySplit(ranks, local_batches=ranks is not None, recompute=cfg.recompute)


def optimizer_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The trainable parameters in Adam parameter groups, as ``weight_decay_scope`` says.

    ``"all"``: one group, every trainable parameter decays (the paper and the published
    code, ``main.py:186-188``; the published code's one group per parameter is the same
    Adam). ``"no_norm_bias"``: parameters of normalisation layers and biases in a second
    group without weight decay.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        >>> [len(g["params"]) for g in optimizer_groups(model, TrainConfig())]
        [4]
        >>> groups = optimizer_groups(model, TrainConfig(weight_decay_scope="no_norm_bias"))
        >>> [(len(g["params"]), g["weight_decay"]) for g in groups]
        [(1, 0.0005), (3, 0.0)]
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.weight_decay_scope == "all":
        return [{"params": params, "weight_decay": cfg.weight_decay}]
    exempt: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm):
                exempt.add(id(p))
            elif name == "bias":
                exempt.add(id(p))
    decay = [p for p in params if id(p) not in exempt]
    free = [p for p in params if id(p) in exempt]
    return [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": free, "weight_decay": 0.0},
    ]


def build_components(
    cfg: TrainConfig,
    model: nn.Module,
    sources: MultiSourceDataset,
    *,
    feat_dim: int,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    grad_scaler: torch.amp.GradScaler | None = None,
    ranks: RankGroup | None = None,
) -> TrainingComponents:
    """Memories, objective, split, step, optimiser, schedule and learner of ``cfg``.

    Args:
        cfg: the run's settings.
        model: the network, already on ``device``.
        sources: the source domains, in domain order.
        feat_dim: the dimension D of the model's features (the memories' width).
        device: where the memories live.
        autocast: the context of the training forwards (see :class:`M3LStep`).
        grad_scaler: for ``amp="fp16"``.
        ranks: the :class:`~metareid.distributed.RankGroup` the batches are split across
            by identity (each process's batches hold its own identities), or ``None``
            (default: whole batches, or ``dataparallel`` chunks). Under ``torchrun`` the
            learner gets the split's gradient hooks.

    Returns:
        The components.

    Example:
        >>> from metareid.data import MultiSourceDataset, build_dataset
        >>> import tempfile; from metareid.data import prepare_synthetic_benchmark
        >>> root = tempfile.mkdtemp(); _ = prepare_synthetic_benchmark(root, num_domains=2,
        ...     train_ids_per_domain=2, test_ids_per_domain=1, num_junk=0, image_size=(16, 8))
        >>> srcs = MultiSourceDataset([build_dataset("synthetic", root, domain=d) for d in (0, 1)])
        >>> cfg = TrainConfig(arch="resnet10", pretrained="none", sources=("a", "b"), target="c")
        >>> model = build_model_from_config(cfg, srcs)
        >>> parts = build_components(cfg, model, srcs, feat_dim=model.feat_dim,
        ...                          device=torch.device("cpu"))
        >>> len(parts.memories), parts.learner is not None, parts.split
        (2, True, IdentitySplit(ranks=None, local_batches=False, recompute=False))
    """
    memories = nn.ModuleList(
        MemoryBank(n, feat_dim, momentum=cfg.memory_momentum, update_rule=cfg.memory_update_rule)
        for n in (sources.num_classes_per_domain if cfg.id_loss == "memory" else ())
    ).to(device)
    objective = M3LObjective(
        [cast(MemoryBank, m) for m in memories],
        len(cfg.sources),
        id_loss=cfg.id_loss,
        triplet=cfg.triplet,
        memory_loss=MemoryIDLoss(temperature=cfg.temperature),
        triplet_loss=HardTripletLoss(margin=cfg.margin),
        pid_offsets=list(sources.pid_offsets),
    )
    split = build_split(cfg, ranks)
    step = M3LStep(
        objective, split, memory_update_timing=cfg.memory_update_timing, autocast=autocast
    )
    optimizer = torch.optim.Adam(optimizer_groups(model, cfg), lr=cfg.lr)
    scheduler = warmup_multistep_scheduler(
        optimizer, cfg.warmup_epochs, cfg.warmup_factor, cfg.milestones, cfg.gamma
    )
    meta_generator = torch.Generator().manual_seed(cfg.seed + META_TEST_SEED_OFFSET)
    learner: MetaLearner | None = None
    if cfg.method != "baseline":
        learner = MetaLearner(
            model,
            optimizer,
            inner_optimizer=cfg.inner_optimizer,
            inner_state=cfg.inner_state,
            inner_eps=cfg.inner_eps,
            inner_eps_root=cfg.inner_eps_root,
            meta_test_grad=cfg.meta_test_grad,
            meta_test_bn_stats=cfg.meta_test_bn_stats,
            backend=cfg.backend,
            generator=meta_generator,
            grad_scaler=grad_scaler,
            **split.learner_hooks(),
        )
    return TrainingComponents(
        memories, objective, split, step, optimizer, scheduler, learner, meta_generator
    )
