"""The M3L trainer: Algorithm 1 with memories, evaluation, checkpoints and logs."""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from metareid.data import (
    MultiDomainBatchIterator,
    MultiSourceDataset,
    build_dataset_from_spec,
    build_test_loader,
    build_test_transform,
    build_train_loader,
    build_train_transform,
    source_check_line,
)
from metareid.engine.checkpoint import load_checkpoint, save_checkpoint
from metareid.engine.config import TrainConfig, preset_deviations
from metareid.engine.objective import M3LObjective
from metareid.engine.schedule import warmup_multistep_scheduler
from metareid.evaluation import evaluate_features, extract_features
from metareid.layers.metabn import MetaBN
from metareid.losses.memory_id import MemoryIDLoss
from metareid.losses.triplet import HardTripletLoss
from metareid.memory.bank import MemoryBank
from metareid.meta.learner import MetaLearner
from metareid.models import ReIDModel, build_model

if TYPE_CHECKING:
    from metareid.engine.protocol import SplitResults

__all__ = [
    "EvalResult",
    "TrainResult",
    "Trainer",
    "build_dataset_from_spec",
    "describe_preset",
    "format_results",
    "run_label",
]

# Fields that may differ between a run and its resumption.
_RESUMABLE_CHANGES = {"progress", "plots", "workers", "log_every", "device", "eval_batch_size"}


