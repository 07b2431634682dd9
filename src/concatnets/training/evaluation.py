"""Running a model over a labelled loader: loss and metrics."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from concatnets.training.distributed import DistributedContext, all_reduce_mean
from concatnets.training.losses import LossFn
from concatnets.training.metrics import MetricAccumulator

__all__ = ["EvaluationResult", "autocast", "evaluate_model", "to_device"]


@dataclass
class EvaluationResult:
    """Metrics of one pass over a dataset.

    Args:
        loss: Mean loss per sample, or ``None`` without a loss function.
        metrics: See :class:`~concatnets.training.metrics.MetricAccumulator`.
        confusion: ``(C, C)`` counts on the CPU, rows = true class.
        num_samples: Samples seen (by this process).
    """

    loss: float | None
    metrics: dict[str, float]
    confusion: Tensor
    num_samples: int


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` when ``enabled``, else a no-op context.

    Args:
        device: Where the model runs.
        enabled: The ``--bf16`` switch.
    """
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def to_device(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    """Move every tensor of a batch to ``device``."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    loader: DataLoader,
    *,
    task: str,
    class_names: Sequence[str],
    device: torch.device,
    loss_fn: LossFn | None = None,
    bf16: bool = False,
    progress: bool = False,
    ctx: DistributedContext | None = None,
    description: str = "evaluate",
) -> EvaluationResult:
    """Evaluate ``model`` on every batch of ``loader`` in eval mode.

    Args:
        model: The model (possibly DDP-wrapped).
        loader: Yields batches from :class:`~concatnets.data.LabelledDataset`.
        task: ``'segmentation'`` or ``'classification'``.
        class_names: One name per class.
        device: Where the model runs.
        loss_fn: Also average this loss, if given.
        bf16: bfloat16 autocast.
        progress: Show a progress bar.
        ctx: Distributed context; counts are summed over processes.
        description: Progress bar label.
    """
    accumulator = MetricAccumulator(task, class_names, device)
    loss_sum, seen = 0.0, 0
    with _eval_mode(model):
        for batch in tqdm(
            loader, desc=description, leave=False, disable=None if progress else True
        ):
            batch = to_device(batch, device)
            with autocast(device, bf16):
                logits = model(batch["image"])
            logits = logits.float()
            accumulator.update(logits, batch["target"])
            count = batch["image"].shape[0]
            if loss_fn is not None:
                loss_sum += float(loss_fn(logits, batch)) * count
            seen += count
    if ctx is not None and ctx.is_distributed:
        dist.all_reduce(accumulator.confusion)
        dist.all_reduce(accumulator.top5_hits)
    loss = loss_sum / seen if loss_fn is not None and seen else None
    if loss is not None and ctx is not None:
        loss = all_reduce_mean(loss, ctx)
    return EvaluationResult(loss, accumulator.compute(), accumulator.confusion.cpu(), seen)
