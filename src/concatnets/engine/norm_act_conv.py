"""BN -> ReLU -> convolution over a concatenation of parts, recomputed in backward.

The pre-activation form used by DenseNet transitions and, in concatnets' memory-efficient
U-Net, by every convolution: ``conv(cat([relu(bn_i(x_i)) for each part i]))``. Only the
parts' inputs ``x_i`` (already kept for other reasons) and per-channel statistics are
saved; the normalised, rectified concatenation is written into one transient buffer in
forward and rebuilt in backward (Pleiss et al. 2017, arXiv 1707.06990). Batch statistics
come from :func:`concatnets.engine.stats.norm_stats`, which updates running statistics once;
two consumers of one normalised tensor (a U-Net skip and its pooling path) each add their
share of the gradient, which is exact because batch-norm backward is linear in the output
gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from concatnets.engine.conv import conv_backward, conv_forward
from concatnets.engine.stats import NormStats, norm_act, norm_act_backward, relu_backward_

__all__ = ["NormActPart", "norm_act_conv", "normalize_parts"]


@dataclass(frozen=True)
class NormActPart:
    """One part of the concatenation a convolution reads.

    Attributes:
        tensor: The part before normalisation ``(N, C_i, *spatial_i)``.
        norm: Its batch norm, or None for no normalisation.
        stats: Statistics from ``norm_stats(norm, tensor)`` (None when ``norm`` is None).
        activation: Whether ReLU follows.
        crop: Spatial slices applied after normalisation (the valid U-Net's skip crop);
            statistics stay those of the whole tensor.
    """

    tensor: Tensor
    norm: _BatchNorm | None = None
    stats: NormStats | None = None
    activation: bool = True
    crop: tuple[slice, ...] | None = None

    def __post_init__(self) -> None:
        if (self.norm is None) != (self.stats is None):
            raise ValueError("NormActPart needs stats exactly when it has a norm")

    @property
    def channels(self) -> int:
        return int(self.tensor.shape[1])

    def cropped(self, x: Tensor) -> Tensor:
        return x if self.crop is None else x[(slice(None), slice(None), *self.crop)]


def _affine(part: NormActPart) -> tuple[Tensor | None, Tensor | None]:
    if part.norm is None:
        return None, None
    return part.norm.weight, part.norm.bias


def _write_part(
    part: NormActPart, x: Tensor, w: Tensor | None, b: Tensor | None, out: Tensor
) -> None:
    """Write ``relu(bn(crop(x)))`` into ``out`` (a channel slice of the buffer)."""
    x = part.cropped(x)
    if part.stats is not None:
        norm_act(x, w, b, part.stats, activation=part.activation, out=out)
        return
    out.copy_(x)
    if part.activation:
        out.relu_()


def normalize_parts(parts: Sequence[NormActPart], params: Sequence[Tensor | None]) -> Tensor:
    """The concatenation ``cat([relu(bn_i(x_i))])`` in one new buffer."""
    first = parts[0].cropped(parts[0].tensor)
    total = sum(part.channels for part in parts)
    out = first.new_empty((first.shape[0], total, *first.shape[2:]))  # (N, sum C_i, *spatial)
    start = 0
    for index, part in enumerate(parts):
        x = params[3 * index]
        assert x is not None
        _write_part(
            part,
            x,
            params[3 * index + 1],
            params[3 * index + 2],
            out.narrow(1, start, part.channels),
        )
        start += part.channels
    return out


def _part_backward(
    conv: _ConvNd,
    part: NormActPart,
    tensors: Sequence[Tensor | None],
    grad_out: Tensor,
    weight: Tensor,
    channels: slice,
    grad_weight: Tensor,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Input, weight and bias gradients of one part; fills its slice of ``grad_weight``.

    A convolution is a sum over input channels, so each part's input gradient and weight
    gradient need only that part's recomputed activation: the concatenation is never
    rebuilt at full width in backward.
    """
    x, w, b = tensors
    assert x is not None
    y = _recompute(part, x, w, b)
    in_dim = 0 if conv.transposed else 1  # transposed weights are (in, out, *kernel)
    part_weight = weight.narrow(in_dim, channels.start, channels.stop - channels.start)
    grad_y, grad_w, _ = conv_backward(conv, grad_out, y, part_weight, has_bias=False)
    assert grad_y is not None and grad_w is not None
    grad_weight.narrow(in_dim, channels.start, channels.stop - channels.start).copy_(grad_w)
    del grad_w
    if part.activation:
        relu_backward_(grad_y, y)
    del y
    if part.crop is not None:
        # The normalisation saw the whole tensor: its backward runs over the whole tensor
        # with zero gradient outside the crop.
        full = torch.zeros_like(x)
        part.cropped(full).copy_(grad_y)
        grad_y = full
    if part.stats is None:
        return grad_y, None, None
    grad_x, grad_w_norm, grad_b_norm = norm_act_backward(grad_y, x, None, w, part.stats)
    assert grad_x is not None
    return grad_x, grad_w_norm, grad_b_norm


def _recompute(part: NormActPart, x: Tensor, w: Tensor | None, b: Tensor | None) -> Tensor:
    cropped = part.cropped(x)
    out = torch.empty(cropped.shape, dtype=x.dtype, device=x.device)
    _write_part(part, x, w, b, out)
    return out


class _NormActConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        conv: _ConvNd,
        parts: Sequence[NormActPart],
        *tensors: Tensor | None,
    ) -> Tensor:
        part_params, weight, bias = tensors[:-2], tensors[-2], tensors[-1]
        assert weight is not None
        y = normalize_parts(parts, part_params)
        out = conv_forward(conv, y, weight, bias)
        ctx.conv = conv
        ctx.parts = parts
        ctx.save_for_backward(*tensors)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        tensors = ctx.saved_tensors
        parts: Sequence[NormActPart] = ctx.parts
        weight, bias = tensors[-2], tensors[-1]
        grad_weight = torch.empty_like(weight)
        grads: list[Tensor | None] = []
        start = 0
        for index, part in enumerate(parts):
            grads.extend(
                _part_backward(
                    ctx.conv,
                    part,
                    tensors[3 * index : 3 * index + 3],
                    grad_out,
                    weight,
                    slice(start, start + part.channels),
                    grad_weight,
                )
            )
            start += part.channels
        grad_bias = None
        if bias is not None:
            grad_bias = grad_out.sum(dim=[0, *range(2, grad_out.dim())])
        return (None, None, *grads, grad_weight, grad_bias)


def norm_act_conv(parts: Sequence[NormActPart], conv: _ConvNd) -> Tensor:
    """``conv(cat([relu(bn_i(x_i)) for each part]))`` storing no activation.

    Args:
        parts: The concatenated inputs, in channel order.
        conv: A convolution or transposed convolution reading ``sum(C_i)`` channels.
    """
    if not parts:
        raise ValueError("norm_act_conv needs at least one part")
    total = sum(part.channels for part in parts)
    if conv.in_channels != total:
        raise ValueError(
            f"{type(conv).__name__} expects {conv.in_channels} input channels but the parts "
            f"give {total}; build it with in_channels={total}"
        )
    tensors: list[Tensor | None] = []
    for part in parts:
        tensors.extend((part.tensor, *_affine(part)))
    tensors.extend((conv.weight, conv.bias))
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    if not needs_grad:
        with torch.no_grad():
            return conv_forward(conv, normalize_parts(parts, tensors[:-2]), conv.weight, conv.bias)
    return _NormActConvFunction.apply(conv, parts, *tensors)