@dataclass(frozen=True)
class EvalResult:
    """Retrieval accuracy on the target domain, in percent.

    Attributes:
        epoch: The number of completed epochs when evaluated.
        mAP: Mean average precision.
        rank1: CMC at rank 1; likewise ``rank5`` and ``rank10``.
        mINP: Mean inverse negative penalty.
    """

    epoch: int
    mAP: float
    rank1: float
    rank5: float
    rank10: float
    mINP: float

    def as_dict(self) -> dict[str, float]:
        """The numbers as a dict."""
        return {
            "epoch": self.epoch,
            "mAP": self.mAP,
            "rank1": self.rank1,
            "rank5": self.rank5,
            "rank10": self.rank10,
            "mINP": self.mINP,
        }


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns.

    Attributes:
        final: The target accuracy after the last epoch.
        best: The best evaluated epoch by mAP. It is **selected on the target test set**
            (as the published code does), so it is optimistic; report ``final``.
        evaluations: Every evaluation, in order.
        output_dir: Where the checkpoints, the log and the pictures are.
        splits: Per final target (``config.final_targets``, Protocol 1), the final model's
            results on each of its splits.
    """

    final: EvalResult
    best: EvalResult
    evaluations: list[EvalResult] = field(default_factory=list)
    output_dir: Path = Path(".")
    splits: dict[str, SplitResults] = field(default_factory=dict)


class Trainer:
    """Train a ReID model on several source domains and evaluate on an unseen target.

    One iteration (Algorithm 1) draws one identity-balanced batch (P x K) from every
    source domain. ``method="m3l"`` and ``"meta"`` run :class:`metareid.MetaLearner` with
    the memory and triplet losses of Eq. 8-10 (``"meta"`` replaces the MetaBN neck by a
    plain BatchNorm1d); ``"baseline"`` averages the same losses over all domains and takes
    a plain step. Each domain's :class:`~metareid.MemoryBank` is initialised from the
    eval-mode features of its training set before training and updated every iteration.

    The losses, the phase handling and the memory updates are those of
    :class:`~metareid.engine.M3LObjective` (:attr:`objective`): with
    ``memory_update_timing="step"`` the memories receive the detached features of the
    step's own forwards, never a MetaBN mixture; ``"after"`` reproduces the published code.

    Numerics follow ``config.amp``: float32 by default; ``"bf16"`` / ``"fp16"`` autocast
    the training forwards, the memory initialisation and the evaluation features, and
    ``"fp16"`` adds a ``torch.amp.GradScaler`` (stored in checkpoints).

    Checkpoints (``last.pt``) are written atomically after every epoch; ``fit(resume=True)``
    continues from them and, on CPU with a fixed seed, reproduces the uninterrupted run.

    Args:
        config: The run's settings.
        log: Where human-readable lines go (default ``print``).

    Example:
        >>> from metareid.engine import TrainConfig, Trainer
        >>> cfg = TrainConfig(data_dir="synthetic_data", sources=("synthetic:0", "synthetic:1"),
        ...                   target="synthetic:2", arch="resnet18", pretrained="none",
        ...                   height=64, width=32, epochs=2, iters_per_epoch=50)
        >>> result = Trainer(cfg).fit()  # doctest: +SKIP
        >>> result.final.mAP  # doctest: +SKIP
    """

    def __init__(self, config: TrainConfig, log: Callable[[str], None] = print) -> None:
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        config.validate()
        self.cfg = cfg = config
        self.log = log
        self.device = _resolve_device(cfg.device)
        self.amp_dtype: torch.dtype | None = {
            "off": None,
            "bf16": torch.bfloat16,
            "fp16": torch.float16,
        }[cfg.amp]
        self.grad_scaler: torch.amp.GradScaler | None = (
            torch.amp.GradScaler(self.device.type) if cfg.amp == "fp16" else None
        )
        self.output_dir = Path(cfg.output_dir)
        _seed_everything(cfg.seed)

        # Data: sources in domain order, the target's query and gallery.
        sources = [build_dataset_from_spec(s, cfg.data_dir) for s in cfg.sources]
        self.sources = MultiSourceDataset(sources, names=list(cfg.sources))
        self.target = build_dataset_from_spec(cfg.target, cfg.data_dir)
        size = (cfg.height, cfg.width)
        self.train_transform = build_train_transform(size, random_erasing_prob=cfg.random_erasing)
        self.test_transform = build_test_transform(size)

        # Model, memories, losses, optimiser.
        self.model = self._build_model().to(self.device)
        feat_dim = self.model.feat_dim
        self.memories = nn.ModuleList(
            MemoryBank(n, feat_dim, momentum=cfg.memory_momentum, update=cfg.memory_update)
            for n in (self.sources.num_classes_per_domain if cfg.id_loss == "memory" else ())
        ).to(self.device)
        self.objective = M3LObjective(
            [cast(MemoryBank, m) for m in self.memories],
            len(cfg.sources),
            id_loss=cfg.id_loss,
            triplet=cfg.triplet,
            memory_loss=MemoryIDLoss(temperature=cfg.temperature),
            triplet_loss=HardTripletLoss(margin=cfg.margin),
            metabn=cfg.method == "m3l",
            memory_update_timing=cfg.memory_update_timing,
            pid_offsets=list(self.sources.pid_offsets),
            autocast=self._autocast,
        )
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = warmup_multistep_scheduler(
            self.optimizer, cfg.warmup_epochs, cfg.warmup_factor, cfg.milestones, cfg.gamma
        )
        self.meta_generator = torch.Generator().manual_seed(cfg.seed + 1)
        self.learner: MetaLearner | None = None
        if cfg.method != "baseline":
            self.learner = MetaLearner(
                self.model,
                self.optimizer,
                inner_optimizer=cfg.inner_optimizer,
                inner_state=cfg.inner_state,
                inner_eps=cfg.inner_eps,
                inner_eps_root=cfg.inner_eps_root,
                first_order=cfg.first_order,
                backend=cfg.backend,
                generator=self.meta_generator,
                grad_scaler=self.grad_scaler,
            )
        self.epoch = 0
        self.iteration = 0
        self.evaluations: list[EvalResult] = []
        self._parts: dict[str, list[float]] = {}
        self.loss_history: list[float] = []  # epoch means of the watched training loss
        self._warned_growth = False
        self.last_features: tuple[Tensor, ...] | None = None

    # ------------------------------------------------------------------ building
    def _build_model(self) -> ReIDModel:
        cfg = self.cfg
        num_classes: int | list[int] | None = None
        if cfg.id_loss == "fc_global":
            num_classes = self.sources.num_combined_classes
        elif cfg.id_loss == "fc_domain":
            num_classes = list(self.sources.num_classes_per_domain)
        pretrained: bool | str = {"imagenet": True, "none": False}.get(
            cfg.pretrained, cfg.pretrained
        )
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
        neck.generator = torch.Generator().manual_seed(cfg.seed + 2)
        if cfg.method != "m3l":  # Table 3 ablations: no MetaBN
            plain = nn.BatchNorm1d(neck.num_features, eps=neck.eps, momentum=neck.momentum)
            plain.load_state_dict(neck.state_dict())
            plain.bias.requires_grad_(neck.bias.requires_grad)
            model.neck = plain  # type: ignore[assignment]  # the ablation swaps the neck
        return model

    # ------------------------------------------------------------------ public API
    def fit(self, resume: bool = False) -> TrainResult:
        """Train for ``config.epochs`` epochs (continuing ``last.pt`` when ``resume``).

        Returns:
            The final and the best (target-selected) accuracy, and all evaluations.
        """
        cfg = self.cfg
        self.output_dir.mkdir(parents=True, exist_ok=True)
        ckpt_path = self.output_dir / "last.pt"
        if resume and ckpt_path.is_file():
            self.load_state(load_checkpoint(ckpt_path, map_location=self.device))
            self._truncate_log()
            self.log(f"resumed from {ckpt_path} after epoch {self.epoch}")
        else:
            if resume:
                self.log(f"no checkpoint at {ckpt_path}: starting from scratch")
            (self.output_dir / "log.jsonl").unlink(missing_ok=True)
            cfg.save(self.output_dir / "config.json")
            self.log(describe_preset(cfg))
            self.log(self.sources.summary())
            for spec, source in zip(cfg.sources, self.sources.datasets, strict=True):
                self.log(source_check_line(spec, source))  # counts against the releases
            self.init_memories()
        while self.epoch < cfg.epochs:
            self.train_epoch()
            last = self.epoch == cfg.epochs
            if last or (cfg.eval_every and self.epoch % cfg.eval_every == 0):
                self._record_eval(self.evaluate())
            save_checkpoint(self.state_dict(), ckpt_path)
        if not self.evaluations or self.evaluations[-1].epoch != self.epoch:
            self._record_eval(self.evaluate())
        final = self.evaluations[-1]
        best = max(self.evaluations, key=lambda r: (r.mAP, r.epoch))
        result = TrainResult(final, best, list(self.evaluations), self.output_dir)
        self.log(format_results({run_label(cfg): result}))
        if cfg.final_targets:  # every split of every final target, with the same model
            from metareid.engine.protocol import evaluate_final_targets

            result.splits = evaluate_final_targets(self)
        if cfg.plots:
            self._pictures()
        return result

    def init_memories(self) -> None:
        """Memory initialisation (Sec. 3.3): the mean eval-mode feature of each identity."""
        for domain, memory in enumerate(self.memories):
            loader = self._test_loader(self.sources.per_domain_train[domain])
            with self._autocast():
                feats, pids, _ = extract_features(self.model, loader, self.device, normalize=False)
            cast(MemoryBank, memory).init_from(feats.float().to(self.device), pids.to(self.device))

    def train_epoch(self) -> None:
        """One epoch of ``iters_per_epoch`` meta-iterations."""
        cfg = self.cfg
        loaders = [
            build_train_loader(
                records,
                self.train_transform,
                num_identities=cfg.num_identities,
                num_instances=cfg.num_instances,
                infinite=True,
                num_workers=cfg.workers,
                pin_memory=self.device.type == "cuda",
                seed=(cfg.seed, domain, self.epoch),
            )
            for domain, records in enumerate(self.sources.per_domain_train)
        ]
        batches = MultiDomainBatchIterator(loaders)
        self.model.train()
        lr = self.optimizer.param_groups[0]["lr"]
        progress = _progress(
            cfg.iters_per_epoch, f"epoch {self.epoch + 1}/{cfg.epochs}", cfg.progress
        )
        start = time.perf_counter()
        with self._log_file() as logf:
            for i in progress:
                raw = next(batches)
                batch = [self._to_device(b) for b in raw]
                losses = self._iteration(batch)
                self.iteration += 1
                if (i + 1) % cfg.log_every == 0 or i + 1 == cfg.iters_per_epoch:
                    rec = {
                        "kind": "iter",
                        "epoch": self.epoch,
                        "iter": self.iteration,
                        "lr": lr,
                        **losses,
                    }
                    logf.write(json.dumps(rec) + "\n")
                if hasattr(progress, "set_postfix"):
                    progress.set_postfix(
                        {k: f"{v:.3f}" for k, v in losses.items() if k.endswith("loss")}
                    )
            elapsed = time.perf_counter() - start
            rec = {
                "kind": "epoch",
                "epoch": self.epoch,
                "lr": lr,
                "seconds": elapsed,
                "iters_per_second": cfg.iters_per_epoch / elapsed,
                **{k: float(np.mean(v)) for k, v in self._parts.items()},
            }
            logf.write(json.dumps(rec) + "\n")
            self._watch_loss(rec, logf)
        self._parts.clear()
        self.scheduler.step()
        self.epoch += 1

    @torch.no_grad()
    def evaluate(self) -> EvalResult:
        """Retrieval accuracy on the target's query and gallery (Market protocol)."""
        qf, q_pids, q_cams = self._features(self.target.query)
        gf, g_pids, g_cams = self._features(self.target.gallery)
        self.last_features = (qf, q_pids, q_cams, gf, g_pids, g_cams)  # for the pictures
        res = evaluate_features(
            qf, gf, q_pids, g_pids, q_cams, g_cams, metric="euclidean", rerank=self.cfg.rerank
        )
        cmc = res.cmc

        def rank(k: int) -> float:
            return 100.0 * float(cmc[min(k, len(cmc)) - 1])

        return EvalResult(self.epoch, 100.0 * res.mAP, rank(1), rank(5), rank(10), 100.0 * res.mINP)

    def _watch_loss(self, rec: dict[str, Any], logf: Any) -> None:
        """Warn once when the epoch-mean training loss keeps growing (see _loss_is_growing)."""
        key = "meta_train_loss" if "meta_train_loss" in rec else "loss"
        self.loss_history.append(float(rec[key]))
        if self._warned_growth or not _loss_is_growing(self.loss_history):
            return
        self._warned_growth = True
        cfg = self.cfg
        best, last = min(self.loss_history[:-2]), self.loss_history[-1]
        hint = "lower --lr"
        fresh_adam = cfg.inner_state == "fresh" and cfg.inner_optimizer == "adam"
        if cfg.method != "baseline" and not cfg.first_order and fresh_adam:
            hint = (
                "the exact second-order step through a fresh Adam inner step can do this, "
                "above all with --inner-eps-root 0 (docs/meta_learner.md, 'Stability of "
                f"the second-order step'; now inner_eps_root={cfg.inner_eps_root:g}); try "
                "--inner-eps-root 1e-5, --inner-state continue or --first-order"
            )
        message = (
            f"the epoch-mean {key} grew from {best:.3f} to {last:.3f} and stayed above "
            f"{_GROWTH_RATIO:g}x its lowest value for 2 epochs: training is diverging; {hint}"
        )
        self.log(f"warning: {message}")
        logf.write(json.dumps({"kind": "warning", "epoch": self.epoch, "message": message}))
        logf.write("\n")

    # ------------------------------------------------------------------ one iteration
    def _iteration(self, batches: list[dict[str, Any]]) -> dict[str, float]:
        out = self.objective.step(
            self.model, batches, self.optimizer, self.learner, self.grad_scaler
        )
        for k, v in out.items():
            self._parts.setdefault(k, []).append(v)
        return out

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: weights, optimiser, memories, RNGs, history."""
        rng: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "meta": self.meta_generator.get_state(),
            "python": _python_rng_state(),
            "numpy": _numpy_rng_state(),
        }
        neck = self.model.neck
        if isinstance(neck, MetaBN) and neck.generator is not None:
            rng["metabn"] = neck.generator.get_state()
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "format": 1,
            "grad_scaler": None if self.grad_scaler is None else self.grad_scaler.state_dict(),
            "config": self.cfg.to_dict(),
            "epoch": self.epoch,
            "iteration": self.iteration,
            "model": self.model.state_dict(),
            "memories": self.memories.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "evaluations": [e.as_dict() for e in self.evaluations],
            "loss_history": list(self.loss_history),
            "warned_growth": self._warned_growth,
            "rng": rng,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the stored config must match this run's."""
        stored = state.get("config", {})
        current = self.cfg.to_dict()
        diff = sorted(
            k
            for k in set(stored) | set(current)
            if k not in _RESUMABLE_CHANGES and stored.get(k) != current.get(k)
        )
        if diff:
            raise ValueError(
                "the checkpoint was written with a different config; differing keys: "
                + ", ".join(
                    f"{k} (checkpoint {stored.get(k)!r}, now {current.get(k)!r})" for k in diff
                )
            )
        self.model.load_state_dict(state["model"])
        self.memories.load_state_dict(state["memories"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.grad_scaler is not None and state.get("grad_scaler"):
            self.grad_scaler.load_state_dict(state["grad_scaler"])
        self.epoch = int(state["epoch"])
        self.iteration = int(state["iteration"])
        self.evaluations = [EvalResult(**e) for e in state["evaluations"]]
        self.loss_history = [float(v) for v in state.get("loss_history", [])]
        self._warned_growth = bool(state.get("warned_growth", False))
        rng = state["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        self.meta_generator.set_state(rng["meta"].cpu())
        neck = self.model.neck
        if "metabn" in rng and isinstance(neck, MetaBN) and neck.generator is not None:
            neck.generator.set_state(rng["metabn"].cpu())
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
        random.setstate(_to_python_rng_state(rng["python"]))
        np.random.set_state(_to_numpy_rng_state(rng["numpy"]))  # noqa: NPY002 (users' code)

    # ------------------------------------------------------------------ helpers
    def _memory(self, domain: int) -> MemoryBank:
        return cast(MemoryBank, self.memories[domain])

    def _truncate_log(self) -> None:
        """Drop log records written after the checkpoint (by the interrupted run)."""
        path = self.output_dir / "log.jsonl"
        if not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            limit = self.epoch if rec.get("kind") == "eval" else self.epoch - 1
            if rec.get("epoch", 0) <= limit:
                kept.append(line)
        path.write_text("".join(line + "\n" for line in kept))

    def _record_eval(self, res: EvalResult) -> None:
        self.evaluations.append(res)
        with self._log_file() as logf:
            logf.write(json.dumps({"kind": "eval", **res.as_dict()}) + "\n")
        self.log(
            f"epoch {res.epoch}: {self.cfg.target} mAP {res.mAP:.1f}  R1 {res.rank1:.1f}  "
            f"R5 {res.rank5:.1f}  R10 {res.rank10:.1f}"
        )

    @contextlib.contextmanager
    def _log_file(self) -> Iterator[Any]:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / "log.jsonl", "a") as f:
            yield f

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is not None:
            return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)
        return contextlib.nullcontext()

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        nb = self.device.type == "cuda"
        return {
            k: v.to(self.device, non_blocking=nb) if isinstance(v, Tensor) else v
            for k, v in batch.items()
        }

    def _test_loader(self, records: Any) -> Any:
        return build_test_loader(
            records,
            self.test_transform,
            batch_size=self.cfg.eval_batch_size,
            num_workers=self.cfg.workers,
            pin_memory=self.device.type == "cuda",
        )

    def _features(self, records: Any) -> tuple[Tensor, Tensor, Tensor]:
        with self._autocast():
            feats, pids, cams = extract_features(
                self.model, self._test_loader(records), self.device, flip=self.cfg.flip_eval
            )
        return feats.float(), pids, cams

    def _pictures(self) -> None:
        try:
            from metareid.engine._pictures import write_pictures
        except ImportError as exc:  # pragma: no cover - depends on optional extras
            self.log(f"pictures skipped ({exc}); pip install 'metareid[viz]'")
            return
        try:
            for path in write_pictures(self):
                self.log(f"wrote {path}")
        except ImportError as exc:
            self.log(f"pictures skipped ({exc}); pip install 'metareid[viz]'")


_GROWTH_RATIO = 1.25


def _loss_is_growing(history: Sequence[float], patience: int = 2) -> bool:
    """True when the last ``patience`` values all exceed 1.25x the lowest value before them.

    The trainer calls this on the epoch means of the training loss (``meta_train_loss`` for
    meta-learning) and logs one warning the first time it is true.

    Example:
        >>> _loss_is_growing([12.2, 11.2, 16.3, 18.1])
        True
        >>> _loss_is_growing([12.1, 8.8, 7.8, 7.4, 9.0])
        False
    """
    if len(history) <= patience:
        return False
    lowest = min(history[:-patience])
    return all(v > _GROWTH_RATIO * lowest for v in history[-patience:])


def format_results(results: dict[str, TrainResult]) -> str:
    """A results table like the paper's Table 3: last epoch, then target-selected best.

    Example:
        >>> r = EvalResult(10, 40.0, 60.0, 75.0, 80.0, 10.0)
        >>> print(format_results({"m3l -> x": TrainResult(r, r)}))  # doctest: +NORMALIZE_WHITESPACE
        | run | mAP | R1 | R5 | R10 | best mAP* | best R1* | best epoch* |
        |---|---|---|---|---|---|---|---|
        | m3l -> x | 40.0 | 60.0 | 75.0 | 80.0 | 40.0 | 60.0 | 10 |
        * best epoch selected on the target test set (optimistic); report the first columns.
    """
    lines = [
        "| run | mAP | R1 | R5 | R10 | best mAP* | best R1* | best epoch* |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        f, b = r.final, r.best
        lines.append(
            f"| {name} | {f.mAP:.1f} | {f.rank1:.1f} | {f.rank5:.1f} | {f.rank10:.1f} | "
            f"{b.mAP:.1f} | {b.rank1:.1f} | {b.epoch} |"
        )
    lines.append(
        "* best epoch selected on the target test set (optimistic); report the first columns."
    )
    return "\n".join(lines)


def run_label(cfg: TrainConfig) -> str:
    """The row name of a run in results tables: method, preset, target.

    Example:
        >>> run_label(TrainConfig.from_dict({"preset": "published"}))
        'm3l [published] -> market1501'
        >>> run_label(TrainConfig.from_dict({"preset": "published", "memory_update": "mean"}))
        'm3l [published*: memory_update] -> market1501'
    """
    preset = ""
    if cfg.preset != "none":
        dev = preset_deviations(cfg)
        preset = f" [{cfg.preset}" + (f"*: {', '.join(dev)}" if dev else "") + "]"
    return f"{cfg.method}{preset} -> {cfg.target}"


def describe_preset(cfg: TrainConfig) -> str:
    """One line naming the preset and every switch that departs from it.

    Example:
        >>> describe_preset(TrainConfig())
        'preset: none (library defaults; see docs/training.md, Presets)'
    """
    if cfg.preset == "none":
        return "preset: none (library defaults; see docs/training.md, Presets)"
    dev = preset_deviations(cfg)
    if not dev:
        return f"preset: {cfg.preset} (every switch as the preset sets it)"
    changed = ", ".join(f"{k}={v[1]!r} (preset {v[0]!r})" for k, v in dev.items())
    return f"preset: {cfg.preset}, overridden: {changed}"


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(range(total), desc=desc, dynamic_ncols=True, leave=False)
        except ImportError:  # pragma: no cover - tqdm is a dependency
            pass
    return range(total)


def _resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} was asked for but CUDA is not available")
    return device


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - for user transforms that use it
    torch.manual_seed(seed)


def _python_rng_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _to_python_rng_state(state: list[Any]) -> tuple[Any, ...]:
    return (state[0], tuple(state[1]), state[2])


def _numpy_rng_state() -> list[Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    return [
        name,
        torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        int(pos),
        int(has_gauss),
        float(cached),
    ]


def _to_numpy_rng_state(state: list[Any]) -> tuple[Any, ...]:
    name, keys, pos, has_gauss, cached = state
    return (name, keys.numpy().astype(np.uint32), pos, has_gauss, cached)
