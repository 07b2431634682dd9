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
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from concatnets.engine.conv import conv_backward, conv_forward
from concatnets.engine.precision import in_full_precision
from concatnets.engine.stats import NormStats, norm_act, norm_act_backward, relu_backward_

__all__ = ["NormActPart", "norm_act_conv", "normalize_parts"]


@dataclass(frozen=True)
class NormActPart:
    """One part of the concatenation a convolution reads.

    The part's value is ``relu(bn(x))`` (cropped when ``crop`` is set), or, with
    ``then_conv``, ``then_conv(relu(bn(x)))``: a U-Net decoder's up-convolution, whose
    output is then recomputed in backward instead of stored.

    Attributes:
        tensor: The part before normalisation ``(N, C_i, *spatial_i)``.
        norm: Its batch norm, or None for no normalisation.
        stats: Statistics from ``norm_stats(norm, tensor)`` (None when ``norm`` is None).
        activation: Whether ReLU follows the normalisation.
        crop: Spatial slices applied after normalisation (the valid U-Net's skip crop);
            statistics stay those of the whole tensor.
        then_conv: A (transposed) convolution applied after the activation.
        value: The activation ``relu(bn(x))`` (uncropped) if the caller already computed
            it, e.g. with the fused kernel that also found the statistics; used in forward
            only, never saved.
    """

    tensor: Tensor
    norm: _BatchNorm | None = None
    stats: NormStats | None = None
    activation: bool = True
    crop: tuple[slice, ...] | None = None
    then_conv: _ConvNd | None = None
    value: Tensor | None = None

    def __post_init__(self) -> None:
        if (self.norm is None) != (self.stats is None):
            raise ValueError("NormActPart needs stats exactly when it has a norm")
        if self.crop is not None and self.then_conv is not None:
            raise ValueError("NormActPart takes crop or then_conv, not both")

    @property
    def channels(self) -> int:
        if self.then_conv is not None:
            return int(self.then_conv.out_channels)
        return int(self.tensor.shape[1])

    def cropped(self, x: Tensor) -> Tensor:
        return x if self.crop is None else x[(slice(None), slice(None), *self.crop)]

    def shape_only(self) -> NormActPart:
        """This part with its tensor replaced by a storage-less meta tensor of its shape.

        Autograd functions keep this on ``ctx``: the real tensor goes through
        ``save_for_backward``, which frees it as soon as its backward has run, whereas a
        reference on ``ctx`` would keep it alive until the whole graph is released.
        """
        return replace(self, tensor=torch.empty_like(self.tensor, device="meta"), value=None)

    def tensors(self) -> tuple[Tensor | None, ...]:
        """The part's autograd inputs: x, norm weight and bias, then_conv weight and bias."""
        w, b = (None, None) if self.norm is None else (self.norm.weight, self.norm.bias)
        conv = self.then_conv
        cw, cb = (None, None) if conv is None else (conv.weight, conv.bias)
        return (self.tensor, w, b, cw, cb)


_TENSORS_PER_PART = 5


def _activation(part: NormActPart, x: Tensor, w: Tensor | None, b: Tensor | None) -> Tensor:
    """``relu(bn(crop(x)))`` as a new contiguous tensor."""
    x = part.cropped(x)
    if part.stats is not None:
        return norm_act(x, w, b, part.stats, activation=part.activation)
    y = x.clone(memory_format=torch.contiguous_format)
    return y.relu_() if part.activation else y


def _value(part: NormActPart, tensors: Sequence[Tensor | None]) -> Tensor:
    """The part's value as a new tensor (its activation, or then_conv of it)."""
    x, w, b, cw, cb = tensors
    assert x is not None
    y = part.cropped(part.value) if part.value is not None else _activation(part, x, w, b)
    if part.then_conv is None:
        return y
    assert cw is not None
    return conv_forward(part.then_conv, y, cw, cb)


