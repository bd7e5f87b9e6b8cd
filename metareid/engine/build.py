"""Building a training run from its :class:`~metareid.engine.TrainConfig`.

Everything the :class:`~metareid.engine.Trainer` trains with is made here, in a fixed
order (the order fixes the random numbers the model's initialisation draws): the model
(:func:`build_model_from_config`), then :func:`build_components` for the memories, the
:class:`~metareid.engine.M3LObjective`, the optimiser, the learning-rate schedule and the
:class:`~metareid.MetaLearner`. The components are usable without the trainer.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from metareid.data import MultiSourceDataset
from metareid.distributed import RankGroup
from metareid.engine.config import TrainConfig
from metareid.engine.objective import M3LObjective
from metareid.engine.schedule import warmup_multistep_scheduler
from metareid.layers.metabn import MetaBN
from metareid.losses.memory_id import MemoryIDLoss
from metareid.losses.triplet import HardTripletLoss
from metareid.memory.bank import MemoryBank
from metareid.meta.learner import GradTransform, MetaLearner, OuterGradTransform
from metareid.models import ReIDModel, build_model

__all__ = [
    "TrainingComponents",
    "build_components",
    "build_model_from_config",
    "resolve_device",
    "seed_everything",
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


def build_model_from_config(cfg: TrainConfig, sources: MultiSourceDataset) -> ReIDModel:
    """The network of ``cfg`` (on the CPU), with classifier heads as ``cfg.id_loss`` needs.

    ``method="m3l"`` keeps the MetaBN neck, whose generator is seeded with ``seed + 2``;
    ``"meta"`` and ``"baseline"`` replace it by a plain ``BatchNorm1d`` with the same
    state (the Table 3 ablations).

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
    model = build_model(
        cfg.arch,
        pretrained=pretrained,
        last_stride=cfg.last_stride,
        num_classes=num_classes,
        sample_scale=cfg.metabn_scale,
        share_lambda=cfg.share_lambda,
    )
    neck = model.neck
    assert isinstance(neck, MetaBN)
    neck.generator = torch.Generator().manual_seed(cfg.seed + METABN_SEED_OFFSET)
    if cfg.method != "m3l":  # Table 3 ablations: no MetaBN
        plain = nn.BatchNorm1d(neck.num_features, eps=neck.eps, momentum=neck.momentum)
        plain.load_state_dict(neck.state_dict())
        plain.bias.requires_grad_(neck.bias.requires_grad)
        model.neck = plain  # type: ignore[assignment]  # the ablation swaps the neck
    return model


@dataclass
class TrainingComponents:
    """What one run trains with, as :func:`build_components` makes it.

    Attributes:
        memories: one :class:`~metareid.MemoryBank` per source domain (empty unless
            ``id_loss="memory"``), on the model's device.
        objective: the losses, phase handling and memory updates of one iteration.
        optimizer: Adam over the trainable parameters.
        scheduler: the warm-up and step decay, stepped once per epoch.
        learner: the meta step (``None`` for ``method="baseline"``).
        meta_generator: draws the meta-test domain in a single process (``seed + 1``).
    """

    memories: nn.ModuleList
    objective: M3LObjective
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    learner: MetaLearner | None
    meta_generator: torch.Generator


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
    local_batches: bool = False,
    grad_transform: GradTransform | None = None,
    outer_grad_transform: OuterGradTransform | None = None,
) -> TrainingComponents:
    """Memories, objective, optimiser, schedule and learner of ``cfg`` around ``model``.

    Args:
        cfg: the run's settings.
        model: the network, already on ``device``.
        sources: the source domains, in domain order.
        feat_dim: the dimension D of the model's features (the memories' width).
        device: where the memories live.
        autocast: the context of the training forwards (see :class:`M3LObjective`).
        grad_scaler: for ``amp="fp16"``.
        ranks: the :class:`~metareid.distributed.RankGroup` the batches are split across,
            or ``None`` (default: whole batches, the plain computation).
        local_batches: with ``ranks``, every process's batches hold only its own
            identities (see :class:`M3LObjective`). Default ``False``.
        grad_transform: passed to :class:`~metareid.MetaLearner` (the differentiable
            all-reduce of the meta-train gradient under ``torchrun``).
        outer_grad_transform: passed to :class:`~metareid.MetaLearner` (the all-reduce of
            the outer gradient under ``torchrun``).

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
        >>> len(parts.memories), parts.learner is not None
        (2, True)
    """
    memories = nn.ModuleList(
        MemoryBank(n, feat_dim, momentum=cfg.memory_momentum, update=cfg.memory_update)
        for n in (sources.num_classes_per_domain if cfg.id_loss == "memory" else ())
    ).to(device)
    objective = M3LObjective(
        [cast(MemoryBank, m) for m in memories],
        len(cfg.sources),
        id_loss=cfg.id_loss,
        triplet=cfg.triplet,
        memory_loss=MemoryIDLoss(temperature=cfg.temperature),
        triplet_loss=HardTripletLoss(margin=cfg.margin),
        metabn=cfg.method == "m3l",
        memory_update_timing=cfg.memory_update_timing,
        pid_offsets=list(sources.pid_offsets),
        autocast=autocast,
        ranks=ranks,
        local_batches=local_batches,
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
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
            first_order=cfg.first_order,
            backend=cfg.backend,
            generator=meta_generator,
            grad_scaler=grad_scaler,
            grad_transform=grad_transform,
            outer_grad_transform=outer_grad_transform,
        )
    return TrainingComponents(memories, objective, optimizer, scheduler, learner, meta_generator)
