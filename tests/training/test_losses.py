from __future__ import annotations

import pytest
import torch

from concatnets.training.losses import build_loss, crop_to_output, dice_loss


def _perfect_logits(target: torch.Tensor, classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(target, classes).movedim(-1, 1).float() * 50.0


def test_dice_of_perfect_prediction_is_about_zero():
    target = torch.randint(0, 3, (2, 8, 8))
    assert float(dice_loss(_perfect_logits(target, 3), target)) < 1e-4


def test_dice_of_wrong_prediction_is_large():
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, :4] = 1
    wrong = _perfect_logits(1 - target, 2)
    assert float(dice_loss(wrong, target)) > 0.9


def test_dice_ignores_padding_pixels():
    target = torch.ones(1, 4, 4, dtype=torch.long)
    logits = _perfect_logits(target, 2)
    target_with_padding = target.clone()
    target_with_padding[0, 0] = -1
    logits[0, :, 0] = torch.tensor([50.0, 0.0])[:, None]  # wrong only where ignored
    assert float(dice_loss(logits, target_with_padding)) < 1e-4


@pytest.mark.parametrize("name", ["ce", "dice", "ce_dice", "weighted_ce"])
def test_segmentation_losses_are_finite_and_differentiable(name):
    target = torch.randint(0, 2, (2, 8, 8))
    logits = torch.randn(2, 2, 8, 8, requires_grad=True)
    batch = {"target": target, "weight": torch.ones(2, 8, 8)}
    loss = build_loss(name, "segmentation")(logits, batch)
    loss.backward()
    assert torch.isfinite(loss) and logits.grad is not None


def test_weighted_ce_with_unit_weights_equals_ce():
    target = torch.randint(0, 3, (2, 6, 6))
    logits = torch.randn(2, 3, 6, 6)
    batch = {"target": target, "weight": torch.ones(2, 6, 6)}
    weighted = build_loss("weighted_ce", "segmentation")(logits, batch)
    plain = build_loss("ce", "segmentation")(logits, batch)
    torch.testing.assert_close(weighted, plain)


def test_valid_padding_outputs_crop_the_target():
    target = torch.zeros(1, 10, 10, dtype=torch.long)
    target[:, 3:7, 3:7] = 1
    cropped = crop_to_output(target, (4, 4))
    assert cropped.shape == (1, 4, 4) and bool((cropped == 1).all())
    logits = _perfect_logits(cropped, 2)
    assert float(build_loss("dice", "segmentation")(logits, {"target": target})) < 1e-4


def test_dice_is_refused_for_classification():
    with pytest.raises(ValueError, match="does not fit classification"):
        build_loss("dice", "classification")
