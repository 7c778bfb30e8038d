"""The training engine: trainer, validation loop, hooks, checkpoints, optimisers, schedules, distributed."""

from masklab.engine.checkpoint import (
    export_safetensors,
    find_latest,
    load_checkpoint,
    load_model_weights,
    save_checkpoint,
    write_latest,
)
from masklab.engine.distributed import (
    DistInfo,
    init_distributed,
    is_main_process,
    teardown,
    unwrap,
    wrap_model,
)
from masklab.engine.hooks import (
    CheckpointHook,
    EMAHook,
    EvalHook,
    Hook,
    LoggerHook,
    NonFiniteLossHook,
    TimerHook,
)
from masklab.engine.optim import ParamRule, build_optimizer, build_param_groups, scale_lr
from masklab.engine.schedules import IterScheduler, build_scheduler
from masklab.engine.state import TrainState
from masklab.engine.trainer import Trainer, epochs_to_iters
from masklab.engine.val_loop import ValLoop

__all__ = [
    "CheckpointHook",
    "DistInfo",
    "EMAHook",
    "EvalHook",
    "Hook",
    "IterScheduler",
    "LoggerHook",
    "NonFiniteLossHook",
    "ParamRule",
    "TimerHook",
    "TrainState",
    "Trainer",
    "ValLoop",
    "build_optimizer",
    "build_param_groups",
    "build_scheduler",
    "epochs_to_iters",
    "export_safetensors",
    "find_latest",
    "init_distributed",
    "is_main_process",
    "load_checkpoint",
    "load_model_weights",
    "save_checkpoint",
    "scale_lr",
    "teardown",
    "unwrap",
    "write_latest",
    "wrap_model",
]
