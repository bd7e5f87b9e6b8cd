"""Training progress: a tqdm bar on a terminal, plain lines in a log file.

A bar redraws itself with ``\\r``: on a terminal that is what one wants, in a file
(``nohup``, a cluster job, CI) every redraw stays in the log as a fragment. So the
trainer asks :func:`progress_style` where it is writing and shows progress as

* ``"bar"``: a tqdm bar (:func:`progress_bar`) when stdout and stderr are both terminals
  (tqdm draws on stderr, the trainer's lines go to stdout);
* ``"lines"``: otherwise one plain line every ``log_every`` iterations
  (:class:`ProgressLines`), through the trainer's ``log``;
* ``"off"``: with ``progress=False`` (``--no-progress``) or on ranks other than 0.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sequence
from typing import IO, Any, Literal

from metareid.engine.callbacks import Callback
from metareid.engine.run_view import RunView

__all__ = ["ProgressLines", "format_duration", "progress_bar", "progress_style"]

ProgressStyle = Literal["bar", "lines", "off"]


def progress_style(enabled: bool, streams: Sequence[IO[Any]] | None = None) -> ProgressStyle:
    """How to show training progress: ``"bar"``, ``"lines"`` or ``"off"``.

    Args:
        enabled: Whether to show progress at all (``TrainConfig.progress`` on rank 0).
        streams: The streams that must all be terminals for a bar; default
            ``(sys.stdout, sys.stderr)``, read when called.

    Returns:
        ``"off"`` when not ``enabled``; ``"bar"`` when every stream is a TTY;
        ``"lines"`` otherwise (a stream without ``isatty`` counts as no TTY).

    Raises:
        TypeError: ``enabled`` is not a bool.

    Example:
        >>> import io
        >>> progress_style(True, [io.StringIO()]), progress_style(False)
        ('lines', 'off')
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {enabled!r}")
    if not enabled:
        return "off"
    if streams is None:
        streams = (sys.stdout, sys.stderr)
    tty = all(s is not None and getattr(s, "isatty", lambda: False)() for s in streams)
    return "bar" if tty else "lines"


def progress_bar(total: int, desc: str) -> Iterable[int]:
    """``range(total)`` wrapped in a tqdm bar titled ``desc`` (a plain range without tqdm).

    The trainer sets the bar's postfix to the losses after every iteration.

    Example:
        >>> list(progress_bar(3, "epoch 1/1"))  # the bar goes to stderr
        [0, 1, 2]
    """
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return range(total)
    return tqdm(range(total), desc=desc, dynamic_ncols=True, leave=False)


def format_duration(seconds: float) -> str:
    """``seconds`` as ``H:MM:SS`` (hours unbounded; ``?`` when unknown or infinite).

    Example:
        >>> format_duration(754.4), format_duration(90000), format_duration(float("inf"))
        ('0:12:34', '25:00:00', '?')
    """
    if not 0 <= seconds < float("inf"):
        return "?"
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class ProgressLines(Callback):
    """One plain progress line every ``log_every`` iterations and at every epoch's end.

    The lines go through ``trainer.log`` (rank 0 only), with the same cadence as the
    iteration records of ``log.jsonl``::

        epoch 3/60 iter 120/200  loss 5.123  meta_train_loss 2.501  meta_test_loss 2.622
          1.92 it/s (0.521 s/it)  eta 0:00:42 (run 1:39:10)

    (one line). The losses are those whose names end in ``loss``, with 3 decimals, as in
    the bar. Speed and ETAs use the epoch's mean time per iteration so far, counted from
    the start of the epoch (:meth:`on_epoch_start`); the run's ETA counts training
    iterations only, not evaluations.

    Example:
        >>> ProgressLines().line(epoch=2, epochs=60, index=119, iters=200, losses={"loss": 5.1234},
        ...                      seconds=60.0, remaining=11480)
        'epoch 3/60 iter 120/200  loss 5.123  2.00 it/s (0.500 s/it)  eta 0:00:40 (run 1:35:40)'
    """

    def __init__(self) -> None:
        self._start: float | None = None

    def on_epoch_start(self, trainer: RunView) -> None:
        self._start = time.perf_counter()

    def on_iteration_end(self, trainer: RunView, index: int, losses: dict[str, float]) -> None:
        cfg = trainer.cfg
        if (index + 1) % cfg.log_every and index + 1 != cfg.iters_per_epoch:
            return
        now = time.perf_counter()
        start = now if self._start is None else self._start
        remaining = cfg.epochs * cfg.iters_per_epoch - trainer.iteration
        trainer.log(
            self.line(
                epoch=trainer.epoch,
                epochs=cfg.epochs,
                index=index,
                iters=cfg.iters_per_epoch,
                losses=losses,
                seconds=now - start,
                remaining=remaining,
            )
        )

    @staticmethod
    def line(
        *,
        epoch: int,
        epochs: int,
        index: int,
        iters: int,
        losses: dict[str, float],
        seconds: float,
        remaining: int,
    ) -> str:
        """The progress line after iteration ``index`` (0-based) of epoch ``epoch`` (0-based).

        Args:
            epoch: The current epoch, 0-based (printed 1-based, of ``epochs``).
            epochs: Epochs of the run.
            index: The iteration just done, 0-based within the epoch (of ``iters``).
            iters: Iterations per epoch.
            losses: The iteration's numbers; those named ``*loss`` are printed.
            seconds: Time since the epoch started.
            remaining: Iterations left in the whole run.

        Returns:
            One line without ``\\r`` nor ``\\n``.
        """
        done = index + 1
        per_iter = seconds / done
        speed = f"{done / seconds:.2f} it/s" if seconds > 0 else "? it/s"
        eta = format_duration((iters - done) * per_iter)
        eta_run = format_duration(remaining * per_iter)
        parts = [f"epoch {epoch + 1}/{epochs} iter {done}/{iters}"]
        parts += [f"{k} {v:.3f}" for k, v in losses.items() if k.endswith("loss")]
        parts += [f"{speed} ({per_iter:.3f} s/it)", f"eta {eta} (run {eta_run})"]
        return "  ".join(parts)
