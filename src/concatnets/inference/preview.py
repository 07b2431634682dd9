"""Bounded-size inputs for overlay pictures of large images and volumes."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["MAX_OVERLAY_SIDE", "preview_pair"]

MAX_OVERLAY_SIDE = 1024
"""Longest side of each overlay panel; larger images are shrunk by a whole factor."""


def _middle_slice(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The middle depth slice of a ``(D, H, W[, C])`` volume and its ``(D, H, W)`` mask."""
    middle = mask.shape[0] // 2
    picture = image[middle]
    if picture.ndim == 3 and picture.shape[-1] not in (1, 3):
        picture = picture[..., 0]  # shown in grey: the first of C != 1, 3 channels
    return picture, mask[middle]


def preview_pair(
    image: np.ndarray, mask: np.ndarray, max_side: int = MAX_OVERLAY_SIDE
) -> tuple[np.ndarray, np.ndarray]:
    """An image and its predicted classes shrunk so that no side exceeds ``max_side``.

    The image is averaged over ``f x f`` blocks and the mask sampled at block centres
    (classes are not averaged), for the smallest whole factor ``f`` that fits. Volumes
    give their middle depth slice.

    Args:
        image: ``(H, W)`` / ``(H, W, C)`` image, or ``(D, H, W[, C])`` volume, as stored.
        mask: ``(H, W)`` (or ``(D, H, W)``) predicted classes.
        max_side: Longest side of the result.
    """
    if mask.ndim == 3:
        image, mask = _middle_slice(image, mask)
    height, width = mask.shape
    factor = math.ceil(max(height, width) / max_side)
    if factor <= 1:
        return np.asarray(image), np.asarray(mask)
    rows, cols = height // factor, width // factor
    shrunk = np.empty((rows, cols, *image.shape[2:]), dtype=np.float32)
    for row in range(rows):  # one row of blocks at a time: no float copy of the image
        band = np.asarray(image[row * factor : (row + 1) * factor, : cols * factor], np.float32)
        shrunk[row] = band.reshape(factor, cols, factor, *image.shape[2:]).mean(axis=(0, 2))
    centre = factor // 2
    sampled = mask[centre::factor, centre::factor][:rows, :cols]
    return shrunk, np.ascontiguousarray(sampled)
