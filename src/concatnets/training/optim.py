"""Optimizers and learning-rate schedules by name."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["OPTIMIZERS", "SCHEDULES", "advance_schedule", "build_optimizer", "build_scheduler"]

OPTIMIZERS: tuple[str, ...] = ("sgd", "adam", "adamw")
SCHEDULES: tuple[str, ...] = ("constant", "cosine", "step")
# AdamW's decoupled decay is meant to be on (Loshchilov & Hutter 2019); the others default off.
_DEFAULT_WEIGHT_DECAY = {"sgd": 0.0, "adam": 0.0, "adamw": 0.01}


def build_optimizer(
    name: str,
    parameters: Iterable[nn.Parameter],
    *,
    lr: float,
    weight_decay: float | None = None,
    momentum: float = 0.9,
) -> Optimizer:
    """Build ``sgd`` (Nesterov momentum), ``adam`` or ``adamw``.

    Args:
        name: One of :data:`OPTIMIZERS`.
        parameters: Parameters to optimize.
        lr: Learning rate.
        weight_decay: L2 / decoupled weight decay; ``None`` uses 0 (sgd, adam) or 0.01 (adamw).
        momentum: SGD momentum.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
    if lr <= 0:
        raise ValueError(f"learning rate {lr} must be positive; e.g. --lr 1e-3")
    decay = _DEFAULT_WEIGHT_DECAY[name] if weight_decay is None else weight_decay
    if name == "sgd":
        return torch.optim.SGD(
            parameters, lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=decay
        )
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=decay)
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=decay)


def build_scheduler(
    name: str, optimizer: Optimizer, *, epochs: int, step_size: int = 30, gamma: float = 0.1
) -> LRScheduler:
    """Build a per-epoch schedule: call ``scheduler.step()`` once after each epoch.

    Args:
        name: ``constant``, ``cosine`` (to zero over ``epochs``, Loshchilov & Hutter 2017)
            or ``step`` (multiply by ``gamma`` every ``step_size`` epochs).
        optimizer: The optimizer whose learning rate is scheduled.
        epochs: Total training epochs.
        step_size: Epochs between decays of ``step``.
        gamma: Decay factor of ``step``.
    """
    if name == "constant":
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    if name == "step":
        if step_size < 1:
            raise ValueError(f"--step-size {step_size} must be at least 1 epoch")
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    raise ValueError(f"unknown schedule {name!r}; choose from {', '.join(SCHEDULES)}")


def _closed_form_lr(scheduler: LRScheduler, base_lr: float, epoch: int) -> float:
    if isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
        low = scheduler.eta_min
        return low + (base_lr - low) * (1 + math.cos(math.pi * epoch / scheduler.T_max)) / 2
    if isinstance(scheduler, torch.optim.lr_scheduler.StepLR):
        return base_lr * scheduler.gamma ** (epoch // scheduler.step_size)
    if isinstance(scheduler, torch.optim.lr_scheduler.ConstantLR):
        return base_lr * (scheduler.factor if epoch < scheduler.total_iters else 1.0)
    raise TypeError(f"no closed form for {type(scheduler).__name__}")


def advance_schedule(scheduler: LRScheduler, epoch: int) -> None:
    """Put a fresh schedule from :func:`build_scheduler` at ``epoch`` in O(1).

    The learning rate of every parameter group is set from the schedule's closed form
    (cosine: ``eta_min + (base - eta_min) (1 + cos(pi epoch / T_max)) / 2``; step:
    ``base * gamma ** (epoch // step_size)``), so even a huge epoch count costs nothing.

    Args:
        scheduler: A schedule that has not been stepped yet.
        epoch: Epochs completed.
    """
    if epoch < 0:
        raise ValueError(f"epoch {epoch} must not be negative")
    rates = [_closed_form_lr(scheduler, base, epoch) for base in scheduler.base_lrs]
    for group, rate in zip(scheduler.optimizer.param_groups, rates, strict=True):
        group["lr"] = rate
    scheduler.last_epoch = epoch
    scheduler._last_lr = list(rates)  # what get_last_lr() reports
