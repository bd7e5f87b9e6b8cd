"""Training configuration of M3L: every setting is a field, a config-file key and a flag."""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

__all__ = [
    "METHODS",
    "PRESETS",
    "RENAMED_KEYS",
    "TrainConfig",
    "config_value",
    "preset_deviations",
]

METHODS = ("baseline", "meta", "m3l")
ID_LOSSES = ("memory", "fc_global", "fc_domain", "none")

#: The paper-versus-published-code switches, set together by ``preset``. The published
#: values are read from the authors' code (``HeliosZhao/M3L``; file and line of each in
#: docs/training.md, "Presets"); the paper column is the method as written, and where the
#: paper is silent (e.g. whether the mixtures share one lambda) the value is metareid's
#: reading of the text, marked as such in docs/training.md.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "memory_update_rule": "mean",
        "memory_update_timing": "step",
        "sample_scale": "std",
        "share_lambda": False,
        "inner_optimizer": "adam",
        "inner_state": "fresh",
        "inner_eps_root": 0.0,
        "meta_test_grad": "full",
        "meta_test_bn_stats": "frozen",
        "stem_relu": True,
        "load_running_stats": True,
        "freeze_neck_bias": True,
        "weight_decay_scope": "all",
        "ibn_init": "ibn_net",
        "sampler": "balanced",
        "dataparallel": 1,
    },
    "published": {
        "memory_update_rule": "sequential",
        "memory_update_timing": "after",
        "sample_scale": "var",
        "share_lambda": True,
        "inner_optimizer": "adam",
        "inner_state": "fresh",
        "inner_eps_root": 1e-5,
        "meta_test_grad": "second_order_only",
        "meta_test_bn_stats": "update",
        "stem_relu": False,
        "load_running_stats": False,
        "freeze_neck_bias": False,
        "weight_decay_scope": "all",
        "ibn_init": "torchvision",
        "sampler": "published",
        "dataparallel": 3,
        "eval_every": 1,
    },
}

#: Keys of earlier versions and how they map to today's (see :meth:`TrainConfig.from_dict`).
RENAMED_KEYS: dict[str, tuple[str, dict[Any, str]]] = {
    "first_order": ("meta_test_grad", {True: "first_order", False: "full"}),
    "memory_update": ("memory_update_rule", {"mean": "mean", "sequential": "sequential"}),
    "metabn_scale": ("sample_scale", {"std": "std", "var": "var"}),
}


