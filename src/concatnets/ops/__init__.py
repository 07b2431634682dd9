"""Array operations: numpy-compatible ``concatenate`` and skip-connection alignment."""

from __future__ import annotations

from concatnets.ops.align import (
    PadMode,
    center_crop_to,
    crop_or_pad_to,
    crop_slices,
    pad_to,
    padding_amounts,
)
from concatnets.ops.concat import concatenate

__all__ = [
    "PadMode",
    "center_crop_to",
    "concatenate",
    "crop_or_pad_to",
    "crop_slices",
    "pad_to",
    "padding_amounts",
]
