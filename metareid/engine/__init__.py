"""Training engine: one M3L iteration (split, objective, step), the trainer around it,
its callbacks, results and protocols."""

from metareid.config import METHODS, PRESETS, TrainConfig, preset_deviations
from metareid.engine.build import TrainingComponents, build_components, build_model_from_config
from metareid.engine.callbacks import Callback
from metareid.engine.chunks import BatchOutputs, BatchSplit, DataParallelSplit, IdentitySplit
from metareid.engine.objective import M3LObjective
from metareid.engine.progress import ProgressLines, progress_style
from metareid.engine.protocol import (
    apply_protocol,
    evaluate_final_targets,
    format_split_table,
    protocol_table,
)
from metareid.engine.results import (
    EvalResult,
    SplitResults,
    TrainResult,
    describe_preset,
    format_results,
    run_label,
)
from metareid.engine.run_view import RunView
from metareid.engine.schedule import warmup_multistep_factor, warmup_multistep_scheduler
from metareid.engine.step import M3LStep
from metareid.engine.tensorboard_log import TensorBoardLog
from metareid.engine.trainer import Trainer, build_dataset_from_spec
from metareid.serialization import load_checkpoint, save_checkpoint

__all__ = [
    "METHODS",
    "PRESETS",
    "BatchOutputs",
    "BatchSplit",
    "Callback",
    "DataParallelSplit",
    "EvalResult",
    "IdentitySplit",
    "M3LObjective",
    "M3LStep",
    "ProgressLines",
    "RunView",
    "SplitResults",
    "TensorBoardLog",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingComponents",
    "apply_protocol",
    "build_components",
    "build_dataset_from_spec",
    "build_model_from_config",
    "describe_preset",
    "evaluate_final_targets",
    "format_results",
    "format_split_table",
    "load_checkpoint",
    "preset_deviations",
    "progress_style",
    "protocol_table",
    "run_label",
    "save_checkpoint",
    "warmup_multistep_factor",
    "warmup_multistep_scheduler",
]
