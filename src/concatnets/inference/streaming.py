"""Class masks of large images predicted band by band into a small-integer array."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from concatnets.inference.tiling import TileSource, iter_tiled_logits

__all__ = ["class_dtype", "predict_classes"]


def class_dtype(num_classes: int) -> np.dtype:
    """The smallest unsigned dtype holding class indices ``0..num_classes-1``."""
    return np.dtype(np.uint8 if num_classes <= 256 else np.uint16)


@torch.no_grad()
def predict_classes(
    model: nn.Module,
    source: TileSource,
    *,
    tile_size: int | None = None,
    overlap: int | None = None,
    batch_size: int = 4,
    progress: bool = False,
) -> np.ndarray:
    """The predicted class of every pixel (voxel) of ``source``, as ``(*spatial)`` uint8.

    With ``tile_size`` the image goes through
    :func:`~concatnets.inference.tiling.iter_tiled_logits` and each finished band of
    logits is reduced to its argmax at once, so memory holds the stored image, this mask
    (one byte per pixel) and one band of tiles, never the image's float input or logits.
    Without it the whole image is one forward pass.

    Args:
        model: A segmentation model in eval mode.
        source: Its normalized input.
        tile_size: Tile side, or ``None`` for whole-image inference.
        overlap: Tile overlap (same-padding models; default a quarter tile).
        batch_size: Tiles per forward pass.
        progress: Progress bar over tiles.
    """
    spatial = tuple(source.spatial)
    if tile_size is None:
        device = next(iter(model.parameters()), torch.empty(0)).device
        whole = source.read(tuple(slice(0, s) for s in spatial))[None].to(device)
        logits = model(whole)[0]  # (K, *spatial)
        return logits.argmax(0).cpu().numpy().astype(class_dtype(logits.shape[0]))
    mask: np.ndarray | None = None
    for first, logits in iter_tiled_logits(
        model,
        source,
        tile_size=tile_size,
        overlap=overlap,
        batch_size=batch_size,
        progress=progress,
    ):
        if mask is None:
            mask = np.empty(spatial, dtype=class_dtype(logits.shape[0]))
        mask[first : first + logits.shape[1]] = logits.argmax(0).numpy()
    assert mask is not None
    return mask
