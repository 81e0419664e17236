"""Training: the trainer, checkpoints, distributed setup and the end-to-end run pipeline."""

from physforecast.checkpoint import load_checkpoint, save_checkpoint

from .trainer import Trainer, TrainingDivergedError, mse_loss_fn

__all__ = ["Trainer", "TrainingDivergedError", "mse_loss_fn", "save_checkpoint", "load_checkpoint"]
