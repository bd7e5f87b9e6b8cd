"""What :meth:`Trainer.fit <metareid.engine.Trainer.fit>` does around the iterations.

The training loop (``metareid/engine/trainer.py``) calls the hooks of a list of
:class:`Callback` objects, in list order:

* :class:`JsonlLog`: ``log.jsonl`` (one JSON record per logged iteration, epoch,
  evaluation and warning) and ``config.json``;
* :class:`DivergenceWatch`: one warning when the epoch-mean training loss keeps growing;
* :class:`PeriodicEvaluation`: the target evaluation every ``eval_every`` epochs and after
  the last one;
* :class:`Checkpointing`: ``last.pt`` after every epoch, written atomically (unless
  ``save_checkpoints`` is off);
* :class:`EndOfRunPictures`: ``curves.png``, ``tsne.png`` and ``retrieval.png``;
* :class:`~metareid.engine.progress.ProgressLines` (:mod:`metareid.engine.progress`): one
  plain progress line every ``log_every`` iterations, when ``progress`` is on and stdout
  is not a terminal (on a terminal the loop shows a tqdm bar instead);
* :class:`~metareid.engine.tensorboard_log.TensorBoardLog`
  (:mod:`metareid.engine.tensorboard_log`): TensorBoard event files in
  ``<output_dir>/tensorboard``, with ``tensorboard=True``.

Under ``torchrun`` every rank runs every hook (evaluations and checkpoints involve
collectives), and only rank 0 writes files (:attr:`Trainer.is_main`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metareid.engine.results import EvalResult, TrainResult
from metareid.engine.run_view import RunView

__all__ = [
    "Callback",
    "Checkpointing",
    "DivergenceWatch",
    "EndOfRunPictures",
    "JsonlLog",
    "PeriodicEvaluation",
]

_GROWTH_RATIO = 1.25


class Callback:
    """Hooks of the training loop; every hook does nothing by default.

    Order of the calls in :meth:`Trainer.fit <metareid.engine.Trainer.fit>`:
    ``on_fit_start`` once, then per epoch ``on_epoch_start`` before its first iteration,
    ``on_iteration_end`` after every iteration,
    ``on_epoch_end`` with the epoch record (before the epoch counter moves on),
    ``on_epoch_complete`` (after it moved on: evaluations, checkpoints), and
    ``on_evaluation`` for every evaluation; ``on_fit_end`` with the result.

    Example:
        >>> class CountIterations(Callback):
        ...     def __init__(self):
        ...         self.count = 0
        ...     def on_iteration_end(self, trainer, index, losses):
        ...         self.count += 1
        >>> CountIterations().count
        0
    """

    def on_fit_start(self, trainer: RunView, resumed: bool) -> None:
        """Before the first epoch; ``resumed``: the state was loaded from ``last.pt``."""

    def on_epoch_start(self, trainer: RunView) -> None:
        """Before the first iteration of epoch ``trainer.epoch`` (0-based)."""

    def on_iteration_end(self, trainer: RunView, index: int, losses: dict[str, float]) -> None:
        """After iteration ``index`` (0-based, within the epoch) with its losses."""

    def on_epoch_end(self, trainer: RunView, record: dict[str, Any]) -> None:
        """After the last iteration of epoch ``trainer.epoch`` (0-based), with its record."""

    def on_epoch_complete(self, trainer: RunView) -> None:
        """After the schedule stepped; ``trainer.epoch`` now counts the finished epochs."""

    def on_evaluation(self, trainer: RunView, result: EvalResult) -> None:
        """After every evaluation recorded by the trainer."""

    def on_fit_end(self, trainer: RunView, result: TrainResult) -> None:
        """After the final evaluation."""


class JsonlLog(Callback):
    """``log.jsonl`` and ``config.json`` in ``trainer.output_dir`` (rank 0 only).

    A fresh run removes an old log and writes the config; a resumed run drops the records
    that the interrupted run wrote after its checkpoint. Iteration records are written every
    ``log_every`` iterations and at the end of every epoch.

    Example:
        >>> JsonlLog().filename
        'log.jsonl'
    """

    filename = "log.jsonl"

    def path(self, trainer: RunView) -> Path:
        """Where the log of ``trainer`` is."""
        return Path(trainer.output_dir) / self.filename

    def write(self, trainer: RunView, record: dict[str, Any]) -> None:
        """Append one record (a no-op except on rank 0)."""
        if not trainer.is_main:
            return
        trainer.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.path(trainer), "a") as f:
            f.write(json.dumps(record) + "\n")

    def on_fit_start(self, trainer: RunView, resumed: bool) -> None:
        if not trainer.is_main:
            return
        if resumed:
            self._truncate(trainer)
        else:
            self.path(trainer).unlink(missing_ok=True)
            trainer.cfg.save(trainer.output_dir / "config.json")

    def on_iteration_end(self, trainer: RunView, index: int, losses: dict[str, float]) -> None:
        cfg = trainer.cfg
        if (index + 1) % cfg.log_every == 0 or index + 1 == cfg.iters_per_epoch:
            lr = trainer.epoch_lr
            rec = {"kind": "iter", "epoch": trainer.epoch, "iter": trainer.iteration, "lr": lr}
            self.write(trainer, {**rec, **losses})

    def on_epoch_end(self, trainer: RunView, record: dict[str, Any]) -> None:
        self.write(trainer, record)

    def on_evaluation(self, trainer: RunView, result: EvalResult) -> None:
        self.write(trainer, {"kind": "eval", **result.as_dict()})

    def _truncate(self, trainer: RunView) -> None:
        """Drop log records written after the checkpoint (by the interrupted run)."""
        path = self.path(trainer)
        if not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            limit = trainer.epoch if rec.get("kind") == "eval" else trainer.epoch - 1
            if rec.get("epoch", 0) <= limit:
                kept.append(line)
        path.write_text("".join(line + "\n" for line in kept))


class DivergenceWatch(Callback):
    """Warn once when the epoch-mean training loss keeps growing (:func:`loss_is_growing`).

    Watches ``meta_train_loss`` for meta-learning and ``loss`` for the baseline. The
    history and whether the warning was given travel with checkpoints.

    Example:
        >>> watch = DivergenceWatch()
        >>> watch.history, watch.warned
        ([], False)
    """

    def __init__(self) -> None:
        self.history: list[float] = []
        self.warned = False

    def on_epoch_end(self, trainer: RunView, record: dict[str, Any]) -> None:
        self.observe(trainer, record, lambda rec: trainer.log_record(rec))

    def observe(self, trainer: RunView, record: dict[str, Any], write: Any) -> None:
        """Add ``record``'s loss to the history; warn (``write`` the warning) once."""
        key = "meta_train_loss" if "meta_train_loss" in record else "loss"
        self.history.append(float(record[key]))
        if self.warned or not loss_is_growing(self.history):
            return
        self.warned = True
        cfg = trainer.cfg
        best, last = min(self.history[:-2]), self.history[-1]
        hint = "lower --lr"
        fresh_adam = cfg.inner_state == "fresh" and cfg.inner_optimizer == "adam"
        if cfg.method != "baseline" and cfg.meta_test_grad != "first_order" and fresh_adam:
            hint = (
                "the exact second-order step through a fresh Adam inner step can do this, "
                "above all with --inner-eps-root 0 (docs/meta_learner.md, 'Stability of "
                f"the second-order step'; now inner_eps_root={cfg.inner_eps_root:g}); try "
                "--inner-eps-root 1e-5, --inner-state continue or --meta-test-grad first_order"
            )
        message = (
            f"the epoch-mean {key} grew from {best:.3f} to {last:.3f} and stayed above "
            f"{_GROWTH_RATIO:g}x its lowest value for 2 epochs: training is diverging; {hint}"
        )
        trainer.log(f"warning: {message}")
        write({"kind": "warning", "epoch": trainer.epoch, "message": message})


