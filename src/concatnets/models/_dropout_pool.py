"""Dropout then max pooling that keeps only the argmax for backward.

FC-DenseNet's transition down ends in dropout and a 2x2 max pooling (Jégou et al. 2017,
Table 1). Plain autograd keeps, per element of the full-resolution map, the pooling's
input (4 bytes in float32), the dropout mask and, per pooled element, an int64 argmax:
about 7 bytes per input element, more than the skip connection itself. The gradient of a
pooling whose windows do not overlap reaches only each window's argmax, and the dropout
mask matters only there, so this keeps, per pooled element, the argmax's offset inside
its window (int8) and whether dropout kept it (bool): half a byte per input element.
Values and gradients are those of ``max_pool(dropout(x))`` with the same random draw.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["dropout_max_pool"]

_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


def _window_offsets(indices: Tensor, size: tuple[int, ...], kernel: int) -> Tensor:
    """The argmax's offset inside its window, ``sum_a (coord_a % kernel) * kernel**(d-1-a)``.

    ``indices`` are the pooling's flat indices into each ``(n, c)`` plane of ``size``;
    windows start at multiples of ``kernel``, so ``coord % kernel`` is the offset.
    """
    offsets = torch.zeros_like(indices)
    stride = 1
    for axis in reversed(range(len(size))):
        coord = torch.div(indices, stride, rounding_mode="floor").remainder_(size[axis])
        offsets.add_(coord.remainder_(kernel), alpha=kernel ** (len(size) - 1 - axis))
        stride *= size[axis]
    return offsets.to(torch.int8)


def _flat_indices(offsets: Tensor, size: tuple[int, ...], kernel: int) -> Tensor:
    """Inverse of :func:`_window_offsets`: the flat indices, int64, shaped like ``offsets``."""
    offsets = offsets.long()
    dims = len(size)
    flat = torch.zeros_like(offsets)
    stride = 1
    for axis in reversed(range(dims)):
        local = torch.div(offsets, kernel ** (dims - 1 - axis), rounding_mode="floor") % kernel
        shape = [1] * offsets.dim()
        shape[2 + axis] = offsets.shape[2 + axis]
        window = torch.arange(offsets.shape[2 + axis], device=offsets.device).view(shape)
        flat.add_((window * kernel + local) * stride)
        stride *= size[axis]
    return flat


class _DropoutMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, p: float, training: bool, kernel: int) -> Tensor:  # type: ignore[override]
        mask = None
        y = x
        scale = 1.0
        if training and p > 0:
            keep = 1.0 - p
            scale = 1.0 / keep
            # The draw of F.dropout on the CPU: bernoulli_(1 - p) on a tensor like x.
            mask = torch.empty_like(x).bernoulli_(keep).bool()
            y = x.mul(mask).mul_(scale)  # the values of F.dropout: x * (mask / keep)
        pooled, indices = _MAX_POOL[x.dim() - 2](y, kernel, return_indices=True)
        del y
        size = tuple(int(s) for s in x.shape[2:])
        kept = None
        if mask is not None:
            kept = mask.flatten(2).gather(2, indices.flatten(2)).view(indices.shape)
        ctx.size, ctx.kernel, ctx.scale = size, kernel, scale
        ctx.layout = torch.channels_last if _is_channels_last(x) else torch.contiguous_format
        ctx.save_for_backward(_window_offsets(indices, size, kernel), kept)
        return pooled

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, None]:  # type: ignore[override]
        offsets, kept = ctx.saved_tensors
        indices = _flat_indices(offsets, ctx.size, ctx.kernel)
        if kept is not None:
            grad = grad.mul(kept).mul_(ctx.scale)
        n, c = grad.shape[:2]
        grad_x = grad.new_zeros((n, c, math.prod(ctx.size)))
        grad_x.scatter_(2, indices.flatten(2), grad.flatten(2))
        grad_x = grad_x.view(n, c, *ctx.size)
        return grad_x.contiguous(memory_format=ctx.layout), None, None, None


def _is_channels_last(x: Tensor) -> bool:
    return (
        x.dim() == 4
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    )


def dropout_max_pool(x: Tensor, p: float, training: bool, kernel: int) -> Tensor:
    """``max_pool(dropout(x, p, training), kernel)`` (stride = kernel, no padding) keeping
    half a byte per element of ``x`` for backward.

    Args:
        x: ``(N, C, *spatial)``, 1 to 3 spatial axes.
        p: Dropout probability in ``[0, 1)``; the draw is that of ``F.dropout`` on the CPU.
        training: Whether dropout is active.
        kernel: Window side and stride (``kernel**dims`` at most 127).
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if kernel < 1 or kernel ** (x.dim() - 2) > 127:
        raise ValueError(f"kernel must be >= 1 with kernel**dims <= 127, got {kernel}")
    if not torch.is_grad_enabled() or not x.requires_grad:
        if training and p > 0:
            x = x * torch.empty_like(x).bernoulli_(1.0 - p).bool() * (1.0 / (1.0 - p))
        return _MAX_POOL[x.dim() - 2](x, kernel)
    return _DropoutMaxPool.apply(x, p, training, kernel)  # type: ignore[no-any-return]
