"""Training (book Algorithm 1 for every process x prediction x loss): objectives, the loop, EMA, DDP.

from kuosan.train import fit, train_from_config, DenoisingObjective
"""

from ..checkpoint import Checkpoint, CheckpointError, find_checkpoint, load_checkpoint, optimizer_state, save_checkpoint
from .build import build_loss, build_objective, run_meta, train_from_config
from .ema import EMA, ema_decay
from .loop import TrainingDiverged, TrainResult, fit, learning_rate
from .objectives import DenoisingObjective, LossFn, Objective

__all__ = [
    "EMA",
    "Checkpoint",
    "CheckpointError",
    "DenoisingObjective",
    "LossFn",
    "Objective",
    "TrainResult",
    "TrainingDiverged",
    "build_loss",
    "build_objective",
    "ema_decay",
    "find_checkpoint",
    "fit",
    "learning_rate",
    "load_checkpoint",
    "optimizer_state",
    "run_meta",
    "save_checkpoint",
    "train_from_config",
]
