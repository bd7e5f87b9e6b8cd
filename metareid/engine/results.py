"""What a training run reports: its evaluations and their tables."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metareid.config import TrainConfig, preset_deviations
from metareid.evaluation.results import EvalResult

__all__ = [
    "EvalResult",
    "SplitResults",
    "TrainResult",
    "describe_preset",
    "format_results",
    "run_label",
]

#: The metrics of an :class:`EvalResult`.
METRICS = ("mAP", "rank1", "rank5", "rank10", "mINP")


@dataclass(frozen=True)
class SplitResults:
    """The accuracy of one target on each of its splits.

    Attributes:
        target: the target spec.
        splits: one result per split, in split order.

    Example:
        >>> res = SplitResults("prid", (EvalResult(1, 10.0, 20.0, 30.0, 40.0, 5.0),
        ...                             EvalResult(1, 20.0, 30.0, 40.0, 50.0, 6.0)))
        >>> res.mean("mAP"), round(res.std("mAP"), 3)
        (15.0, 7.071)
    """

    target: str
    splits: tuple[EvalResult, ...]

    def mean(self, metric: str = "mAP") -> float:
        """Mean of ``metric`` (``mAP``, ``rank1``, ``rank5``, ``rank10``, ``mINP``) over the splits."""
        values = self._values(metric)
        return sum(values) / len(values)

    def std(self, metric: str = "mAP") -> float:
        """Sample standard deviation (n - 1) of ``metric`` over the splits; 0 for one split."""
        values = self._values(metric)
        if len(values) < 2:
            return 0.0
        m = sum(values) / len(values)
        return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))

    def _values(self, metric: str) -> list[float]:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}")
        if not self.splits:
            raise ValueError(f"target {self.target!r} has no evaluated split")
        return [float(getattr(r, metric)) for r in self.splits]

    def as_dict(self) -> dict[str, Any]:
        """Means, standard deviations and the per-split numbers, as plain JSON types."""
        return {
            "target": self.target,
            "num_splits": len(self.splits),
            "mean": {m: self.mean(m) for m in METRICS},
            "std": {m: self.std(m) for m in METRICS},
            "splits": [r.as_dict() for r in self.splits],
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
        >>> run_label(TrainConfig.from_dict({"preset": "published", "memory_update_rule": "mean"}))
        'm3l [published*: memory_update_rule] -> market1501'
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