def _write_part(part: NormActPart, tensors: Sequence[Tensor | None], out: Tensor) -> None:
    """Write the part's value into ``out`` (a channel slice of the buffer)."""
    x, w, b = tensors[0], tensors[1], tensors[2]
    assert x is not None
    if part.then_conv is not None:
        out.copy_(_value(part, tensors))
        return
    if part.value is not None:
        out.copy_(part.cropped(part.value))
        return
    cropped = part.cropped(x)
    if part.stats is not None:
        norm_act(cropped, w, b, part.stats, activation=part.activation, out=out)
        return
    out.copy_(cropped)
    if part.activation:
        out.relu_()


def _part_tensors(params: Sequence[Tensor | None], index: int) -> Sequence[Tensor | None]:
    return params[_TENSORS_PER_PART * index : _TENSORS_PER_PART * (index + 1)]


def normalize_parts(parts: Sequence[NormActPart], params: Sequence[Tensor | None]) -> Tensor:
    """The concatenation of the parts' values in one new buffer ``(N, sum C_i, *spatial)``."""
    first = _part_tensors(params, 0)
    if len(parts) == 1 and parts[0].value is not None and parts[0].then_conv is None:
        return parts[0].cropped(parts[0].value)  # already computed: no copy
    if parts[0].then_conv is not None:
        sample = _value(parts[0], first)
    else:
        assert first[0] is not None
        sample = parts[0].cropped(first[0])
    total = sum(part.channels for part in parts)
    out = sample.new_empty((sample.shape[0], total, *sample.shape[2:]))
    start = 0
    for index, part in enumerate(parts):
        _write_part(part, _part_tensors(params, index), out.narrow(1, start, part.channels))
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
) -> tuple[Tensor | None, ...]:
    """Gradients of one part's five tensors; fills its slice of ``grad_weight``.

    A convolution is a sum over input channels, so each part's input gradient and weight
    gradient need only that part's recomputed value: the concatenation is never rebuilt
    at full width in backward.
    """
    x, w, b, cw, cb = tensors
    assert x is not None
    y = _activation(part, x, w, b)
    value = y if part.then_conv is None else conv_forward(part.then_conv, y, cw, cb)  # type: ignore[arg-type]
    in_dim = 0 if conv.transposed else 1  # transposed weights are (in, out, *kernel)
    part_weight = weight.narrow(in_dim, channels.start, channels.stop - channels.start)
    grad_value, grad_w, _ = conv_backward(conv, grad_out, value, part_weight, has_bias=False)
    assert grad_value is not None and grad_w is not None
    grad_weight.narrow(in_dim, channels.start, channels.stop - channels.start).copy_(grad_w)
    del grad_w, value
    grad_cw = grad_cb = None
    if part.then_conv is None:
        grad_y = grad_value
    else:
        grad_y, grad_cw, grad_cb = conv_backward(
            part.then_conv,
            grad_value,
            y,
            cw,  # type: ignore[arg-type]
            has_bias=cb is not None,
        )
        assert grad_y is not None
    del grad_value
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
        return grad_y, None, None, grad_cw, grad_cb
    grad_x, grad_w_norm, grad_b_norm = norm_act_backward(grad_y, x, w, part.stats)
    return grad_x, grad_w_norm, grad_b_norm, grad_cw, grad_cb


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
        # The parts' tensors are saved below; ctx keeps only their descriptions.
        ctx.parts = [part.shape_only() for part in parts]
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
                    _part_tensors(tensors, index),
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
    """``conv(cat([value of each part]))`` storing no activation (see :class:`NormActPart`).

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
    return in_full_precision(
        parts[0].tensor.device,
        lambda cast: _norm_act_conv([replace(p, tensor=cast(p.tensor)) for p in parts], conv),
    )


def _norm_act_conv(parts: Sequence[NormActPart], conv: _ConvNd) -> Tensor:
    tensors: list[Tensor | None] = []
    for part in parts:
        tensors.extend(part.tensors())
    tensors.extend((conv.weight, conv.bias))
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    if not needs_grad:
        with torch.no_grad():
            return conv_forward(conv, normalize_parts(parts, tensors[:-2]), conv.weight, conv.bias)
    return _NormActConvFunction.apply(conv, parts, *tensors)