@dataclass
class TrainConfig:
    """Settings of one training run. Defaults are the paper's (Sec. 4.2).

    The method switches reproduce the ablations: ``method`` (Table 3: ``"baseline"`` = all
    sources together, no meta-learning, no MetaBN; ``"meta"`` = meta-learning without
    MetaBN; ``"m3l"`` = full method), ``id_loss`` and ``triplet`` (Table 4: memory only,
    triplet only, both; Table 5: ``"fc_global"``/``"fc_domain"`` classifiers instead of the
    memory), ``sources`` (Table 6). Every place where the authors' published code differs
    from the paper is a switch (the keys of :data:`PRESETS`, each with its source line in
    docs/training.md, "Presets"): the memory update (``memory_update_rule``,
    ``memory_update_timing``), MetaBN (``sample_scale``, ``share_lambda``), the inner step
    (``inner_optimizer``, ``inner_state``, ``inner_eps_root``), the meta-gradient
    (``meta_test_grad``) and the meta-test's BatchNorm statistics
    (``meta_test_bn_stats``), the model (``stem_relu``, ``load_running_stats``,
    ``freeze_neck_bias``, ``ibn_init``), the optimiser (``weight_decay_scope``), the
    sampler (``sampler``), the three GPUs of ``nn.DataParallel`` (``dataparallel``) and the
    evaluation after every epoch (``eval_every``).

    ``preset`` (``"paper"`` / ``"published"``) sets all of these switches at once (see
    :data:`PRESETS`) when a config is built with :meth:`from_dict`, :meth:`from_file` or
    :meth:`from_args`; keys or flags given explicitly override it. The constructor
    records ``preset`` but applies nothing; :func:`preset_deviations` lists where a config
    departs from its preset. ``first_order`` (earlier versions) is read as
    ``meta_test_grad`` (:data:`RENAMED_KEYS`).

    Numerics: ``amp="off"`` (default) trains, initialises memories and extracts features
    in float32, as the paper's numbers were obtained; ``"bf16"`` autocasts to bfloat16,
    ``"fp16"`` to float16 with a ``torch.amp.GradScaler`` that the meta step honours.

    Scale-out: ``micro_batches=N`` splits each domain's P x K batch by identity into N
    chunks computed one after the other, each with its own BatchNorm and MetaBN
    statistics, exactly as N ``torchrun`` ranks compute them (docs/distributed.md);
    ``1`` (default) is the whole-batch computation. N must divide ``num_identities``.
    Under ``torchrun`` with W processes it is per process: W x N chunks in all.
    ``recompute=True`` keeps one chunk's graph alive at a time (gradient caching with a
    recomputed forward per chunk, :meth:`~metareid.engine.BatchSplit.value_and_grad`):
    the same gradients in less memory, for more time (docs/training.md, "Memory").
    ``dataparallel=N`` instead computes in one process what ``nn.DataParallel`` over N
    GPUs computes (:class:`~metareid.engine.DataParallelSplit`), as the published code ran.

    Dataset specs are registry names with optional ``:options`` (see
    :mod:`metareid.data.specs`): ``market1501``, ``dukemtmc``, ``cuhk03np``
    (``cuhk03np:labeled``), ``cuhk03`` (old protocol), ``msmt17`` (V2 by default,
    ``msmt17:V1``), ``cuhk02``, ``cuhksysu``, ``prid``, ``grid``, ``viper``, ``ilids``
    (``prid:3`` = split 3), ``synthetic:<domain>``, and ``use=all`` to train on train +
    query + gallery (``market1501:use=all``). Real datasets live in ``<data_dir>/<name>/``
    (or the toolboxes' folder names); the synthetic benchmark is ``data_dir`` itself.
    ``protocol`` records the preset that chose the sources and targets
    (:func:`metareid.engine.protocol.apply_protocol`, ``--protocol`` on the command line);
    ``final_targets`` are evaluated after training on every split (Protocol 1). A target
    that is also a source (same dataset, any version, subset or ``use``) is refused.

    Data check and output: ``verify_data=True`` decodes every image the run will read
    before training (:func:`metareid.data.check_images`) and raises
    :class:`~metareid.data.BadImageError` listing every bad file; ``save_checkpoints=False``
    writes no ``last.pt`` (logs, results and pictures only; nothing to resume from).

    Example:
        >>> cfg = TrainConfig(method="baseline", epochs=2)
        >>> TrainConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    # data
    data_dir: str = "data"
    sources: tuple[str, ...] = ("msmt17:V2", "dukemtmc", "cuhk03")
    target: str = "market1501"
    height: int | None = field(
        default=None,
        metadata={
            "help": "input height; default: the architecture's (256 for the built-in ResNets "
            "and torchvision CNNs, timm's pretrained_cfg input size)"
        },
    )
    width: int | None = field(
        default=None,
        metadata={"help": "input width; default: the architecture's (128 for the ResNets)"},
    )
    mean: tuple[float, ...] | None = field(
        default=None,
        metadata={
            "help": "RGB normalisation mean (3 numbers); default: the architecture's "
            "(ImageNet's, or timm's pretrained_cfg)"
        },
    )
    std: tuple[float, ...] | None = field(
        default=None,
        metadata={
            "help": "RGB normalisation standard deviation (3 numbers > 0); default: "
            "the architecture's"
        },
    )
    num_identities: int = 16
    num_instances: int = 4
    workers: int = 4
    random_erasing: float = 0.0
    sampler: Literal["balanced", "published"] = field(
        default="balanced",
        metadata={
            "help": "batch sampling rules: balanced (metareid), or published (the authors' "
            "RandomMultipleGallerySampler)"
        },
    )
    protocol: Literal["custom", "m3l", "p1", "p2", "p3"] = field(
        default="custom",
        metadata={"help": "preset of sources and targets: m3l, p1, p2, p3 (with --target)"},
    )
    final_targets: tuple[str, ...] = field(
        default=(),
        metadata={"help": "targets evaluated after training on all their splits"},
    )
    verify_data: bool = field(
        default=False,
        metadata={
            "help": "before training, decode every image the run reads (sources' train, "
            "targets' query and gallery) and stop with the list of unreadable or empty files"
        },
    )
    # model
    arch: str = field(
        default="resnet50",
        metadata={
            "help": "backbone: resnet10/18/34/50, ibn_resnet50a, tv:<torchvision model> or "
            "timm:<timm model> (e.g. timm:convnext_tiny, tv:vit_b_16)"
        },
    )
    pretrained: str = field(
        default="imagenet",
        metadata={
            "help": "imagenet (the library's usual ImageNet weights), none, or a path / URL "
            "to a weights file"
        },
    )
    last_stride: int = field(
        default=1,
        metadata={"help": "1 or 2; 1 sets the last stride-2 stage to stride 1 where it exists"},
    )
    stem_relu: bool = field(
        default=True, metadata={"help": "ReLU after the stem BN (the published code has none)"}
    )
    load_running_stats: bool = field(
        default=True,
        metadata={
            "help": "load BN running statistics with the pretrained weights (the published "
            "code copies parameters only: running stats start at 0 and 1)"
        },
    )
    freeze_neck_bias: bool = field(
        default=True, metadata={"help": "freeze the BNNeck bias (the published code trains it)"}
    )
    ibn_init: Literal["ibn_net", "torchvision", "torchvision_split"] = field(
        default="ibn_net",
        metadata={
            "help": "what ibn_resnet50a's pretrained weights are: the IBN-Net release, or "
            "torchvision's ResNet-50 (the published code; IBN layers start at 1/0)"
        },
    )
    # method
    method: Literal["baseline", "meta", "m3l"] = "m3l"
    id_loss: Literal["memory", "fc_global", "fc_domain", "none"] = "memory"
    triplet: bool = True
    margin: float = 0.3
    temperature: float = 0.05
    memory_momentum: float = 0.2
    memory_update_rule: Literal["mean", "sequential"] = "mean"
    memory_update_timing: Literal["step", "after"] = "step"
    sample_scale: Literal["std", "var"] = "std"
    share_lambda: bool = True
    inner_optimizer: Literal["adam", "sgd"] = "adam"
    inner_state: Literal["fresh", "continue"] = "fresh"
    inner_eps: float | None = field(
        default=None, metadata={"help": "Adam eps of the inner step; unset: the outer eps"}
    )
    inner_eps_root: float = field(
        default=1e-5,
        metadata={
            "help": "added to Adam's bias-corrected 2nd moment inside the sqrt of the inner "
            "step; 1e-5 = the published code's step, 0 = torch.optim.Adam's"
        },
    )
    meta_test_grad: Literal["full", "first_order", "second_order_only"] = field(
        default="full",
        metadata={
            "help": "meta-test gradient: full (paper), first_order, second_order_only "
            "(the published code)"
        },
    )
    meta_test_bn_stats: Literal["frozen", "update"] = field(
        default="frozen",
        metadata={
            "help": "whether the meta-test forward moves the BN running statistics "
            "(update: the published code)"
        },
    )
    backend: Literal["higher", "func"] = "higher"
    # optimisation
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    weight_decay_scope: Literal["all", "no_norm_bias"] = field(
        default="all",
        metadata={
            "help": "parameters that weight decay applies to: all (paper and published "
            "code), or no_norm_bias (not normalisation layers nor biases)"
        },
    )
    epochs: int = 60
    iters_per_epoch: int = 200
    warmup_epochs: int = 10
    warmup_factor: float = 0.01
    milestones: tuple[int, ...] = (30, 50)
    gamma: float = 0.1
    # evaluation and output
    eval_every: int = 10
    eval_batch_size: int = 128
    flip_eval: bool = False
    rerank: bool = False
    output_dir: str = "runs/m3l"
    save_checkpoints: bool = field(
        default=True,
        metadata={
            "help": "write <output_dir>/last.pt after every epoch (needed to --resume, "
            "evaluate, extract or export later); off: logs, results and pictures only"
        },
    )
    seed: int = 0
    device: str = "auto"
    amp: Literal["off", "bf16", "fp16"] = "off"
    dataparallel: int = field(
        default=1,
        metadata={
            "help": "compute in one process what nn.DataParallel over N GPUs computes, "
            "quirks included (the published code ran 3); 1 = whole batches"
        },
    )
    micro_batches: int = field(
        default=1,
        metadata={
            "help": "split every domain batch by identity into N chunks with their own "
            "BatchNorm/MetaBN statistics, as N torchrun ranks would (1 = whole batches); "
            "under torchrun, per process"
        },
    )
    recompute: bool = field(
        default=False,
        metadata={
            "help": "compute the gradients one chunk (micro-batch or DataParallel chunk) at "
            "a time, recomputing its forward, so that one chunk's graph is alive at once: "
            "the same numbers as without, in less memory (one process only for now)"
        },
    )
    checkpoint_activations: bool = field(
        default=False,
        metadata={
            "help": "activation checkpointing of the backbone's residual stages: recompute "
            "their activations in the backward instead of keeping them (the same gradients, "
            "second order included; BN running statistics move once) for less memory and "
            "more time"
        },
    )
    check_ranks: bool = field(
        default=False,
        metadata={
            "help": "debugging: after every epoch under torchrun, check that the memories "
            "and the model state are identical on every rank (one broadcast per tensor)"
        },
    )
    progress: bool = field(
        default=True,
        metadata={
            "help": "show training progress (rank 0): a tqdm bar when stdout and stderr are "
            "terminals, otherwise one plain line every log_every iterations"
        },
    )
    log_every: int = 10
    plots: bool = True
    tensorboard: bool = field(
        default=False,
        metadata={
            "help": "write TensorBoard event files into <output_dir>/tensorboard (rank 0; "
            'needs pip install "metareid[tensorboard]")'
        },
    )
    tag: str = field(default="", metadata={"help": "free text stored with the run"})
    preset: Literal["none", "paper", "published"] = field(
        default="none",
        metadata={"help": "set every paper-vs-code switch at once; flags override it"},
    )

    def __post_init__(self) -> None:
        self.sources = tuple(self.sources)
        self.final_targets = tuple(self.final_targets)
        self.milestones = tuple(int(m) for m in self.milestones)
        for name in ("mean", "std"):
            if isinstance(getattr(self, name), list):
                setattr(self, name, tuple(getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        """Check every field; raise ``ValueError``/``TypeError`` naming the field."""
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            if hints[f.name] is bool and not isinstance(value, bool):
                raise ValueError(f"{f.name} must be a bool, got {value!r}")
            choices = _literal_choices(hints[f.name])
            if choices and value not in choices:
                raise ValueError(
                    f"{f.name} must be one of {', '.join(map(repr, choices))}; got {value!r}"
                )
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{name} must be None or an int >= 1, got {value!r}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is None:
                continue
            if (
                not isinstance(value, tuple)
                or len(value) != 3
                or any(isinstance(v, bool) or not isinstance(v, int | float) for v in value)
                or (name == "std" and not all(v > 0 for v in value))
            ):
                expected = "three numbers > 0" if name == "std" else "three numbers"
                raise ValueError(f"{name} must be None or {expected} (R, G, B), got {value!r}")
        if not isinstance(self.arch, str) or not self.arch:
            raise ValueError(f"arch must be a non-empty string, got {self.arch!r}")
        if isinstance(self.last_stride, bool) or self.last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {self.last_stride!r}")
        positive = ("num_identities", "epochs", "iters_per_epoch")
        for name in (*positive, "eval_batch_size", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        mb = self.micro_batches
        if isinstance(mb, bool) or not isinstance(mb, int) or mb < 1:
            raise ValueError(f"micro_batches must be an int >= 1, got {mb!r}")
        dp = self.dataparallel
        if isinstance(dp, bool) or not isinstance(dp, int) or dp < 1:
            raise ValueError(f"dataparallel must be an int >= 1, got {dp!r}")
        if dp > 1 and mb > 1:
            raise ValueError(
                f"dataparallel={dp} (nn.DataParallel's batch-order chunks) and "
                f"micro_batches={mb} (identity chunks) are two ways to split a batch; set one "
                "of them to 1"
            )
        if self.num_identities % mb:
            raise ValueError(
                f"micro_batches={mb} must divide num_identities={self.num_identities}, so "
                "that every micro-batch holds num_identities / micro_batches whole identities"
            )
        if self.num_instances < 2 and self.triplet:
            raise ValueError(
                f"num_instances must be >= 2 when triplet=True (positives are needed), "
                f"got {self.num_instances}"
            )
        for name in ("workers", "warmup_epochs", "eval_every", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if self.inner_eps is not None and (
            isinstance(self.inner_eps, bool)
            or not isinstance(self.inner_eps, (int, float))
            or not self.inner_eps > 0
        ):
            raise ValueError(f"inner_eps must be None or a number > 0, got {self.inner_eps!r}")
        if (
            isinstance(self.inner_eps_root, bool)
            or not isinstance(self.inner_eps_root, (int, float))
            or not 0 <= self.inner_eps_root < float("inf")
        ):
            raise ValueError(
                f"inner_eps_root must be a finite number >= 0, got {self.inner_eps_root!r}"
            )
        for name in ("lr", "temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("weight_decay", "margin"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("memory_momentum", "warmup_factor", "random_erasing"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)!r}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must lie in (0, 1], got {self.gamma!r}")
        if not self.sources:
            raise ValueError("sources must name at least one source dataset, got none")
        if self.method != "baseline" and len(self.sources) < 2:
            raise ValueError(
                f"method={self.method!r} meta-learns across domains and needs at least two "
                f"sources, got {list(self.sources)}"
            )
        if self.id_loss == "none" and not self.triplet:
            raise ValueError("id_loss='none' with triplet=False leaves no loss to train")
        from metareid.data.specs import check_target_not_in_sources

        check_target_not_in_sources(self.sources, (self.target, *self.final_targets))

    # ------------------------------------------------------------------ conversions
    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON types."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dict; unknown keys raise ``ValueError`` listing the valid ones.

        With a ``"preset"`` key, the preset's switches fill every key that ``data`` does
        not give.

        Example:
            >>> cfg = TrainConfig.from_dict({"preset": "published", "sample_scale": "std"})
            >>> cfg.memory_update_rule, cfg.sample_scale, preset_deviations(cfg)
            ('sequential', 'std', {'sample_scale': ('var', 'std')})
        """
        data = _migrate(data)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; valid keys are {sorted(known)}")
        data = dict(data)
        preset = data.get("preset", "none")
        if preset != "none":
            if preset not in PRESETS:
                raise ValueError(
                    f"preset must be one of 'none', {', '.join(map(repr, PRESETS))}; got {preset!r}"
                )
            for key, value in PRESETS[preset].items():
                data.setdefault(key, value)
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        """Read a JSON config file (keys as the field names; missing keys take defaults)."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file {str(p)!r} does not exist")
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"config file {str(p)!r} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"config file {str(p)!r} must hold a JSON object")
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        """Write the config as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    # ------------------------------------------------------------------ command line
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add one ``--flag`` per field (default ``None``: keep the config's value)."""
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            flag = "--" + f.name.replace("_", "-")
            choices = _literal_choices(hints[f.name])
            kind = _base_type(hints[f.name])
            default_text = f.default if f.default is not dataclasses.MISSING else ""
            help_text = f.metadata.get("help", "") + f" (default: {default_text})"
            if kind is bool:
                parser.add_argument(
                    flag,
                    dest=f.name,
                    default=None,
                    action=argparse.BooleanOptionalAction,
                    help=help_text,
                )
            elif kind is tuple:
                item = {"milestones": int, "mean": float, "std": float}.get(f.name, str)
                nargs: int | str = 3 if f.name in ("mean", "std") else "+"
                parser.add_argument(
                    flag, dest=f.name, default=None, nargs=nargs, type=item, help=help_text
                )
            else:
                parser.add_argument(
                    flag,
                    dest=f.name,
                    default=None,
                    type=kind,
                    choices=choices or None,
                    help=help_text,
                )

    @classmethod
    def from_args(cls, args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
        """The ``base`` config (default: defaults) with every flag that was given applied."""
        data = (base or cls()).to_dict()
        preset = getattr(args, "preset", None)
        if preset is not None and preset != "none":
            if preset not in PRESETS:
                raise ValueError(f"preset must be one of {sorted(PRESETS)}; got {preset!r}")
            data.update(PRESETS[preset])  # the preset over the base; flags over both
        for f in fields(cls):
            value = getattr(args, f.name, None)
            if value is not None:
                data[f.name] = value
        return cls.from_dict(data)


def config_value(config: Any, key: str) -> Any:
    """``key`` of a stored config dict (a checkpoint's ``config``), tolerantly.

    Keys of earlier versions are read under their new names (:data:`RENAMED_KEYS`), a
    missing key takes the :class:`TrainConfig` default, unknown keys are ignored. A
    :class:`TrainConfig` is read as is.

    Raises:
        KeyError: ``key`` is not a :class:`TrainConfig` field.

    Example:
        >>> config_value({"first_order": True}, "meta_test_grad"), config_value({}, "arch")
        ('first_order', 'resnet50')
    """
    if isinstance(config, TrainConfig):
        return getattr(config, key)
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    if key not in defaults:
        raise KeyError(f"{key!r} is not a TrainConfig field")
    data = _migrate(dict(config))
    return data[key] if key in data else defaults[key]


def _migrate(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the keys of earlier versions renamed (:data:`RENAMED_KEYS`).

    Raises:
        ValueError: an old key and its new name are both given and disagree.
    """
    if not any(old in data for old in RENAMED_KEYS):
        return data
    data = dict(data)
    for old, (new, values) in RENAMED_KEYS.items():
        if old not in data:
            continue
        value = data.pop(old)
        if value not in values:
            raise ValueError(f"{old} (now {new}) must be one of {list(values)}, got {value!r}")
        if new in data and data[new] != values[value]:
            raise ValueError(
                f"{old}={value!r} (an earlier name of {new}={values[value]!r}) contradicts "
                f"{new}={data[new]!r}; give {new} only"
            )
        data[new] = values[value]
    return data


def preset_deviations(cfg: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """``{switch: (preset value, actual value)}`` where ``cfg`` departs from its preset.

    Empty for ``preset="none"`` and for a config that follows its preset exactly.

    Example:
        >>> preset_deviations(TrainConfig(preset="paper"))  # constructor: nothing applied
        {'share_lambda': (False, True), 'inner_eps_root': (0.0, 1e-05)}
    """
    if cfg.preset == "none":
        return {}
    return {
        key: (value, getattr(cfg, key))
        for key, value in PRESETS[cfg.preset].items()
        if getattr(cfg, key) != value
    }


def _literal_choices(tp: Any) -> tuple[Any, ...]:
    if get_origin(tp) is Literal:
        return get_args(tp)
    return ()


def _base_type(tp: Any) -> type:
    origin = get_origin(tp)
    if origin is Literal:
        return type(get_args(tp)[0])
    if origin in (tuple, Sequence):
        return tuple
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else str
    return tp if isinstance(tp, type) else str
