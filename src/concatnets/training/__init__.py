"""Training: losses, metrics, the trainer, checkpoints, and loading trained models.

The one-call entry point is :func:`run_training` with a :class:`TrainConfig`; the
``concatnets train`` command is a thin layer over it.
"""

from __future__ import annotations

from concatnets.training.border_weights import connected_components, unet_weight_map
from concatnets.training.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    load_model_weights,
    save_checkpoint,
)
from concatnets.training.config import TrainConfig, apply_settings, load_config_file
from concatnets.training.evaluation import EvaluationResult, evaluate_model
from concatnets.training.interrupt import TrainingInterrupted
from concatnets.training.loading import TrainedModel, load_trained_model
from concatnets.training.losses import build_loss, dice_loss, weighted_cross_entropy
from concatnets.training.metrics import MetricAccumulator, segmentation_scores, topk_correct
from concatnets.training.optim import build_optimizer, build_scheduler
from concatnets.training.rng import capture_rng_state, restore_rng_state, seed_everything
from concatnets.training.runner import TrainResult, run_training
from concatnets.training.trainer import Trainer, TrainerState, TrainingDivergedError

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "EvaluationResult",
    "MetricAccumulator",
    "TrainConfig",
    "TrainResult",
    "TrainedModel",
    "Trainer",
    "TrainerState",
    "TrainingDivergedError",
    "TrainingInterrupted",
    "apply_settings",
    "build_loss",
    "build_optimizer",
    "build_scheduler",
    "capture_rng_state",
    "connected_components",
    "dice_loss",
    "evaluate_model",
    "load_checkpoint",
    "load_config_file",
    "load_model_weights",
    "load_trained_model",
    "restore_rng_state",
    "run_training",
    "save_checkpoint",
    "seed_everything",
    "segmentation_scores",
    "topk_correct",
    "unet_weight_map",
    "weighted_cross_entropy",
]
