"""A max-pooled ``norm -> ReLU`` map stored for readers that need it whole, not its input.

A ResNet stem's ``conv -> BN -> ReLU -> max pool`` feeds both the first block's
convolution and its residual sum. Kept lazily (:mod:`concatnets.convert.lazy`) the pooled
map would be rebuilt three times (for the convolution's forward and backward and for the
sum's backward, each a normalisation, a ReLU and a pooling at full resolution). Stored,
it costs a quarter of the activation the original stores: :func:`stored_pooling` keeps
the pooled map (the convolution saves it), the pooling's argmax indices and the ReLU's
mask at pooled resolution, and no full-resolution activation. Backward masks the
gradient, scatters it with the indices and runs the normalisation's backward from the
stored input and statistics (Pleiss et al. 2017, arXiv 1707.06990: normalise from saved
statistics, never store the normalised map). The ReLU's mask may be applied before the
scatter: the pooling picks one activation per window, whose sign is the pooled value's.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from concatnets.engine import NormActPart
from concatnets.engine.activation import RELU, as_activation
from concatnets.engine.group_stats import GroupStats, group_norm_act, group_norm_backward
from concatnets.engine.parts_conv import max_pool_backward
from concatnets.engine.stats import NormStats, norm_act, norm_act_backward

__all__ = ["stored_pooling"]

_POOL = {4: F.max_pool2d, 5: F.max_pool3d}


def _pooled(part: NormActPart, weight: Tensor | None, bias: Tensor | None) -> tuple[Tensor, ...]:
    """The pooled activation and its argmax indices (the activation is not kept)."""
    y = part.value
    if y is None:
        if isinstance(part.stats, GroupStats):
            y = group_norm_act(part.tensor, weight, bias, part.stats, activation=True)
        else:
            assert isinstance(part.stats, NormStats)
            y = norm_act(part.tensor, weight, bias, part.stats, activation=True)
    return _POOL[y.dim()](y, *part.pool_geometry, return_indices=True)


class _StoredPooling(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, part: NormActPart, x: Tensor, weight: Tensor | None, bias: Tensor | None
    ) -> Tensor:
        pooled, indices = _pooled(part, weight, bias)
        ctx.part = part.shape_only()
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight, indices, pooled <= 0)
        return pooled

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, weight, indices, off = ctx.saved_tensors
        part: NormActPart = ctx.part
        grad = grad.masked_fill(off, 0)  # the ReLU's backward, where its output was 0
        del off
        grad_y = max_pool_backward(part, grad, x, indices)  # x: the pooling input's shape
        del grad, indices
        if isinstance(part.stats, GroupStats):
            grad_x, grad_w, grad_b = group_norm_backward(grad_y, x, weight, part.stats)
        else:
            assert isinstance(part.stats, NormStats)
            grad_x, grad_w, grad_b = norm_act_backward(grad_y, x, weight, part.stats)
        return None, grad_x, grad_w, (grad_b if ctx.has_bias else None)


def stored_pooling(part: NormActPart) -> Tensor | None:
    """``part``'s value (a 2-D or 3-D max pooling of ``relu(norm(tensor))``), stored with
    its pooling's indices, or None when ``part`` is not exactly that."""
    bare = all(
        stage is None for stage in (part.crop, part.upsample, part.then_conv, part.source_conv)
    )
    if not (
        bare
        and part.pool is not None
        and part.norm is not None
        and as_activation(part.activation) == RELU
        and part.result is None
        and part.tensor.dim() in _POOL
    ):
        return None
    weight, bias = part.norm.weight, part.norm.bias
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (part.tensor, weight, bias)
    )
    if not needs_grad:
        with torch.no_grad():
            return _pooled(part, weight, bias)[0]
    return _StoredPooling.apply(part, part.tensor, weight, bias)
