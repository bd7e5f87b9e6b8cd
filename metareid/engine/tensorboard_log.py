"""TensorBoard event files of a training run (``tensorboard=True``, ``--tensorboard``).

Needs the ``tensorboard`` package: ``pip install "metareid[tensorboard]"``. Then
``tensorboard --logdir runs/`` shows every run under ``runs/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from metareid.engine.callbacks import Callback
from metareid.engine.results import EvalResult, TrainResult
from metareid.engine.run_view import RunView

__all__ = ["PICTURES", "TensorBoardLog"]

#: The end-of-run pictures (:class:`~metareid.engine.callbacks.EndOfRunPictures`) that
#: :class:`TensorBoardLog` copies into TensorBoard, by file name, with their tags.
PICTURES = {
    "curves.png": "pictures/curves",
    "tsne.png": "pictures/tsne",
    "retrieval.png": "pictures/retrieval",
}

_EVAL_METRICS = ("mAP", "rank1", "rank5", "rank10", "mINP")
# Not numbers to plot per epoch: the record's kind, its step, a mean of domain indices.
_NOT_EPOCH_SCALARS = ("kind", "epoch", "meta_test_domain")


def _summary_writer_class() -> Any:
    """``torch.utils.tensorboard.SummaryWriter``; ``ImportError`` naming the extra."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ImportError(
            f"tensorboard=True (--tensorboard) needs the tensorboard package ({exc}); "
            'install it with: pip install "metareid[tensorboard]"'
        ) from exc
    return SummaryWriter


class TensorBoardLog(Callback):
    """TensorBoard event files in ``<output_dir>/tensorboard`` (rank 0 only).

    Written, with their tags:

    * every logged iteration (every ``log_every`` iterations and at the end of every
      epoch, as in ``log.jsonl``): ``train/<name>`` for every number of the step
      (``train/loss``, ``train/meta_train_loss``, ``train/meta_test_loss``,
      ``train/meta_test_domain``, the gradient norms, ...) and ``train/lr``, at step
      ``trainer.iteration`` (iterations done over all epochs);
    * every epoch: ``epoch/<name>`` for every number of its ``log.jsonl`` record (the
      epoch means of the losses and gradient norms, ``lr``, ``seconds``,
      ``iters_per_second``; not the mean meta-test domain index), at step = the number
      of finished epochs (1 for the first epoch);
    * every evaluation: ``eval/mAP``, ``eval/rank1``, ``eval/rank5``, ``eval/rank10``,
      ``eval/mINP`` (percent), at step :attr:`EvalResult.epoch`;
    * the config as text (``config``) at the start of a fresh run;
    * at the end, the pictures this run drew (``plots=True``, :data:`PICTURES`) as
      images ``pictures/curves``, ``pictures/tsne``, ``pictures/retrieval``, at step =
      the number of epochs; pictures not drawn (plots off, matplotlib missing) are
      skipped. Put this callback after :class:`EndOfRunPictures` (the trainer does).

    A fresh run removes the event files of an earlier run in that folder (as
    :class:`JsonlLog` does with ``log.jsonl``). A resumed run appends a new event file
    with ``purge_step`` = the checkpoint's iteration + 1, so that TensorBoard drops the
    iteration scalars that the interrupted run wrote after its checkpoint. The events are
    flushed after every epoch and the file is closed at the end of ``fit``.

    Args:
        folder: The sub-folder of ``output_dir`` to write into.

    Raises:
        ImportError: ``tensorboard`` is not installed (the message names
            ``pip install "metareid[tensorboard]"``); raised when constructed, so before
            any training.
        ValueError: ``folder`` is empty.

    Example:
        >>> from pathlib import Path
        >>> from types import SimpleNamespace
        >>> TensorBoardLog().log_dir(SimpleNamespace(output_dir=Path("runs/m3l"))).as_posix()
        'runs/m3l/tensorboard'
    """

    def __init__(self, folder: str = "tensorboard") -> None:
        if not isinstance(folder, str) or not folder:
            raise ValueError(f"folder must be a non-empty folder name, got {folder!r}")
        self._writer_class = _summary_writer_class()
        self.folder = folder
        self.writer: Any = None
        self._pictures_before: dict[str, int | None] = {}

    def log_dir(self, trainer: RunView) -> Path:
        """Where the event files of ``trainer`` go."""
        return Path(trainer.output_dir) / self.folder

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: RunView, resumed: bool) -> None:
        if not trainer.is_main:
            return
        self._close()
        log_dir = self.log_dir(trainer)
        if not resumed:
            for old in log_dir.glob("events.out.tfevents.*"):
                old.unlink()
        purge_step = trainer.iteration + 1 if resumed else None
        self.writer = self._writer_class(log_dir=str(log_dir), purge_step=purge_step)
        if not resumed:
            config = json.dumps(trainer.cfg.to_dict(), indent=2)
            self.writer.add_text("config", "```\n" + config + "\n```", 0)
        out = Path(trainer.output_dir)
        self._pictures_before = {name: _mtime(out / name) for name in PICTURES}

    def on_iteration_end(self, trainer: RunView, index: int, losses: dict[str, float]) -> None:
        if self.writer is None:
            return
        cfg = trainer.cfg
        if (index + 1) % cfg.log_every and index + 1 != cfg.iters_per_epoch:
            return
        step = trainer.iteration
        for name, value in losses.items():
            self.writer.add_scalar(f"train/{name}", float(value), step)
        self.writer.add_scalar("train/lr", float(trainer.epoch_lr), step)

    def on_epoch_end(self, trainer: RunView, record: dict[str, Any]) -> None:
        if self.writer is None:
            return
        step = int(record["epoch"]) + 1
        for name, value in record.items():
            if name not in _NOT_EPOCH_SCALARS and isinstance(value, (int, float)):
                self.writer.add_scalar(f"epoch/{name}", float(value), step)

    def on_epoch_complete(self, trainer: RunView) -> None:
        if self.writer is not None:
            self.writer.flush()

    def on_evaluation(self, trainer: RunView, result: EvalResult) -> None:
        if self.writer is None:
            return
        for name in _EVAL_METRICS:
            self.writer.add_scalar(f"eval/{name}", float(getattr(result, name)), result.epoch)

    def on_fit_end(self, trainer: RunView, result: TrainResult) -> None:
        if self.writer is None:
            return
        try:
            out = Path(trainer.output_dir)
            for name, tag in PICTURES.items():
                mtime = _mtime(out / name)
                if mtime is not None and mtime != self._pictures_before.get(name):
                    self.writer.add_image(
                        tag, _read_png(out / name), trainer.epoch, dataformats="HWC"
                    )
        finally:
            self._close()

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _read_png(path: Path) -> Any:
    """The image at ``path`` as an ``(H, W, 3)`` uint8 array (RGB)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _mtime(path: Path) -> int | None:
    """``path``'s modification time in ns, ``None`` when it does not exist."""
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None
