"""Inference helpers: overlap-tile prediction for images larger than memory allows."""

from __future__ import annotations

from concatnets.inference.tiling import TensorSource, TileSource, iter_tiled_logits, predict_tiled

__all__ = ["TensorSource", "TileSource", "iter_tiled_logits", "predict_tiled"]
