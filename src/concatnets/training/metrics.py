"""Evaluation metrics, accumulated over batches from a confusion matrix.

Segmentation: Dice ``2TP / (2TP + FP + FN)`` and IoU ``TP / (TP + FP + FN)`` per class,
their means over classes that occur (in targets or predictions), and pixel accuracy.
Classification: top-1 accuracy, top-5 accuracy when there are more than five classes,
and per-class recall. All counts are integers, so they can be summed across processes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from concatnets.training.losses import crop_to_output

__all__ = ["MetricAccumulator", "primary_metric", "segmentation_scores", "topk_correct"]


def primary_metric(task: str) -> str:
    """The metric that selects the best checkpoint: ``'dice'`` or ``'top1'``."""
    return "dice" if task == "segmentation" else "top1"


def topk_correct(logits: Tensor, target: Tensor, k: int) -> int:
    """How many rows of ``logits`` rank the target class among their ``k`` highest scores.

    >>> topk_correct(torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]]), torch.tensor([2, 1]), 2)
    2

    Args:
        logits: ``(N, C)`` scores.
        target: ``(N,)`` class indices.
        k: How many top classes count as a hit.
    """
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return int((top == target[:, None]).any(dim=1).sum())


def segmentation_scores(confusion: Tensor, class_names: Sequence[str]) -> dict[str, float]:
    """Dice, IoU (per class and mean) and pixel accuracy from a confusion matrix.

    Classes absent from both targets and predictions score NaN and are left out of
    the means.

    Args:
        confusion: ``(C, C)`` counts, rows = target class, columns = predicted class.
        class_names: Name of each class, used in the per-class keys.
    """
    matrix = confusion.double()
    true_positive = matrix.diag()
    false_positive = matrix.sum(0) - true_positive
    false_negative = matrix.sum(1) - true_positive
    dice_denominator = 2 * true_positive + false_positive + false_negative
    iou_denominator = true_positive + false_positive + false_negative
    nan = torch.full_like(true_positive, math.nan)
    dice = torch.where(dice_denominator > 0, 2 * true_positive / dice_denominator, nan)
    iou = torch.where(iou_denominator > 0, true_positive / iou_denominator, nan)
    total = matrix.sum()
    scores = {
        "dice": _nanmean(dice),
        "iou": _nanmean(iou),
        "pixel_accuracy": float(true_positive.sum() / total) if total > 0 else math.nan,
    }
    for index, name in enumerate(class_names):
        scores[f"dice_{name}"] = float(dice[index])
        scores[f"iou_{name}"] = float(iou[index])
    return scores


def _nanmean(values: Tensor) -> float:
    finite = values[~values.isnan()]
    return float(finite.mean()) if finite.numel() else math.nan


class MetricAccumulator:
    """Accumulates predictions batch by batch; :meth:`compute` gives the metrics.

    Args:
        task: ``'segmentation'`` or ``'classification'``.
        class_names: One name per class.
        device: Where the counts live (the model's device avoids transfers).
    """

    def __init__(
        self, task: str, class_names: Sequence[str], device: torch.device | str = "cpu"
    ) -> None:
        self.task = task
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.confusion = torch.zeros(
            (self.num_classes, self.num_classes), dtype=torch.int64, device=device
        )
        self.top5_hits = torch.zeros((), dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, logits: Tensor, target: Tensor) -> None:
        """Add a batch: logits ``(N, C, *spatial)`` or ``(N, C)``, targets without ``C``."""
        if self.task == "segmentation":
            target = crop_to_output(target, tuple(logits.shape[2:]))
        prediction = logits.argmax(dim=1)
        valid = target >= 0
        pairs = target[valid] * self.num_classes + prediction[valid]
        self.confusion += torch.bincount(pairs, minlength=self.num_classes**2).view(
            self.num_classes, self.num_classes
        )
        if self.task == "classification" and self.num_classes > 5:
            self.top5_hits += topk_correct(logits, target, 5)

    def compute(self) -> dict[str, float]:
        """The metrics so far; keys are listed in the module notes."""
        confusion = self.confusion.cpu()
        if self.task == "segmentation":
            return segmentation_scores(confusion, self.class_names)
        total = int(confusion.sum())
        scores = {"top1": float(confusion.diag().sum()) / total if total else math.nan}
        if self.num_classes > 5:
            scores["top5"] = float(self.top5_hits) / total if total else math.nan
        recall = confusion.diag().double() / confusion.sum(1).double()
        for index, name in enumerate(self.class_names):
            scores[f"recall_{name}"] = float(recall[index])
        return scores
