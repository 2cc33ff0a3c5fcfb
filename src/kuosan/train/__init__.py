"""Training (book Algorithm 1 for every process x prediction x loss): the loop, EMA, checkpoints, DDP.

from kuosan.train import fit, train_from_config, load_model, load_checkpoint
"""

from .build import (
    Dataset,
    build_data,
    build_denoiser,
    build_loss,
    build_network,
    build_process,
    load_model,
    net_arguments,
    train_from_config,
)
from .checkpoint import Checkpoint, find_checkpoint, load_checkpoint, optimizer_state, save_checkpoint
from .ema import EMA, ema_decay
from .generate import generate
from .images import save_grid, save_npz, save_samples, save_scatter
from .loop import TrainingDiverged, TrainResult, fit, learning_rate

__all__ = [
    "EMA",
    "Checkpoint",
    "Dataset",
    "TrainResult",
    "TrainingDiverged",
    "build_data",
    "build_denoiser",
    "build_loss",
    "build_network",
    "build_process",
    "ema_decay",
    "find_checkpoint",
    "fit",
    "generate",
    "learning_rate",
    "load_checkpoint",
    "load_model",
    "net_arguments",
    "optimizer_state",
    "save_checkpoint",
    "save_grid",
    "save_npz",
    "save_samples",
    "save_scatter",
    "train_from_config",
]
