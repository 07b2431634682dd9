from __future__ import annotations

import math

import pytest
import torch

from concatnets.training.metrics import MetricAccumulator, segmentation_scores, topk_correct


def _logits_for(prediction: torch.Tensor, classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(prediction, classes).movedim(-1, 1).float()


def test_segmentation_metrics_on_known_arrays():
    target = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1]]])
    prediction = torch.tensor([[[0, 1, 1, 1], [0, 0, 0, 1]]])
    accumulator = MetricAccumulator("segmentation", ["bg", "fg"])
    accumulator.update(_logits_for(prediction, 2), target)
    scores = accumulator.compute()
    # bg: TP 3, FP 1, FN 1 -> Dice 6/8, IoU 3/5; fg the same by symmetry.
    assert scores["dice_bg"] == pytest.approx(0.75)
    assert scores["iou_fg"] == pytest.approx(0.6)
    assert scores["dice"] == pytest.approx(0.75)
    assert scores["pixel_accuracy"] == pytest.approx(6 / 8)


def test_ignored_pixels_and_absent_classes():
    target = torch.tensor([[[0, -1], [0, 0]]])
    prediction = torch.tensor([[[0, 2], [0, 0]]])
    accumulator = MetricAccumulator("segmentation", ["a", "b", "c"])
    accumulator.update(_logits_for(prediction, 3), target)
    scores = accumulator.compute()
    assert scores["pixel_accuracy"] == 1.0
    assert math.isnan(scores["dice_b"])
    assert scores["dice"] == 1.0  # NaN classes are left out of the mean


def test_accumulates_over_batches():
    matrix = torch.tensor([[5, 0], [0, 0]])
    assert segmentation_scores(matrix, ["x", "y"])["dice"] == 1.0
    accumulator = MetricAccumulator("segmentation", ["x", "y"])
    for _ in range(3):
        accumulator.update(
            _logits_for(torch.ones(1, 2, 2, dtype=torch.long), 2),
            torch.ones(1, 2, 2, dtype=torch.long),
        )
    assert int(accumulator.confusion.sum()) == 12


def test_top1_and_top5_accuracy():
    logits = torch.zeros(4, 10)
    logits[0, 3] = 5  # top-1 correct for target 3
    logits[1, :6] = torch.arange(6, 0, -1).float()  # target 4 ranks 5th
    logits[2, 9] = 5  # target 0 not in top 5 (0 ties with the rest, 9 is first)
    logits[2, 5:9] = 4
    logits[3, 1] = 5  # target 2: wrong at top-1
    target = torch.tensor([3, 4, 0, 2])
    assert topk_correct(logits, target, 1) == 1
    assert topk_correct(logits, target, 5) == 2
    accumulator = MetricAccumulator("classification", [str(i) for i in range(10)])
    accumulator.update(logits, target)
    scores = accumulator.compute()
    assert scores["top1"] == 0.25
    assert scores["top5"] == 0.5


def test_few_classes_report_top1_only():
    accumulator = MetricAccumulator("classification", ["a", "b", "c"])
    accumulator.update(torch.tensor([[1.0, 0, 0], [0, 0, 1.0]]), torch.tensor([0, 1]))
    scores = accumulator.compute()
    assert scores["top1"] == 0.5 and "top5" not in scores
    assert scores["recall_a"] == 1.0 and scores["recall_b"] == 0.0
