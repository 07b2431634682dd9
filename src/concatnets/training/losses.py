"""Losses for classification and segmentation.

- ``ce``: cross-entropy (optionally label-smoothed).
- ``dice``: soft Dice loss, ``1 - mean_c Dice_c`` over classes, computed over the whole
  batch (Milletari et al. 2016, V-Net, arXiv 1606.04797).
- ``ce_dice``: the sum of the two, a common robust default for segmentation.
- ``weighted_ce``: cross-entropy weighted per pixel by the U-Net paper's border weight
  map (Ronneberger et al. 2015, Eq. 1-2); the map comes with each batch as ``weight``,
  see :mod:`concatnets.training.border_weights`.

Every loss takes ``(logits, batch)``: logits ``(N, C, *spatial)`` or ``(N, C)`` and the
batch dict with ``target`` (and ``weight``). Pixels whose target is negative (padding)
are ignored. When a valid-convolution U-Net returns a smaller output than its input,
targets are centre-cropped to the output.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "CLASSIFICATION_LOSSES",
    "SEGMENTATION_LOSSES",
    "LossFn",
    "build_loss",
    "crop_to_output",
    "dice_loss",
    "weighted_cross_entropy",
]

LossFn = Callable[[Tensor, dict[str, Tensor]], Tensor]

SEGMENTATION_LOSSES: tuple[str, ...] = ("ce", "dice", "ce_dice", "weighted_ce")
CLASSIFICATION_LOSSES: tuple[str, ...] = ("ce",)
_IGNORE = -1


def crop_to_output(target: Tensor, spatial: tuple[int, ...]) -> Tensor:
    """Centre-crop the trailing dims of ``target`` to ``spatial`` (a no-op when equal).

    Args:
        target: ``(N, *spatial_in)`` tensor.
        spatial: Output spatial size of the model.
    """
    current = tuple(target.shape[-len(spatial) :])
    if current == tuple(spatial):
        return target
    if any(c < s for c, s in zip(current, spatial, strict=True)):
        raise ValueError(
            f"model output {tuple(spatial)} is larger than its target {current}; "
            "the model must not upsample beyond its input"
        )
    index = [slice(None)] * (target.dim() - len(spatial))
    for c, s in zip(current, spatial, strict=True):
        start = (c - s) // 2
        index.append(slice(start, start + s))
    return target[tuple(index)]


def dice_loss(logits: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """Soft Dice loss over all classes of a batch; ignored pixels (< 0) do not count.

    Args:
        logits: ``(N, C, *spatial)`` raw scores.
        target: ``(N, *spatial)`` class indices.
        smooth: Added to numerator and denominator; makes absent classes score 1.
    """
    num_classes = logits.shape[1]
    probabilities = logits.float().softmax(dim=1)
    valid = target >= 0
    one_hot = F.one_hot(target.clamp(min=0), num_classes).movedim(-1, 1).float()
    weight = valid.unsqueeze(1).float()
    dims = [0, *range(2, logits.dim())]
    intersection = (probabilities * one_hot * weight).sum(dims)
    total = (probabilities * weight).sum(dims) + (one_hot * weight).sum(dims)
    dice = (2.0 * intersection + smooth) / (total + smooth)
    return 1.0 - dice.mean()


def weighted_cross_entropy(logits: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Pixel-weighted cross-entropy: ``sum(w * ce) / number of valid pixels``.

    Args:
        logits: ``(N, C, *spatial)`` raw scores.
        target: ``(N, *spatial)`` class indices; negative values are ignored.
        weight: ``(N, *spatial)`` per-pixel weights.
    """
    per_pixel = F.cross_entropy(logits.float(), target, ignore_index=_IGNORE, reduction="none")
    valid = (target >= 0).float()
    return (per_pixel * weight * valid).sum() / valid.sum().clamp(min=1.0)


def _segmentation_target(logits: Tensor, batch: dict[str, Tensor], key: str) -> Tensor:
    return crop_to_output(batch[key], tuple(logits.shape[2:]))


def build_loss(name: str, task: str, *, label_smoothing: float = 0.0) -> LossFn:
    """Return the loss ``name`` for ``task`` as a ``(logits, batch) -> scalar`` function.

    Args:
        name: One of :data:`SEGMENTATION_LOSSES` or :data:`CLASSIFICATION_LOSSES`.
        task: ``'segmentation'`` or ``'classification'``.
        label_smoothing: Label smoothing of the cross-entropy term.
    """
    allowed = SEGMENTATION_LOSSES if task == "segmentation" else CLASSIFICATION_LOSSES
    if name not in allowed:
        raise ValueError(f"loss {name!r} does not fit {task}; choose from {', '.join(allowed)}")

    def cross_entropy(logits: Tensor, batch: dict[str, Tensor]) -> Tensor:
        target = batch["target"]
        if task == "segmentation":
            target = _segmentation_target(logits, batch, "target")
        return F.cross_entropy(
            logits.float(), target, ignore_index=_IGNORE, label_smoothing=label_smoothing
        )

    def dice(logits: Tensor, batch: dict[str, Tensor]) -> Tensor:
        return dice_loss(logits, _segmentation_target(logits, batch, "target"))

    def ce_dice(logits: Tensor, batch: dict[str, Tensor]) -> Tensor:
        return cross_entropy(logits, batch) + dice(logits, batch)

    def weighted_ce(logits: Tensor, batch: dict[str, Tensor]) -> Tensor:
        if "weight" not in batch:
            raise ValueError("loss 'weighted_ce' needs weight maps in the batch (key 'weight')")
        target = _segmentation_target(logits, batch, "target")
        weight = _segmentation_target(logits, batch, "weight")
        return weighted_cross_entropy(logits, target, weight)

    losses: dict[str, LossFn] = {
        "ce": cross_entropy,
        "dice": dice,
        "ce_dice": ce_dice,
        "weighted_ce": weighted_ce,
    }
    return losses[name]
