"""Training workflow for the MoE GPT (:mod:`namex_ref.models.gpt`).

* :class:`TrainConfig` — one frozen dataclass; ``namex train`` flags are derived from it.
* :func:`train` — one run -> :class:`TrainResult` (metrics.jsonl, checkpoints, plots, result.json);
  its model comes from a :class:`ModelBuilder` (:data:`GPT_BUILDER` by default).
* :func:`compare` — methods × seeds -> :class:`CompareResult` (mean ± 95% CI table, plot, JSON).
"""

from namex_ref.train.builder import GPT_BUILDER, ModelBuilder
from namex_ref.train.checkpoint import (
    Checkpoint,
    CheckpointWriteError,
    CorruptCheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from namex_ref.train.comparison import CompareResult, MethodSummary, compare, mean_ci
from namex_ref.train.config import TrainConfig
from namex_ref.train.data import TokenData, batch_for_step, load_token_data
from namex_ref.train.flags import add_config_arguments, config_from_args
from namex_ref.train.loop import (
    NonFiniteLossError,
    TrainResult,
    evaluate,
    lr_at,
    read_result,
    train,
)
from namex_ref.train.plots import plot_run

__all__ = [
    "GPT_BUILDER",
    "Checkpoint",
    "CheckpointWriteError",
    "CompareResult",
    "CorruptCheckpointError",
    "MethodSummary",
    "ModelBuilder",
    "NonFiniteLossError",
    "TokenData",
    "TrainConfig",
    "TrainResult",
    "add_config_arguments",
    "batch_for_step",
    "compare",
    "config_from_args",
    "evaluate",
    "load_checkpoint",
    "load_token_data",
    "lr_at",
    "mean_ci",
    "plot_run",
    "read_result",
    "save_checkpoint",
    "train",
]