class PeriodicEvaluation(Callback):
    """Evaluate every ``eval_every`` epochs and after the last epoch.

    Example:
        >>> isinstance(PeriodicEvaluation(), Callback)
        True
    """

    def on_epoch_complete(self, trainer: RunView) -> None:
        cfg = trainer.cfg
        last = trainer.epoch == cfg.epochs
        if last or (cfg.eval_every and trainer.epoch % cfg.eval_every == 0):
            trainer.record_evaluation(trainer.evaluate())


class Checkpointing(Callback):
    """``last.pt`` after every epoch: atomic, written by rank 0 between two barriers.

    With ``save_checkpoints=False`` nothing is written; a fresh run then only notes a
    ``last.pt`` left by an earlier run in the same folder (it is not touched, and no longer
    matches the run's log).

    Example:
        >>> Checkpointing().filename
        'last.pt'
    """

    filename = "last.pt"

    def on_fit_start(self, trainer: RunView, resumed: bool) -> None:
        path = trainer.output_dir / self.filename
        if not trainer.cfg.save_checkpoints and not resumed and trainer.is_main and path.exists():
            trainer.log(f"save_checkpoints is off: {path} is from an earlier run, left as it is")

    def on_epoch_complete(self, trainer: RunView) -> None:
        if trainer.cfg.save_checkpoints:
            trainer.save_checkpoint(trainer.output_dir / self.filename)


class EndOfRunPictures(Callback):
    """Training curves, t-SNE and retrieval grid when ``plots`` is on (rank 0 only).

    Example:
        >>> isinstance(EndOfRunPictures(), Callback)
        True
    """

    def on_fit_end(self, trainer: RunView, result: TrainResult) -> None:
        if not (trainer.cfg.plots and trainer.is_main):
            return
        try:
            from metareid.engine._pictures import write_pictures
        except ImportError as exc:  # pragma: no cover - depends on optional extras
            trainer.log(f"pictures skipped ({exc}); pip install 'metareid[viz]'")
            return
        try:
            for path in write_pictures(trainer):
                trainer.log(f"wrote {path}")
        except ImportError as exc:
            trainer.log(f"pictures skipped ({exc}); pip install 'metareid[viz]'")


def loss_is_growing(history: Sequence[float], patience: int = 2) -> bool:
    """True when the last ``patience`` values all exceed 1.25x the lowest value before them.

    The trainer calls this on the epoch means of the training loss (``meta_train_loss`` for
    meta-learning) and logs one warning the first time it is true.

    Example:
        >>> loss_is_growing([12.2, 11.2, 16.3, 18.1])
        True
        >>> loss_is_growing([12.1, 8.8, 7.8, 7.4, 9.0])
        False
    """
    if len(history) <= patience:
        return False
    lowest = min(history[:-patience])
    return all(v > _GROWTH_RATIO * lowest for v in history[-patience:])
