"""Array operations: numpy-compatible ``concatenate`` and skip-connection alignment."""

from __future__ import annotations

from concatnets.ops.align import center_crop_to, pad_to
from concatnets.ops.concat import concatenate

__all__ = ["center_crop_to", "concatenate", "pad_to"]
