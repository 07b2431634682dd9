"""Element-wise dropout that keeps a boolean mask for backward instead of a float one.

``F.dropout`` on the CPU multiplies by a float noise tensor and autograd saves it (4 bytes
per element); this keeps the same draw (``bernoulli_(1 - p)`` on a tensor shaped like the
input, as ``F.dropout`` draws on the CPU) as a ``bool`` mask (1 byte per element).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["dropout"]


class _MaskedScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, mask: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        ctx.save_for_backward(mask)
        return x * mask * scale

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None]:  # type: ignore[override]
        (mask,) = ctx.saved_tensors
        return grad * mask * ctx.scale, None, None


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """``F.dropout(x, p, training)`` (same draw on the CPU) storing a boolean mask."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return x
    keep = 1.0 - p
    mask = torch.empty_like(x).bernoulli_(keep).bool()
    return _MaskedScale.apply(x, mask, 1.0 / keep)
