"""Inference helpers: overlap-tile prediction for images larger than memory allows."""

from __future__ import annotations

from concatnets.inference.tiling import predict_tiled

__all__ = ["predict_tiled"]
