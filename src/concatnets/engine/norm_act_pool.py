"""Max pooling of ``relu(bn(x))`` storing neither the activation nor the pooling indices.

A U-Net encoder level's output feeds two consumers: the skip connection and the 2x2 max
pooling to the next level. The engine keeps only the pre-normalisation tensor ``x`` (which
the skip needs anyway); this function rebuilds the activation and the pooling's argmax in
backward (Pleiss et al. 2017, arXiv 1707.06990, applied to U-Net).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from concatnets.engine.norm_act_conv import NormActPart, normalize_parts
from concatnets.engine.precision import in_full_precision
from concatnets.engine.stats import norm_act_backward, relu_backward_

__all__ = ["norm_act_pool"]

_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


def _pool(y: Tensor, kernel: int) -> Tensor:
    return _MAX_POOL[y.dim() - 2](y, kernel)


class _NormActPoolFunction(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, part: NormActPart, kernel: int, *tensors: Tensor | None
    ) -> Tensor:
        y = normalize_parts([part], tensors)
        ctx.part, ctx.kernel = part.shape_only(), kernel
        ctx.save_for_backward(*tensors)
        return _pool(y, kernel)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        tensors = ctx.saved_tensors
        part: NormActPart = ctx.part
        y = normalize_parts([part], tensors)
        with torch.enable_grad():  # the pooling's own backward finds the argmax again
            y_leaf = y.detach().requires_grad_()
            (grad_y,) = torch.autograd.grad(_pool(y_leaf, ctx.kernel), y_leaf, grad_out)
        if part.activation:
            relu_backward_(grad_y, y)
        del y
        if part.stats is None:
            return (None, None, grad_y, None, None, None, None)
        grad_x, grad_w, grad_b = norm_act_backward(grad_y, tensors[0], tensors[1], part.stats)
        return (None, None, grad_x, grad_w, grad_b, None, None)


def norm_act_pool(part: NormActPart, kernel: int = 2) -> Tensor:
    """``max_pool(relu(bn(x)), kernel)`` for the single ``part``, storing no activation."""
    if part.crop is not None:
        raise ValueError("norm_act_pool takes an uncropped part")
    if part.then_conv is not None:
        raise ValueError("norm_act_pool takes a part without then_conv")
    return in_full_precision(
        part.tensor.device,
        lambda cast: _norm_act_pool(replace(part, tensor=cast(part.tensor)), kernel),
    )


def _norm_act_pool(part: NormActPart, kernel: int) -> Tensor:
    # Forward normalises exactly as backward will, so both find the same argmax.
    part = replace(part, value=None)
    tensors = part.tensors()
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    if not needs_grad:
        with torch.no_grad():
            return _pool(normalize_parts([part], tensors), kernel)
    return _NormActPoolFunction.apply(part, kernel, *tensors)
