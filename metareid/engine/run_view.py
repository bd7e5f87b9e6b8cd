"""What the training loop's helpers see of a run: :class:`RunView`.

Callbacks (:mod:`metareid.engine.callbacks`), the end-of-run pictures and the final
evaluation of protocol targets (:mod:`metareid.engine.protocol`) work on a run through
this interface, not through the :class:`~metareid.engine.Trainer` class, so that none of
them imports the trainer (the trainer imports them). The trainer is a ``RunView``; so is
any object with these members.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from metareid.config import TrainConfig
from metareid.data import MultiSourceDataset, ReIDDataset
from metareid.evaluation.results import EvalResult

__all__ = ["RunView"]


class RunView(Protocol):
    """The members of a training run that its callbacks and helpers use.

    Attributes:
        cfg: the run's settings.
        epoch: finished epochs (during ``on_epoch_end``: the 0-based current one).
        iteration: iterations done, over all epochs.
        epoch_lr: the learning rate of the current epoch.
        output_dir: where the run writes.
        is_main: whether this process writes files (rank 0 under ``torchrun``).
        model: the network.
        device: where it computes.
        sources: the source domains.
        target: the target dataset.
        test_transform: the evaluation transform.
        last_features: the last evaluation's ``(qf, q_pids, q_cams, gf, g_pids, g_cams)``.

    All are read-only for the helpers.
    """

    @property
    def cfg(self) -> TrainConfig: ...

    @property
    def epoch(self) -> int: ...

    @property
    def iteration(self) -> int: ...

    @property
    def epoch_lr(self) -> float: ...

    @property
    def output_dir(self) -> Path: ...

    @property
    def is_main(self) -> bool: ...

    @property
    def model(self) -> nn.Module: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def sources(self) -> MultiSourceDataset: ...

    @property
    def target(self) -> ReIDDataset: ...

    @property
    def test_transform(self) -> Any: ...

    @property
    def last_features(self) -> tuple[Tensor, ...] | None: ...

    def log(self, line: str) -> None:
        """One human-readable line (rank 0 only)."""

    def log_record(self, record: dict[str, Any]) -> None:
        """One JSON record in ``log.jsonl`` (rank 0 only)."""

    def evaluate(self) -> EvalResult:
        """The target accuracy of the model now."""

    def record_evaluation(self, res: EvalResult) -> None:
        """Keep ``res``, log it and tell the callbacks."""

    def save_checkpoint(self, path: Path) -> None:
        """Write everything needed to resume to ``path``."""

    def features(self, records: Sequence[Any]) -> tuple[Tensor, Tensor, Tensor]:
        """Evaluation features, ids and cameras of ``records`` (this process)."""
