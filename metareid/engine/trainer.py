"""The M3L trainer: the training loop of Algorithm 1, and the results it reports.

The trainer is assembled from named parts:

* building from the config: :mod:`metareid.engine.build` (model, memories, objective,
  optimiser, schedule, learner);
* the M3L objective (losses, memories, phase handling): :mod:`metareid.engine.objective`;
* the loop, here, with its callbacks (logging, checkpoints, evaluation, pictures,
  divergence warning): :mod:`metareid.engine.callbacks`;
* the distributed plumbing (``torchrun``, ``--micro-batches``): :mod:`metareid.engine._dist`.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from metareid.config import TrainConfig
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
from metareid.distributed import extract_features_sharded
from metareid.engine import _dist, _rng
from metareid.engine.build import (
    build_components,
    build_model_from_config,
    check_second_order,
    resolve_input,
    seed_everything,
    stored_config,
)
from metareid.engine.callbacks import (
    Callback,
    Checkpointing,
    DivergenceWatch,
    EndOfRunPictures,
    JsonlLog,
    PeriodicEvaluation,
)
from metareid.engine.progress import ProgressLines, progress_bar, progress_style
from metareid.engine.results import (
    EvalResult,
    TrainResult,
    describe_preset,
    format_results,
    run_label,
)
from metareid.engine.tensorboard_log import TensorBoardLog
from metareid.evaluation import evaluate_features, extract_features
from metareid.layers.metabn import MetaBN
from metareid.memory.bank import MemoryBank
from metareid.serialization import load_checkpoint, save_checkpoint

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
# ``micro_batches`` is compared through the number of chunks N = processes x micro_batches.
_RESUMABLE_CHANGES = {
    "progress",
    "plots",
    "workers",
    "log_every",
    "device",
    "eval_batch_size",
    "micro_batches",
    "recompute",
    "check_ranks",
    "tensorboard",
    "verify_data",
    "save_checkpoints",
}


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
    The components are built by :func:`metareid.engine.build.build_components`; logs,
    checkpoints, evaluations and pictures are :mod:`~metareid.engine.callbacks`.

    Progress (``config.progress``, rank 0): a tqdm bar when stdout and stderr are
    terminals, otherwise one plain line every ``log_every`` iterations through ``log``
    (:mod:`metareid.engine.progress`), so that a log file holds no ``\\r`` redraws.
    ``config.tensorboard`` adds TensorBoard event files in ``<output_dir>/tensorboard``
    (:class:`~metareid.engine.tensorboard_log.TensorBoardLog`).

    Numerics follow ``config.amp``: float32 by default; ``"bf16"`` / ``"fp16"`` autocast
    the training forwards, the memory initialisation and the evaluation features, and
    ``"fp16"`` adds a ``torch.amp.GradScaler`` (stored in checkpoints).

    Checkpoints (``last.pt``) are written atomically after every epoch; ``fit(resume=True)``
    continues from them and, on CPU with a fixed seed, reproduces the uninterrupted run.
    ``config.save_checkpoints=False`` writes none (nothing to resume from then);
    ``config.verify_data`` decodes every image the run reads before training
    (:meth:`verify_data`).

    Scale-out (docs/distributed.md): under ``torchrun`` the trainer joins the process group
    of the environment, computes on the device of ``LOCAL_RANK`` and trains on its identity
    chunk of every batch, with the whole-batch losses, the global meta-train gradient
    (differentiable all-reduce), the all-reduced outer gradient, a common meta-test
    domain and identical memories on every rank; rank 0 alone writes logs, checkpoints
    and pictures. ``micro_batches=N`` in one process computes the same N chunks one after
    the other and gives what N ranks give; W processes with ``micro_batches=M`` each give
    what W x M ranks give. Every process loads only the images of its own chunks.

    Args:
        config: The run's settings.
        log: Where human-readable lines go (default ``print``).
        callbacks: Extra :class:`~metareid.engine.Callback` objects, called after the
            built-in ones (log, progress lines, divergence watch, evaluation, checkpoint,
            pictures, TensorBoard) at every hook; they see the run through
            :class:`~metareid.engine.RunView`. Default none.

    Example:
        >>> from metareid.engine import TrainConfig, Trainer
        >>> cfg = TrainConfig(data_dir="synthetic_data", sources=("synthetic:0", "synthetic:1"),
        ...                   target="synthetic:2", arch="resnet18", pretrained="none",
        ...                   height=64, width=32, epochs=2, iters_per_epoch=50)
        >>> result = Trainer(cfg).fit()  # doctest: +SKIP
        >>> result.final.mAP  # doctest: +SKIP
    """

    def __init__(
        self,
        config: TrainConfig,
        log: Callable[[str], None] = print,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        for i, cb in enumerate(callbacks):
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks[{i}] must be a Callback, got {type(cb).__name__}")
        config.validate()
        config = resolve_input(config)  # height, width, mean, std: the architecture's
        # Before anything slow: a missing tensorboard package fails here, naming the extra.
        tensorboard = [TensorBoardLog()] if config.tensorboard else []
        self.cfg = cfg = config
        self.plumbing = plumbing = _dist.setup(cfg)
        self.is_main = plumbing.context.is_main
        self._log = log
        self.device = plumbing.device
        self.amp_dtype: torch.dtype | None = {
            "off": None,
            "bf16": torch.bfloat16,
            "fp16": torch.float16,
        }[cfg.amp]
        self.grad_scaler: torch.amp.GradScaler | None = (
            torch.amp.GradScaler(self.device.type) if cfg.amp == "fp16" else None
        )
        self.output_dir = Path(cfg.output_dir)
        seed_everything(cfg.seed)

        # Data: sources in domain order, the target's query and gallery.
        sources = [build_dataset_from_spec(s, cfg.data_dir) for s in cfg.sources]
        self.sources = MultiSourceDataset(sources, names=list(cfg.sources))
        self.target = build_dataset_from_spec(cfg.target, cfg.data_dir)
        if cfg.verify_data:  # before anything is built or written
            self.verify_data()
        assert cfg.height and cfg.width and cfg.mean and cfg.std  # resolve_input filled them
        size, mean, std = (cfg.height, cfg.width), cfg.mean, cfg.std
        self.train_transform = build_train_transform(
            size, random_erasing_prob=cfg.random_erasing, mean=mean, std=std
        )
        self.test_transform = build_test_transform(size, mean=mean, std=std)

        # Model, memories, objective, optimiser, schedule, learner (engine/build.py).
        self.model = build_model_from_config(cfg, self.sources).to(self.device)
        check_second_order(cfg, self.model, self.device)
        for note in getattr(self.model.backbone, "notes", ()):
            self.log(note)
        _dist.broadcast_module_(self.model, plumbing)
        parts = build_components(
            cfg,
            self.model,
            self.sources,
            feat_dim=self.model.feat_dim,
            device=self.device,
            autocast=self._autocast,
            grad_scaler=self.grad_scaler,
            ranks=plumbing.ranks,
        )
        self.memories = parts.memories
        self.objective = parts.objective
        self.split = parts.split
        self.step = parts.step
        self.optimizer = parts.optimizer
        self.scheduler = parts.scheduler
        self.meta_generator = parts.meta_generator
        self.learner = parts.learner

        self.epoch = 0
        self.iteration = 0
        self.epoch_lr = self.optimizer.param_groups[0]["lr"]
        self.evaluations: list[EvalResult] = []
        self._parts: dict[str, list[float]] = {}
        self.last_features: tuple[Tensor, ...] | None = None
        self.jsonl = JsonlLog()
        self.divergence = DivergenceWatch()
        # A bar on a terminal, plain lines in a log file, nothing on ranks > 0.
        self.progress_style = progress_style(cfg.progress and self.is_main)
        lines = [ProgressLines()] if self.progress_style == "lines" else []
        self.callbacks: list[Callback] = [
            self.jsonl,
            *lines,
            self.divergence,
            PeriodicEvaluation(),
            Checkpointing(),
            EndOfRunPictures(),
            *tensorboard,  # after the pictures, which it copies
            *callbacks,
        ]

    # ------------------------------------------------------------------ logging
    def log(self, line: str) -> None:
        """One human-readable line, through the ``log`` given to the constructor."""
        if self.is_main:
            self._log(line)

    def log_record(self, record: dict[str, Any]) -> None:
        """Append one JSON record to ``log.jsonl`` (rank 0 only)."""
        self.jsonl.write(self, record)

    @property
    def loss_history(self) -> list[float]:
        """Epoch means of the watched training loss (see :class:`DivergenceWatch`)."""
        return self.divergence.history

    @loss_history.setter
    def loss_history(self, values: list[float]) -> None:
        self.divergence.history = list(values)

    # ------------------------------------------------------------------ public API
    def fit(self, resume: bool = False) -> TrainResult:
        """Train for ``config.epochs`` epochs (continuing ``last.pt`` when ``resume``).

        Returns:
            The final and the best (target-selected) accuracy, and all evaluations.
        """
        cfg = self.cfg
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        ckpt_path = self.output_dir / Checkpointing.filename
        resumed = False
        if resume and _dist.share_from_main(ckpt_path.is_file(), self.plumbing):
            if self.plumbing.processes:  # rank 0 reads; no shared file system needed
                state = load_checkpoint(ckpt_path) if self.is_main else None
                state = _dist.share_from_main(state, self.plumbing)
            else:
                state = load_checkpoint(ckpt_path, map_location=self.device)
            self.load_state(state)
            resumed = True
        for cb in self.callbacks:
            cb.on_fit_start(self, resumed)
        if resumed:
            self.log(f"resumed from {ckpt_path} after epoch {self.epoch}")
        else:
            if resume:
                self.log(f"no checkpoint at {ckpt_path}: starting from scratch")
            self.log(describe_preset(cfg))
            self.log(self.sources.summary())
            for spec, source in zip(cfg.sources, self.sources.datasets, strict=True):
                self.log(source_check_line(spec, source))  # counts against the releases
            self.init_memories()
        while self.epoch < cfg.epochs:
            self.train_epoch()
            for cb in self.callbacks:
                cb.on_epoch_complete(self)
        if not self.evaluations or self.evaluations[-1].epoch != self.epoch:
            self.record_evaluation(self.evaluate())
        final = self.evaluations[-1]
        best = max(self.evaluations, key=lambda r: (r.mAP, r.epoch))
        result = TrainResult(final, best, list(self.evaluations), self.output_dir)
        self.log(format_results({run_label(cfg): result}))
        if cfg.final_targets:  # every split of every final target, with the same model
            from metareid.engine.protocol import evaluate_final_targets

            result.splits = evaluate_final_targets(self)
        for cb in self.callbacks:
            cb.on_fit_end(self, result)
        return result

    def init_memories(self) -> None:
        """Memory initialisation (Sec. 3.3): the mean eval-mode feature of each identity.

        Under ``torchrun`` every rank extracts a shard of the records and the shards are
        gathered, so every rank initialises from the same features.
        """
        for domain, memory in enumerate(self.memories):
            records = self.sources.per_domain_train[domain]
            with self._autocast():
                if self.plumbing.processes:
                    feats, pids, _ = extract_features_sharded(
                        self.model,
                        records,
                        self._test_loader,
                        self.plumbing.ranks,
                        self.device,
                        normalize=False,
                    )
                else:
                    loader = self._test_loader(records)
                    feats, pids, _ = extract_features(
                        self.model, loader, self.device, normalize=False
                    )
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
                identity_chunk=self.plumbing.identity_chunk,
                sampler=cfg.sampler,
            )
            for domain, records in enumerate(self.sources.per_domain_train)
        ]
        batches = MultiDomainBatchIterator(loaders)
        self.model.train()
        self.epoch_lr = lr = self.optimizer.param_groups[0]["lr"]
        progress: Any = range(cfg.iters_per_epoch)
        if self.progress_style == "bar":
            progress = progress_bar(cfg.iters_per_epoch, f"epoch {self.epoch + 1}/{cfg.epochs}")
        for cb in self.callbacks:
            cb.on_epoch_start(self)
        start = time.perf_counter()
        for i in progress:
            raw = next(batches)
            batch = [self._to_device(b) for b in raw]
            losses = self._iteration(batch)
            self.iteration += 1
            for cb in self.callbacks:
                cb.on_iteration_end(self, i, losses)
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
        for cb in self.callbacks:
            cb.on_epoch_end(self, rec)
        self._parts.clear()
        self.scheduler.step()
        self.epoch += 1
        if cfg.check_ranks and self.plumbing.processes:
            self.check_ranks()

    def verify_data(self) -> None:
        """Decode every image the run will read; raise before training if one fails.

        The images are the sources' training splits, the target's query and gallery, and
        those of every split of the final targets. Rank 0 decodes them
        (:func:`metareid.data.check_images`, one process per CPU) and logs a summary line;
        every rank receives the outcome, so under ``torchrun`` every rank raises. The
        constructor calls this when ``config.verify_data`` is set, before the model is built
        and before anything is written.

        Raises:
            BadImageError: some files cannot be decoded or are empty; the message lists
                every one of them with its reason.
        """
        from metareid.data import BadImageError, check_images, dataset_image_paths
        from metareid.data import format_bad_images as report
        from metareid.engine.protocol import target_splits

        cfg, bad, count = self.cfg, None, 0
        if self.is_main:
            start = time.perf_counter()
            finals = [
                build_dataset_from_spec(split, cfg.data_dir)
                for spec in cfg.final_targets
                for split in target_splits(spec)
            ]
            paths = dataset_image_paths(self.sources.datasets, splits=("train",))
            paths += dataset_image_paths([self.target, *finals], splits=("query", "gallery"))
            paths = list(dict.fromkeys(paths))
            count = len(paths)
            bad = check_images(paths, progress=cfg.progress, desc="verifying images")
            outcome = f"{len(bad):,} cannot be decoded" if bad else "all decode"
            self.log(
                f"verify_data: decoded the {count:,} images of the sources and targets in "
                f"{time.perf_counter() - start:.1f} s: {outcome}"
            )
        bad, count = _dist.share_from_main((bad, count), self.plumbing)
        if bad:
            raise BadImageError(
                f"verify_data: {report(bad, count)}\nReplace or remove these files and start "
                "again; training has not started.",
                path=bad[0].path,
            )

    def check_ranks(self) -> None:
        """Raise ``ValueError`` unless memories and model state agree on every rank.

        Every memory bank and every entry of the model's ``state_dict`` (weights and
        BatchNorm statistics) must be bitwise identical to rank 0's; the error names the
        tensor, the largest difference and the rank. Run after every epoch with
        ``check_ranks=True``; a no-op in one process.
        """
        from metareid.distributed import check_same_across_ranks

        tensors = {f"memory.{d}": self._memory(d).features for d in range(len(self.memories))}
        tensors.update({f"model.{k}": v for k, v in self.model.state_dict().items()})
        check_same_across_ranks(tensors)

    @torch.no_grad()
    def evaluate(self) -> EvalResult:
        """Retrieval accuracy on the target's query and gallery (Market protocol).

        Under ``torchrun`` the features are extracted in shards and gathered, rank 0 ranks
        them and every rank returns its result.
        """
        features = self._sharded_features if self.plumbing.processes else self.features
        qf, q_pids, q_cams = features(self.target.query)
        gf, g_pids, g_cams = features(self.target.gallery)
        self.last_features = (qf, q_pids, q_cams, gf, g_pids, g_cams)  # for the pictures
        if self.plumbing.processes:
            result = self._rank(qf, gf, q_pids, g_pids, q_cams, g_cams) if self.is_main else None
            return cast(EvalResult, _dist.share_from_main(result, self.plumbing))
        return self._rank(qf, gf, q_pids, g_pids, q_cams, g_cams)

    def _rank(self, qf: Tensor, gf: Tensor, *ids: Tensor) -> EvalResult:
        q_pids, g_pids, q_cams, g_cams = ids
        res = evaluate_features(
            qf, gf, q_pids, g_pids, q_cams, g_cams, metric="euclidean", rerank=self.cfg.rerank
        )
        cmc = res.cmc

        def rank(k: int) -> float:
            return 100.0 * float(cmc[min(k, len(cmc)) - 1])

        return EvalResult(self.epoch, 100.0 * res.mAP, rank(1), rank(5), rank(10), 100.0 * res.mINP)

    def record_evaluation(self, res: EvalResult) -> None:
        """Keep ``res``, log it (``log.jsonl`` and a line) and tell the callbacks."""
        self.evaluations.append(res)
        for cb in self.callbacks:
            cb.on_evaluation(self, res)
        self.log(
            f"epoch {res.epoch}: {self.cfg.target} mAP {res.mAP:.1f}  R1 {res.rank1:.1f}  "
            f"R5 {res.rank5:.1f}  R10 {res.rank10:.1f}"
        )

    def save_checkpoint(self, path: Path) -> None:
        """Write :meth:`state_dict` to ``path`` atomically: rank 0, between two barriers."""
        self.plumbing.barrier()
        if self.is_main:
            save_checkpoint(self.state_dict(), path)
        self.plumbing.barrier()

    def _watch_loss(self, rec: dict[str, Any], logf: Any) -> None:
        """The divergence warning on one epoch record, written to the open file ``logf``."""
        self.divergence.observe(self, rec, lambda r: logf.write(json.dumps(r) + "\n"))

    # ------------------------------------------------------------------ one iteration
    def _iteration(self, batches: list[dict[str, Any]]) -> dict[str, float]:
        plumbing, cfg = self.plumbing, self.cfg
        if self.split.num_chunks == 1:  # one process, whole batches: the original streams
            out = self.step(self.model, batches, self.optimizer, self.learner, self.grad_scaler)
        else:
            seed, it = cfg.seed, self.iteration
            out = self.step(
                self.model,
                batches,
                self.optimizer,
                self.learner,
                self.grad_scaler,
                meta_test=None
                if self.learner is None
                else plumbing.meta_test_domain(seed, it, len(batches)),
                generators=plumbing.metabn_generators(seed, it, self.split)
                if cfg.method == "m3l"
                else None,
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
            "python": _rng.python_rng_state(),
            "numpy": _rng.numpy_rng_state(),
        }
        neck = self.model.neck
        if isinstance(neck, MetaBN) and neck.generator is not None:
            rng["metabn"] = neck.generator.get_state()
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "format": 1,
            "num_chunks": self.plumbing.num_chunks,
            "grad_scaler": None if self.grad_scaler is None else self.grad_scaler.state_dict(),
            "config": self.cfg.to_dict(),
            "epoch": self.epoch,
            "iteration": self.iteration,
            "model": self.model.state_dict(),
            "memories": self.memories.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "evaluations": [e.as_dict() for e in self.evaluations],
            "loss_history": list(self.divergence.history),
            "warned_growth": self.divergence.warned,
            "rng": rng,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the stored config must match this run's."""
        current = self.cfg.to_dict()
        stored = stored_config(state.get("config", {}))
        diff = sorted(
            k for k in current if k not in _RESUMABLE_CHANGES and stored.get(k) != current.get(k)
        )
        if diff:
            raise ValueError(
                "the checkpoint was written with a different config; differing keys: "
                + ", ".join(
                    f"{k} (checkpoint {stored.get(k)!r}, now {current.get(k)!r})" for k in diff
                )
            )
        chunks = int(state.get("num_chunks", 1))
        if chunks != self.plumbing.num_chunks:
            raise ValueError(
                f"the checkpoint was written with the batch split into N={chunks} chunks "
                f"(torchrun processes x micro_batches), this run splits it into "
                f"N={self.plumbing.num_chunks}: per-chunk BatchNorm/MetaBN statistics and "
                f"random streams depend on N; resume with W torchrun processes x "
                f"--micro-batches M where W x M = {chunks} (e.g. {chunks} processes, or one "
                f"process with --micro-batches {chunks})"
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
        self.divergence.history = [float(v) for v in state.get("loss_history", [])]
        self.divergence.warned = bool(state.get("warned_growth", False))
        rng = state["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        self.meta_generator.set_state(rng["meta"].cpu())
        neck = self.model.neck
        if "metabn" in rng and isinstance(neck, MetaBN) and neck.generator is not None:
            neck.generator.set_state(rng["metabn"].cpu())
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
        _rng.set_python_rng_state(rng["python"])
        _rng.set_numpy_rng_state(rng["numpy"])

    # ------------------------------------------------------------------ helpers
    def _memory(self, domain: int) -> MemoryBank:
        return cast(MemoryBank, self.memories[domain])

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

    def _sharded_features(self, records: Any) -> tuple[Tensor, Tensor, Tensor]:
        """Evaluation features of ``records``, one shard per rank, gathered (collective)."""
        with self._autocast():
            feats, pids, cams = extract_features_sharded(
                self.model,
                records,
                self._test_loader,
                self.plumbing.ranks,
                self.device,
                flip=self.cfg.flip_eval,
            )
        return feats.float(), pids, cams

    def features(self, records: Any) -> tuple[Tensor, Tensor, Tensor]:
        """Evaluation features of ``records`` in this process (no collective)."""
        with self._autocast():
            feats, pids, cams = extract_features(
                self.model, self._test_loader(records), self.device, flip=self.cfg.flip_eval
            )
        return feats.float(), pids, cams
