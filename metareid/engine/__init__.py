"""Training engine: the M3L trainer, its configuration, schedule and checkpoints."""

from metareid.engine.checkpoint import load_checkpoint, save_checkpoint
from metareid.engine.config import METHODS, TrainConfig
from metareid.engine.schedule import warmup_multistep_factor, warmup_multistep_scheduler
from metareid.engine.trainer import (
    EvalResult,
    Trainer,
    TrainResult,
    build_dataset_from_spec,
    format_results,
)

__all__ = [
    "METHODS",
    "EvalResult",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "build_dataset_from_spec",
    "format_results",
    "load_checkpoint",
    "save_checkpoint",
    "warmup_multistep_factor",
    "warmup_multistep_scheduler",
]
