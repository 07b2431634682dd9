"""BN -> ReLU -> convolution over a concatenation of parts, recomputed in backward.

The pre-activation form used by DenseNet transitions and, in concatnets' memory-efficient
U-Net, by every convolution: ``conv(cat([relu(bn_i(x_i)) for each part i]))``. Only the
parts' inputs ``x_i`` (already kept for other reasons) and per-channel statistics are
saved; the normalised, rectified concatenation is written into one transient buffer in
forward and rebuilt in backward (Pleiss et al. 2017, arXiv 1707.06990). Batch statistics
come from :func:`concatnets.engine.stats.norm_stats`, which updates running statistics once;
group and instance norm keep per-sample statistics (:mod:`concatnets.engine.group_stats`).
Two consumers of one normalised tensor (a U-Net skip and its pooling path) each add their
share of the gradient, which is exact because normalisation backward is linear in the
output gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from concatnets.engine import buffer_pool
from concatnets.engine.activation import Activation, activation_backward_, apply_activation_
from concatnets.engine.conv import conv_backward, conv_forward
from concatnets.engine.group_stats import GroupStats, group_norm_act, group_norm_backward
from concatnets.engine.heap_release import release_if_piled_up
from concatnets.engine.layout import layout_of, to_layout
from concatnets.engine.layout_choice import preferred_layout
from concatnets.engine.pointwise_choice import chosen_conv_backward, chosen_conv_forward
from concatnets.engine.precision import check_input_dtype, in_engine_precision
from concatnets.engine.stats import NormStats, norm_act, norm_act_backward

__all__ = [
    "NormActPart",
    "max_pool_backward",
    "norm_act_conv",
    "normalize_parts",
    "part_value",
    "source_conv_output",
]


@dataclass(frozen=True)
class NormActPart:
    """One part of the concatenation a convolution reads.

    The part's value is ``relu(bn(x))``, where ``x`` is ``tensor`` or, with
    ``source_conv``, ``source_conv(tensor)``; then, when set and in this order, cropped
    (``crop``), max-pooled (``pool``), upsampled (``upsample``) and convolved
    (``then_conv``), any of them together: a U-Net's first convolution
    (cheap to recompute from the image), a valid U-Net's skip crop, the encoder's pooling
    to the next level and the decoder's up-convolution. None of these results is stored;
    backward rebuilds them from ``tensor`` and the statistics.

    Attributes:
        tensor: The part's stored input ``(N, C_i, *spatial_i)``.
        norm: Its batch, group or instance norm, or None for no normalisation.
        stats: Statistics of the normalisation's input: :class:`NormStats` for batch
            norm, :class:`GroupStats` for group/instance norm, None without ``norm``.
        activation: The activation following the normalisation: True (ReLU), False
            (none) or an :class:`~concatnets.engine.activation.Activation` (LeakyReLU, ELU).
        source_conv: A convolution applied to ``tensor`` before the normalisation and
            recomputed in backward; worth it only when ``tensor`` has few channels.
        crop: Spatial slices applied after normalisation (the valid U-Net's skip crop);
            statistics stay those of the whole tensor.
        pool: Kernel (and stride) of a max pooling applied after the activation.
        upsample: Integer factor of a nearest-neighbour upsampling applied after the
            activation (and pooling), before ``then_conv``: a decoder's ``F.interpolate``.
        then_conv: A (transposed) convolution applied after the activation (and pooling).
        value: The activation ``relu(bn(x))`` (uncropped) if the caller already computed
            it, e.g. with the fused kernel that also found the statistics; used in forward
            only, never saved, and ignored when ``pool`` is set (the forward's pooling must
            see exactly the activation backward recomputes, or the argmax could differ).
        result: The part's whole value (after every stage) if the caller already has it
            (:func:`part_value`'s output); used in forward only, never saved.
        pool_shape: ``(stride, padding)`` of the max pooling when not ``(pool, 0)``: a
            ResNet stem's 3x3 pooling with stride 2 and padding 1.
    """

    tensor: Tensor
    norm: nn.Module | None = None
    stats: NormStats | GroupStats | None = None
    activation: bool | Activation = True
    source_conv: _ConvNd | None = None
    crop: tuple[slice, ...] | None = None
    pool: int | None = None
    then_conv: _ConvNd | None = None
    value: Tensor | None = None
    upsample: int | None = None
    result: Tensor | None = None
    pool_shape: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if (self.norm is None) != (self.stats is None):
            raise ValueError("NormActPart needs stats exactly when it has a norm")
        if self.pool is not None and self.pool < 1:
            raise ValueError(f"NormActPart pool must be a positive kernel size, got {self.pool}")
        if self.upsample is not None and self.upsample < 1:
            raise ValueError(f"NormActPart upsample must be a positive factor, got {self.upsample}")

    @property
    def channels(self) -> int:
        """Channels of the part's value (its share of the concatenation)."""
        if self.then_conv is not None:
            return int(self.then_conv.out_channels)
        if self.source_conv is not None:
            return int(self.source_conv.out_channels)
        return int(self.tensor.shape[1])

    def cropped(self, x: Tensor) -> Tensor:
        return x if self.crop is None else x[(slice(None), slice(None), *self.crop)]

    @property
    def pool_geometry(self) -> tuple[int, int, int]:
        """``(kernel, stride, padding)`` of the part's max pooling (``pool`` must be set)."""
        assert self.pool is not None
        stride, padding = self.pool_shape if self.pool_shape is not None else (self.pool, 0)
        return self.pool, stride, padding

    def pooled_size(self, size: Sequence[int]) -> tuple[int, ...]:
        """Spatial ``size`` after the part's max pooling (unchanged without one)."""
        if self.pool is None:
            return tuple(int(s) for s in size)
        kernel, stride, padding = self.pool_geometry
        return tuple((int(s) + 2 * padding - kernel) // stride + 1 for s in size)

    def shape_only(self) -> NormActPart:
        """This part with its tensor replaced by a storage-less meta tensor of its shape.

        Autograd functions keep this on ``ctx``: the real tensor goes through
        ``save_for_backward``, which frees it as soon as its backward has run, whereas a
        reference on ``ctx`` would keep it alive until the whole graph is released.
        """
        meta = torch.empty_like(self.tensor, device="meta")
        return replace(self, tensor=meta, value=None, result=None)

    def tensors(self) -> tuple[Tensor | None, ...]:
        """The part's autograd inputs, in :class:`_PartTensors` order."""

        def weights(module: nn.Module | None) -> tuple[Tensor | None, Tensor | None]:
            return (None, None) if module is None else (module.weight, module.bias)

        return (
            self.tensor,
            *weights(self.source_conv),
            *weights(self.norm),
            *weights(self.then_conv),
        )


class _PartTensors(NamedTuple):
    """A part's tensors as saved for backward (None where the part lacks the stage)."""

    x: Tensor
    source_weight: Tensor | None
    source_bias: Tensor | None
    norm_weight: Tensor | None
    norm_bias: Tensor | None
    then_weight: Tensor | None
    then_bias: Tensor | None


_TENSORS_PER_PART = len(_PartTensors._fields)
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


def _part_tensors(params: Sequence[Tensor | None], index: int) -> _PartTensors:
    return _PartTensors(*params[_TENSORS_PER_PART * index : _TENSORS_PER_PART * (index + 1)])


def source_conv_output(conv: _ConvNd, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """A ``source_conv`` part's normalisation input, the same in forward and backward.

    It takes the engine's preferred layout: reading a one-channel image, whose strides fit
    every layout, the backend would otherwise pick the default layout for it and for
    everything computed from it.
    """
    z = conv_forward(conv, x, weight, bias)
    return to_layout(z, preferred_layout(z))


def _normalized_input(part: NormActPart, t: _PartTensors) -> Tensor:
    """The normalisation's input: ``tensor``, or ``source_conv(tensor)`` recomputed."""
    if part.source_conv is None:
        return t.x
    assert t.source_weight is not None
    return source_conv_output(part.source_conv, t.x, t.source_weight, t.source_bias)


def _normalize(part: NormActPart, x: Tensor, t: _PartTensors, out: Tensor | None = None) -> Tensor:
    """``relu(norm(x))`` from the part's saved statistics, into ``out`` or a new tensor."""
    apply = group_norm_act if isinstance(part.stats, GroupStats) else norm_act
    fused = part.activation is True  # the norm functions fuse ReLU only
    y = apply(
        x,
        t.norm_weight,
        t.norm_bias,
        part.stats,  # type: ignore[arg-type]
        activation=fused,
        out=out,
    )
    return y if fused else apply_activation_(y, part.activation)


def _activation(part: NormActPart, x: Tensor, t: _PartTensors) -> Tensor:
    """``relu(bn(crop(x)))`` of the normalisation's input ``x``, as a new (pooled) tensor."""
    x = part.cropped(x)
    out = buffer_pool.empty_like(x, memory_format=layout_of(x), transient=True)
    if part.stats is not None:
        return _normalize(part, x, t, out=out)
    return apply_activation_(out.copy_(x), part.activation)


def _max_pool(part: NormActPart, y: Tensor) -> Tensor:
    return _MAX_POOL[y.dim() - 2](y, *part.pool_geometry)


def _max_pool_indices(part: NormActPart, y: Tensor) -> tuple[Tensor, Tensor | None]:
    """``_max_pool(part, y)`` and, for 2-D and 3-D, its argmax indices (one kernel call)."""
    if y.dim() not in (4, 5):
        return _max_pool(part, y), None
    return _MAX_POOL[y.dim() - 2](y, *part.pool_geometry, return_indices=True)


def _upsample(part: NormActPart, y: Tensor) -> Tensor:
    if part.upsample is None or part.upsample == 1:
        return y
    size = [s * part.upsample for s in y.shape[2:]]
    return F.interpolate(y, size=size, mode="nearest")


_UPSAMPLE_BACKWARD = {
    3: torch.ops.aten.upsample_nearest1d_backward,
    4: torch.ops.aten.upsample_nearest2d_backward,
    5: torch.ops.aten.upsample_nearest3d_backward,
}


def _upsample_into(y: Tensor, factor: int, out: Tensor) -> None:
    """Write :func:`_upsample` of ``y`` by ``factor`` into ``out`` with one broadcast copy
    (no upsampled tensor of its own): each spatial size ``s * factor`` is viewed as
    ``(s, factor)`` and ``y`` is repeated along the new dimensions."""
    target, source = out, y
    for i, size in enumerate(y.shape[2:]):
        dim = 2 + 2 * i
        target = target.unflatten(dim, (size, factor))
        source = source.unsqueeze(dim + 1)
    target.copy_(source.expand(target.shape))


def _upsamples_into(part: NormActPart) -> bool:
    """Whether :func:`_write_part` writes the part's upsampling straight into the buffer:
    a power-of-two factor, where nearest's source index ``floor(i * in / out)`` is exactly
    ``i // factor`` in floating point."""
    factor = part.upsample
    return (
        factor is not None
        and factor > 1
        and factor & (factor - 1) == 0
        and part.then_conv is None
        and part.source_conv is None
        and part.result is None
    )


def _upsample_backward(part: NormActPart, grad_up: Tensor, y: Tensor) -> Tensor:
    """Gradient of :func:`_upsample` for ``y`` (each input pixel sums its copies)."""
    if part.upsample is None or part.upsample == 1:
        return grad_up
    backward = _UPSAMPLE_BACKWARD.get(grad_up.dim())
    if backward is not None:
        # The kernel autograd runs for F.interpolate(size=...): no forward replayed.
        return backward(grad_up, list(grad_up.shape[2:]), list(y.shape))
    with torch.enable_grad():
        y_leaf = torch.empty_like(y).requires_grad_()
        (grad_y,) = torch.autograd.grad(_upsample(part, y_leaf), y_leaf, grad_up)
    return grad_y


def _then_conv(part: NormActPart, y: Tensor, t: _PartTensors) -> Tensor:
    if part.then_conv is None:
        return y
    assert t.then_weight is not None
    return conv_forward(part.then_conv, y, t.then_weight, t.then_bias)


def _value(part: NormActPart, t: _PartTensors) -> Tensor:
    """The part's value as a new tensor (or the caller's activation or result, uncopied)."""
    if part.result is not None:
        return part.result
    if part.value is not None and part.pool is None:
        y = part.cropped(part.value)
    else:
        y = _activation(part, _normalized_input(part, t), t)
    if part.pool is not None:
        y = _max_pool(part, y)
    return _then_conv(part, _upsample(part, y), t)


def _write_part(part: NormActPart, t: _PartTensors, out: Tensor) -> None:
    """Write the part's value into ``out`` (a channel slice of the buffer)."""
    if _upsamples_into(part):
        assert part.upsample is not None
        _upsample_into(_value(replace(part, upsample=None), t), part.upsample, out)
        return
    if _is_computed(part) or part.value is not None:
        out.copy_(_value(part, t))
        return
    x = part.cropped(t.x)
    if part.stats is not None:
        _normalize(part, x, t, out=out)
        return
    out.copy_(x)
    apply_activation_(out, part.activation)


def _is_computed(part: NormActPart) -> bool:
    """Whether the part's value must be computed before it is written."""
    stages = (part.source_conv, part.pool, part.upsample, part.then_conv, part.result)
    return any(s is not None for s in stages)


def normalize_parts(parts: Sequence[NormActPart], params: Sequence[Tensor | None]) -> Tensor:
    """The concatenation of the parts' values in one new buffer ``(N, sum C_i, *spatial)``."""
    first = _part_tensors(params, 0)
    if len(parts) == 1:
        return _value(parts[0], first)  # nothing to concatenate: no buffer, no copy
    first_value = None
    if _is_computed(parts[0]) and not _upsamples_into(parts[0]):
        first_value = _value(parts[0], first)
    sample = first_value if first_value is not None else parts[0].cropped(first.x)
    spatial = sample.shape[2:]
    if first_value is None and _upsamples_into(parts[0]):
        spatial = _spatial_size(parts[0], tuple(spatial))
    total = sum(part.channels for part in parts)
    out = buffer_pool.empty(
        (sample.shape[0], total, *spatial),
        dtype=sample.dtype,
        device=sample.device,
        memory_format=layout_of(sample),
        transient=True,
    )
    start = 0
    for index, part in enumerate(parts):
        target = out.narrow(1, start, part.channels)
        if index == 0 and first_value is not None:
            target.copy_(first_value)
        else:
            _write_part(part, _part_tensors(params, index), target)
        start += part.channels
    return out


def _spatial_size(part: NormActPart, size: tuple[int, ...]) -> tuple[int, ...]:
    """The spatial size of the part's value from its tensor's (a pooling, then the
    upsampling; crops and ``then_conv`` are not for this)."""
    factor = part.upsample or 1
    return tuple(s * factor for s in part.pooled_size(size))


_MAX_POOL_BACKWARD = {
    4: torch.ops.aten.max_pool2d_with_indices_backward,
    5: torch.ops.aten.max_pool3d_with_indices_backward,
}


def max_pool_backward(part: NormActPart, grad_pooled: Tensor, y: Tensor, indices: Tensor) -> Tensor:
    """Gradient for ``y`` of ``part``'s 2-D or 3-D max pooling of ``y``, scattered with the
    pooling's argmax ``indices`` by the kernel autograd itself runs.

    Args:
        part: The part whose :attr:`NormActPart.pool_geometry` the pooling used.
        grad_pooled: Gradient of the pooled map.
        y: The pooling's input, or any tensor of its shape, dtype and device (only those
            are read).
        indices: ``return_indices=True`` output of the pooling.
    """
    kernel, stride, padding = part.pool_geometry
    n = y.dim() - 2
    return _MAX_POOL_BACKWARD[y.dim()](
        grad_pooled, y, [kernel] * n, [stride] * n, [padding] * n, [1] * n, False, indices
    )


def _pool_backward(
    part: NormActPart, grad_pooled: Tensor, y: Tensor, indices: Tensor | None = None
) -> Tensor:
    """Gradient of ``_max_pool(part, y)`` for ``y``: with the recomputed pooling's
    ``indices`` the kernel autograd runs, else the pooling finds its argmax again."""
    if indices is not None:
        return max_pool_backward(part, grad_pooled, y, indices)
    with torch.enable_grad():
        y_leaf = y.detach().requires_grad_()
        (grad_y,) = torch.autograd.grad(_max_pool(part, y_leaf), y_leaf, grad_pooled)
    return grad_y


@dataclass
class _Recomputed:
    """A part's intermediate values rebuilt in backward; stages drop them once used."""

    x: Tensor | None  # the normalisation's input
    y: Tensor | None  # the activation
    pooled: Tensor | None  # after the pooling
    upsampled: Tensor | None  # after the upsampling: ``then_conv``'s input
    indices: Tensor | None = None  # the pooling's argmax, for its backward


def _recompute(part: NormActPart, t: _PartTensors) -> _Recomputed:
    x = _normalized_input(part, t)
    if part.stats is None and not part.activation and part.crop is None:
        y = x  # a stored map read as it is: nothing to rebuild, nothing to copy
    else:
        y = _activation(part, x, t)
    if part.pool is None:
        return _Recomputed(x, y, y, _upsample(part, y))
    pooled, indices = _max_pool_indices(part, y)
    return _Recomputed(x, y, pooled, _upsample(part, pooled), indices)


def _value_backward(
    part: NormActPart,
    t: _PartTensors,
    r: _Recomputed,
    grad_value: Tensor,
    needs_input_grad: bool,
) -> tuple[Tensor | None, ...]:
    """Gradients of one part's tensors (in :class:`_PartTensors` order) from its value's.

    The stages run backward in reverse order: ``then_conv``, upsampling, ``pool``, the
    activation, ``crop``, the normalisation, ``source_conv``; each recomputed value in
    ``r`` is dropped as soon as its stage is done.
    """
    grad_then_w = grad_then_b = None
    grad_up = grad_value
    del grad_value
    if part.then_conv is not None:
        assert t.then_weight is not None and r.upsampled is not None
        grad_up, grad_then_w, grad_then_b = conv_backward(
            part.then_conv, grad_up, r.upsampled, t.then_weight, has_bias=t.then_bias is not None
        )
        assert grad_up is not None
    r.upsampled = None
    assert r.pooled is not None and r.y is not None and r.x is not None
    grad_pooled = _upsample_backward(part, grad_up, r.pooled)
    del grad_up
    r.pooled = None
    grad_y = grad_pooled if part.pool is None else _pool_backward(part, grad_pooled, r.y, r.indices)
    r.indices = None
    del grad_pooled
    activation_backward_(grad_y, r.y, part.activation)
    r.y = None
    x = r.x
    r.x = None
    if part.crop is not None:
        # The normalisation saw the whole tensor: its backward runs over the whole tensor
        # with zero gradient outside the crop.
        full = buffer_pool.empty_like(x, transient=True).zero_()
        part.cropped(full).copy_(grad_y)
        grad_y = full
    grad_norm_w = grad_norm_b = None
    grad_x = grad_y
    if part.stats is not None:
        backward = group_norm_backward if isinstance(part.stats, GroupStats) else norm_act_backward
        grad_x, grad_norm_w, grad_norm_b = backward(grad_y, x, t.norm_weight, part.stats)  # type: ignore[arg-type]
    del grad_y
    grad_source_w = grad_source_b = None
    if part.source_conv is not None:
        assert t.source_weight is not None
        del x
        grad_x, grad_source_w, grad_source_b = conv_backward(
            part.source_conv,
            grad_x,
            t.x,
            t.source_weight,
            has_bias=t.source_bias is not None,
            input_grad=needs_input_grad,
        )
    return (
        grad_x,
        grad_source_w,
        grad_source_b,
        grad_norm_w,
        grad_norm_b,
        grad_then_w,
        grad_then_b,
    )


def _part_backward(
    conv: _ConvNd,
    part: NormActPart,
    t: _PartTensors,
    grad_out: Tensor,
    weight: Tensor,
    channels: slice,
    grad_weight: Tensor,
    needs_input_grad: bool,
) -> tuple[Tensor | None, ...]:
    """Gradients of one part's tensors (in :class:`_PartTensors` order).

    Fills the part's slice of ``grad_weight`` (the gradient of ``conv``'s weight). A
    convolution is a sum over input channels, so each part's input gradient and weight
    gradient need only that part's recomputed value: the concatenation is never rebuilt
    at full width in backward.
    """
    r = _recompute(part, t)
    assert r.upsampled is not None
    value = _then_conv(part, r.upsampled, t)
    if part.then_conv is None:
        r.upsampled = None  # ``value`` is the same tensor; the conv backward below holds it
    in_dim = 0 if conv.transposed else 1  # transposed weights are (in, out, *kernel)
    part_weight = weight.narrow(in_dim, channels.start, channels.stop - channels.start)
    grad_value, grad_w, _ = chosen_conv_backward(conv, grad_out, value, part_weight, has_bias=False)
    assert grad_value is not None and grad_w is not None
    grad_weight.narrow(in_dim, channels.start, channels.stop - channels.start).copy_(grad_w)
    # A convolution with few output channels (a U-Net's head) may return its input
    # gradient in the default layout; the elementwise backward below wants one layout.
    grad_value = to_layout(grad_value, layout_of(value))
    del grad_w, value
    return _value_backward(part, t, r, grad_value, needs_input_grad)


class _NormActConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        conv: _ConvNd,
        parts: Sequence[NormActPart],
        *tensors: Tensor | None,
    ) -> Tensor:
        release_if_piled_up()
        part_params, weight, bias = tensors[:-2], tensors[-2], tensors[-1]
        assert weight is not None
        y = normalize_parts(parts, part_params)
        # The consumer usually keeps the output until backward (the next part's tensor):
        # a pooled block, so malloc's heap holds only transients (see buffer_pool).
        out = chosen_conv_forward(conv, y, weight, bias)
        out = buffer_pool.moved_to_pool(out)
        ctx.conv = conv
        ctx.layout = layout_of(y)  # the input's: the backend may give a few-channel output another
        # The parts' tensors are saved below; ctx keeps only their descriptions.
        ctx.parts = [part.shape_only() for part in parts]
        ctx.save_for_backward(*tensors)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        release_if_piled_up()
        tensors = ctx.saved_tensors
        parts: Sequence[NormActPart] = ctx.parts
        weight, bias = tensors[-2], tensors[-1]
        # The gradient arrives in whatever layout the consumer made (e.g. a contiguous
        # copy of the logits); in another layout than the forward input's, every
        # convolution backward below would reorder it and its results into transient copies.
        grad_out = grad_out.contiguous(memory_format=ctx.layout)
        grad_weight = torch.empty_like(weight)
        grads: list[Tensor | None] = []
        start = 0
        for index, part in enumerate(parts):
            # ctx.needs_input_grad counts conv and parts, then the tensors.
            needs_input_grad = ctx.needs_input_grad[2 + _TENSORS_PER_PART * index]
            grads.extend(
                _part_backward(
                    ctx.conv,
                    part,
                    _part_tensors(tensors, index),
                    grad_out,
                    weight,
                    slice(start, start + part.channels),
                    grad_weight,
                    needs_input_grad,
                )
            )
            start += part.channels
        grad_bias = None
        if bias is not None:
            grad_bias = grad_out.sum(dim=[0, *range(2, grad_out.dim())], dtype=bias.dtype)
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
    for part in parts:
        check_input_dtype(part.tensor, conv.weight, f"{type(conv).__name__} on the engine")
    return in_engine_precision(
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
            return chosen_conv_forward(
                conv, normalize_parts(parts, tensors[:-2]), conv.weight, conv.bias
            )
    return _NormActConvFunction.apply(conv, parts, *tensors)


class _PartValueFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, part: NormActPart, *tensors: Tensor | None) -> Tensor:  # type: ignore[override]
        value = _value(part, _part_tensors(tensors, 0))
        ctx.part = part.shape_only()
        ctx.save_for_backward(*tensors)
        return value

    @staticmethod
    def backward(ctx: Any, grad_value: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        t = _part_tensors(ctx.saved_tensors, 0)
        part: NormActPart = ctx.part
        r = _recompute(part, t)
        if r.upsampled is not None:
            grad_value = grad_value.contiguous(memory_format=layout_of(r.upsampled))
        if part.then_conv is None and part.pool is None and part.upsample in (None, 1):
            # The activation backward works in place on the gradient it is given, and
            # autograd may hand the same tensor to other consumers (``a + part_value(p)``).
            grad_value = grad_value.clone()
        grads = _value_backward(part, t, r, grad_value, ctx.needs_input_grad[1])
        return (None, *grads)


def part_value(part: NormActPart) -> Tensor:
    """One part's value with autograd, storing only the part's tensors and statistics.

    For a value that feeds something other than a convolution (a residual sum, the
    model's output) as well as :func:`norm_act_conv`: this consumer gets the value's
    gradient through the recomputation, each ``norm_act_conv`` reading the same part adds
    its own, and the activation itself is never stored (see :class:`NormActPart`).
    """
    tensors = part.tensors()
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    if not needs_grad:
        with torch.no_grad():
            return _value(part, _part_tensors(tensors, 0))
    return _PartValueFunction.apply(part, *tensors)
