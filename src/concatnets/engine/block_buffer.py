"""A dense block on one shared feature buffer and one shared gradient buffer.

Implements the memory-efficient DenseNet of Pleiss et al. 2017 ("Memory-Efficient
Implementation of DenseNets", arXiv 1707.06990) for the layers of
:class:`~concatnets.engine.dense_layer.DenseLayerSpec`: DenseNet-BC's
BN -> ReLU -> 1x1 conv -> BN -> ReLU -> 3x3 conv -> dropout and FC-DenseNet's
BN -> ReLU -> 3x3 conv -> dropout (Jégou et al. 2017):

* Forward writes the block's input parts (e.g. an FC-DenseNet up block's
  ``[skip, upsampled]``) once into one pre-allocated buffer ``(N, C0 + L * k, *spatial)``,
  then every layer's new channels into their slice; layer ``l`` reads the view
  ``buffer[:, :C0 + l * k]``. Concatenation is a view, never a copy, the block's output is
  the buffer itself, and nothing but the buffer is stored for the input parts.
* Batch statistics of each channel are computed once, when the channel is written (or
  handed in with a part): every later layer normalises the same data, so its batch-norm
  mean and variance are the same numbers (only the affine parameters differ). Running
  statistics are updated once per layer per forward, exactly as in the naive network. The
  moments of every output channel are returned for whatever normalises the output next.
* A bottleneck's 1x1 convolution may run as a matrix product into the block's workspace
  (:mod:`concatnets.engine.pointwise`, chosen per machine): its chunks add into one
  output, and each chunk's input gradient goes into a reused slot.
* Backward walks the layers in reverse, recomputes the normalised, rectified input of each
  layer from the saved statistics, and accumulates input gradients in place in one shared
  gradient buffer (no per-layer gradient tensors kept alive by narrow views).

Memory kept between forward and backward is linear in depth: the buffer, per-channel
statistics, dropout masks, and (policy ``"keep"``, bottleneck layers only) each layer's
bottleneck output, or (policy ``"recompute"``) nothing else at the price of one more 1x1
convolution per layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

from concatnets.engine import buffer_pool
from concatnets.engine.conv import conv_backward, conv_forward
from concatnets.engine.dense_layer import (
    WEIGHTS_PER_LAYER,
    ChannelMoments,
    DenseLayerLike,
    DenseLayerSpec,
    LayerWeights,
    dense_layer_spec,
)
from concatnets.engine.heap_release import release_if_piled_up
from concatnets.engine.pointwise import pointwise_backward, pointwise_forward
from concatnets.engine.pointwise_choice import runs_gemm
from concatnets.engine.precision import (
    check_input_dtype,
    in_engine_precision,
    is_reduced,
    stats_dtype,
)
from concatnets.engine.stats import (
    NormStats,
    batch_moments,
    norm_act,
    norm_act_backward,
    norm_act_forward,
    norm_stats,
    relu_backward_,
    scale_shift_act,
    uses_batch_stats,
)

__all__ = ["BottleneckPolicy", "DenseBlockOutput", "dense_block", "run_dense_block"]

BottleneckPolicy = Literal["keep", "recompute"]


class DenseBlockOutput(NamedTuple):
    """What :func:`run_dense_block` returns.

    Attributes:
        features: The shared buffer ``(N, C0 + L * k, *spatial)``: the input parts, then
            each layer's new maps.
        moments: Batch mean and biased variance of every channel of ``features``, or None
            when no layer normalised with batch statistics (eval mode).
    """

    features: Tensor
    moments: ChannelMoments | None


@dataclass
class _LayerRecord:
    """What one layer keeps from forward for backward."""

    stats1: NormStats
    stats2: NormStats | None  # None without a bottleneck
    bottleneck: Tensor | None  # conv1 output before norm2 (policy "keep")
    dropout_mask: Tensor | None  # bool, True where kept
    drop_scale: float


def _layer_weights(params: Sequence[Tensor | None], index: int) -> LayerWeights:
    return LayerWeights(*params[index * WEIGHTS_PER_LAYER : (index + 1) * WEIGHTS_PER_LAYER])  # type: ignore[arg-type]


def _check_layers(layers: Sequence[DenseLayerSpec], in_channels: int) -> None:
    channels = in_channels
    for index, layer in enumerate(layers):
        if layer.conv1.in_channels != channels:
            raise ValueError(
                f"dense layer {index} expects {layer.conv1.in_channels} input channels but the "
                f"block gives it {channels}; build layer {index} with in_channels={channels}"
            )
        channels += layer.growth


# Arguments of _DenseBlockFunction.forward before the tensors (layers ... num_parts).
_NON_TENSOR_ARGS = 5


class _DenseBlockFunction(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        layers: Sequence[DenseLayerSpec],
        policy: BottleneckPolicy,
        part_moments: Sequence[ChannelMoments | None],
        spare_channels: int,
        num_parts: int,
        *tensors: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        release_if_piled_up()
        parts = tensors[:num_parts]
        params = tensors[num_parts:]
        buffer, moments, records = _forward(
            layers,
            parts,  # type: ignore[arg-type]
            part_moments,
            params,
            policy=policy,
            record=True,
            spare_channels=spare_channels,
        )
        ctx.layers = layers
        ctx.part_channels = [int(p.shape[1]) for p in parts]  # type: ignore[union-attr]
        # Per-channel statistics are tiny and stay on ctx; every activation-sized tensor goes
        # through save_for_backward, so autograd frees it right after backward (and keeps it
        # for a second backward with retain_graph=True). The input parts are not saved:
        # their values are the buffer's first channels.
        ctx.stats = [(r.stats1, r.stats2, r.drop_scale) for r in records]
        ctx.num_params = len(params)
        ctx.save_for_backward(
            buffer,
            *params,
            *(r.bottleneck for r in records),
            *(r.dropout_mask for r in records),
        )
        empty = buffer.new_empty(0, dtype=stats_dtype(buffer.dtype))
        mean, var = moments if moments is not None else (empty, empty)
        ctx.mark_non_differentiable(mean, var)
        return buffer, mean, var

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor, *_moment_grads: Any) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        release_if_piled_up()
        saved = ctx.saved_tensors
        layers: Sequence[DenseLayerSpec] = ctx.layers
        count = len(layers)
        buffer = saved[0]
        params = saved[1 : 1 + ctx.num_params]
        bottlenecks = saved[1 + ctx.num_params : 1 + ctx.num_params + count]
        masks = saved[1 + ctx.num_params + count :]
        # One gradient buffer for the whole block, accumulated in place (a pooled block:
        # the same memory every step, see buffer_pool).
        grad_buffer = _pooled(grad_output.shape, grad_output, transient=True).copy_(grad_output)
        param_grads: list[Tensor | None] = [None] * len(params)
        channels = buffer.shape[1]
        workspace = _Workspace(buffer, _workspace_numel(layers, buffer))
        for index in reversed(range(count)):
            layer = layers[index]
            stats1, stats2, drop_scale = ctx.stats[index]
            record = _LayerRecord(stats1, stats2, bottlenecks[index], masks[index], drop_scale)
            channels -= layer.growth
            grads = _layer_backward(
                layer,
                record,
                _layer_weights(params, index),
                buffer.narrow(1, 0, channels),
                grad_buffer.narrow(1, channels, layer.growth),
                grad_buffer.narrow(1, 0, channels),
                workspace,
            )
            del record
            param_grads[index * WEIGHTS_PER_LAYER : (index + 1) * WEIGHTS_PER_LAYER] = grads
        # Each part's gradient is its own tensor: a narrow view would keep the whole
        # gradient buffer alive as long as any part's consumer holds it.
        part_grads: list[Tensor | None] = []
        start = 0
        for index, width in enumerate(ctx.part_channels):
            needed = ctx.needs_input_grad[_NON_TENSOR_ARGS + index]
            grad = grad_buffer.narrow(1, start, width)
            part_grads.append(_pooled(grad.shape, grad).copy_(grad) if needed else None)
            start += width
        return (*[None] * _NON_TENSOR_ARGS, *part_grads, *param_grads)


def _chunks(channels: int, width: int) -> list[tuple[int, int]]:
    """``(start, length)`` spans of at most ``width`` channels covering ``channels``."""
    return [(start, min(width, channels - start)) for start in range(0, channels, width)]


# Values per chunk of a layer's input in backward (32 MiB of float32). Smaller chunks save
# little memory and cost kernel-call time: densenet_bc_100 (batch 64, 32x32) measured
# 1.06x naive CPU time with 48-channel chunks and 0.94x with 128-channel ones, and
# densenet121 (batch 8, 224x224) paid 9% for 128-channel chunks of its small late maps.
_CHUNK_ELEMENTS = 8 * 2**20


def _chunk_width(layer: DenseLayerSpec, features: Tensor) -> int:
    # At least the width of conv1's output, so backward's transients stay about what one
    # layer keeps anyway: memory stays linear in depth.
    per_channel = features.numel() // max(features.shape[1], 1)
    return max(int(layer.conv1.out_channels), _CHUNK_ELEMENTS // max(per_channel, 1))


def _pooled(shape: tuple[int, ...] | torch.Size, like: Tensor, transient: bool = False) -> Tensor:
    """A new contiguous tensor of ``shape`` in ``like``'s dtype and device, pooled on CPU."""
    return buffer_pool.empty(shape, dtype=like.dtype, device=like.device, transient=transient)


def _workspace_numel(layers: Sequence[DenseLayerSpec], buffer: Tensor) -> int:
    """Elements of the largest input chunk any layer of the block reads."""
    per_channel = buffer.numel() // max(buffer.shape[1], 1)
    channels = buffer.shape[1] - sum(layer.growth for layer in layers)
    largest = 0
    for layer in layers:
        largest = max(largest, min(channels, _chunk_width(layer, buffer)))
        channels += layer.growth
    return largest * per_channel


class _Workspace:
    """Reusable scratch tensors for the per-chunk temporaries of one block pass.

    Every layer needs the same few chunk-sized temporaries. Each slot is allocated once
    per pass at the size of the block's largest chunk (``numel``), from the buffer pool,
    so neither a growing layer nor the next step asks malloc again.
    """

    def __init__(self, like: Tensor, numel: int) -> None:
        self._like = like
        self._numel = numel
        self._slots: dict[str, Tensor] = {}

    def get(self, slot: str, shape: tuple[int, ...] | torch.Size) -> Tensor:
        numel = 1
        for size in shape:
            numel *= size
        flat = self._slots.get(slot)
        if flat is None or flat.numel() < numel:
            flat = _pooled((max(numel, self._numel),), self._like, transient=True)
            self._slots[slot] = flat
        return flat[:numel].view(shape)


def _narrow(t: Tensor | None, dim: int, start: int, length: int) -> Tensor | None:
    return None if t is None else t.narrow(dim, start, length)


def _first_conv(
    layer: DenseLayerSpec,
    w: LayerWeights,
    features: Tensor,
    stats1: NormStats,
    workspace: _Workspace,
) -> Tensor:
    """``conv1(relu(norm1(features)))``, reading the input a chunk of channels at a time.

    A convolution is a sum over input channels and batch norm acts per channel, so the
    chunks add up to the whole; the rectified input never exists at full width.
    """
    out: Tensor | None = None
    for start, length in _chunks(features.shape[1], _chunk_width(layer, features)):
        chunk = features.narrow(1, start, length)
        if is_reduced(chunk.dtype):
            # The native kernel that normalises float16/bfloat16 reads a strided view of
            # the buffer about 2x slower than a copy plus a pass over contiguous data.
            chunk = workspace.get("chunk", tuple(chunk.shape)).copy_(chunk)
        y1 = norm_act(
            chunk,
            _narrow(w.norm1_weight, 0, start, length),
            _narrow(w.norm1_bias, 0, start, length),
            stats1.narrow(start, length),
            out=workspace.get("y1", tuple(chunk.shape)),
        )
        weight = w.conv1_weight.narrow(1, start, length)
        if runs_gemm(layer.conv1, y1):
            # Chunks add into one tensor: no partial sum per chunk.
            out = pointwise_forward(
                y1, weight, w.conv1_bias if out is None else None, out=out, accumulate=True
            )
            continue
        part = conv_forward(layer.conv1, y1, weight, w.conv1_bias if out is None else None)
        out = part if out is None else out.add_(part)
    assert out is not None
    return out


# A block output run with spare channels -> the whole buffer it is the first channels
# of, for the one later block that starts from that output (see run_dense_block).
_SPARE: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _alias(full: Tensor, channels: int) -> Tensor:
    """The first ``channels`` channels of ``full`` as a tensor with a version counter of
    its own (not a view): writing ``full``'s other channels later does not bump it, so
    autograd's check on a saved alias stays quiet. Those writes never touch its values."""
    view = full.narrow(1, 0, channels)
    alias = full.new_empty(0)
    return alias.set_(full.untyped_storage(), view.storage_offset(), view.shape, view.stride())


def _reserved_buffer(first: Tensor, channels: int) -> Tensor | None:
    """The buffer reserved after ``first`` (a block output run with spare channels) when it
    has at least ``channels`` channels; the reservation serves one block only."""
    if torch.compiler.is_compiling():
        return None  # dynamo does not trace weak dictionaries: traced graphs copy the part
    full = _SPARE.get(first)
    if full is None or full.shape[1] < channels:
        return None
    del _SPARE[first]
    same = first.data_ptr() == full.data_ptr() and first.stride() == full.stride()
    return full if same and first.dtype == full.dtype else None


def _write_parts(
    parts: Sequence[Tensor],
    part_moments: Sequence[ChannelMoments | None],
    total: int,
    need_moments: bool,
    spare_channels: int = 0,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The block's buffer with the parts written into its first channels, and the
    per-channel moments tensors (parts' moments filled in, handed in or computed).

    When the first part is a block output with enough spare channels reserved after it,
    the buffer is that storage and the first part is not copied. With ``spare_channels``
    the buffer is allocated (or taken) that much wider and the extra channels reserved
    for the next block that starts from this one's output.
    """
    first = parts[0]
    full = _reserved_buffer(first, total + spare_channels)
    first_in_place = full is not None  # the first part is already the buffer's start
    if full is None:
        shape = (first.shape[0], total + spare_channels, *first.shape[2:])
        full = _pooled(shape, first)  # (N, C0 + L*k + spare, *spatial)
    buffer = full if full.shape[1] == total else _alias(full, total)
    if spare_channels and not torch.compiler.is_compiling():
        _SPARE[buffer] = full
    moments_dtype = stats_dtype(first.dtype)  # float32 under autocast
    means = first.new_empty(total, dtype=moments_dtype) if need_moments else None
    variances = first.new_empty(total, dtype=moments_dtype) if need_moments else None
    start = 0
    for index, (part, known) in enumerate(zip(parts, part_moments, strict=True)):
        width = part.shape[1]
        if index > 0 or not first_in_place:
            buffer.narrow(1, start, width).copy_(part)
        if means is not None and variances is not None:
            m, v = known if known is not None else batch_moments(part)
            means[start : start + width], variances[start : start + width] = m, v
        start += width
    return buffer, means, variances


def _dropout_(layer: DenseLayerSpec, new: Tensor) -> tuple[Tensor | None, float]:
    """Apply the layer's dropout to ``new`` in place; the kept-mask and the scale."""
    rate = layer.active_drop_rate
    if rate <= 0:
        return None, 1.0
    keep = 1.0 - rate
    # Same draw as F.dropout on CPU: bernoulli_(1 - p) on a tensor shaped like ``new``.
    noise = torch.empty_like(new).bernoulli_(keep)
    scale = 1.0 / keep
    new.mul_(noise).mul_(scale)
    return noise.bool(), scale


def _forward(
    layers: Sequence[DenseLayerSpec],
    parts: Sequence[Tensor],
    part_moments: Sequence[ChannelMoments | None],
    params: Sequence[Tensor | None],
    *,
    policy: BottleneckPolicy,
    record: bool,
    spare_channels: int = 0,
) -> tuple[Tensor, ChannelMoments | None, list[_LayerRecord]]:
    in_channels = sum(int(part.shape[1]) for part in parts)
    total = in_channels + sum(layer.growth for layer in layers)
    need_moments = any(uses_batch_stats(layer.norm1) for layer in layers)
    buffer, means, variances = _write_parts(
        parts, part_moments, total, need_moments, spare_channels
    )
    workspace = _Workspace(buffer, _workspace_numel(layers, buffer))
    records: list[_LayerRecord] = []
    channels = in_channels
    for index, layer in enumerate(layers):
        w = _layer_weights(params, index)
        features = buffer.narrow(1, 0, channels)  # the concatenation: a view
        moments = (
            (means[:channels], variances[:channels])
            if means is not None and variances is not None
            else None
        )
        stats1 = norm_stats(layer.norm1, features, moments=moments)
        first = _first_conv(layer, w, features, stats1, workspace)
        if record and policy == "keep" and layer.has_bottleneck:
            # Kept until backward: moved to a pooled block at once, so malloc's heap holds
            # only this step's transients, never long-lived blocks between them.
            first = buffer_pool.moved_to_pool(first)
        stats2: NormStats | None = None
        if layer.norm2 is not None and layer.conv2 is not None:
            y2, stats2 = norm_act_forward(layer.norm2, first, w.norm2_weight, w.norm2_bias)
            new = conv_forward(layer.conv2, y2, w.conv2_weight, w.conv2_bias)  # type: ignore[arg-type]
            del y2
        else:
            new = first  # (N, k, *spatial)
        growth = new.shape[1]
        mask, scale = _dropout_(layer, new)
        buffer.narrow(1, channels, growth).copy_(new)
        if means is not None and variances is not None:
            m, v = batch_moments(new)
            means[channels : channels + growth], variances[channels : channels + growth] = m, v
        del new
        if record:
            kept = first if policy == "keep" and layer.has_bottleneck else None
            records.append(_LayerRecord(stats1, stats2, kept, mask, scale))
        del first
        channels += growth
    moments_out = None
    if means is not None and variances is not None:
        moments_out = ChannelMoments(means, variances)
    return buffer, moments_out, records


def _bottleneck_backward(
    layer: DenseLayerSpec,
    record: _LayerRecord,
    w: LayerWeights,
    features: Tensor,
    grad_new: Tensor,
    workspace: _Workspace,
) -> tuple[Tensor, list[Tensor | None]]:
    """Backward of BN -> ReLU -> conv2: the gradient of conv1's output, and the gradients
    of norm2's and conv2's weight and bias."""
    assert layer.conv2 is not None and record.stats2 is not None and w.conv2_weight is not None
    bottleneck = record.bottleneck
    if bottleneck is None:  # policy "recompute"
        bottleneck = _first_conv(layer, w, features, record.stats1, workspace)
    # Each recomputed activation is freed as soon as its ReLU mask has been applied.
    y2 = norm_act(
        bottleneck,
        w.norm2_weight,
        w.norm2_bias,
        record.stats2,
        out=buffer_pool.empty_like(bottleneck, transient=True),
    )
    grad_y2, grad_conv2_w, grad_conv2_b = conv_backward(
        layer.conv2, grad_new, y2, w.conv2_weight, has_bias=w.conv2_bias is not None
    )
    assert grad_y2 is not None
    relu_backward_(grad_y2, y2)
    del y2
    grad_bottleneck, grad_norm2_w, grad_norm2_b = norm_act_backward(
        grad_y2, bottleneck, w.norm2_weight, record.stats2
    )
    return grad_bottleneck, [grad_norm2_w, grad_norm2_b, grad_conv2_w, grad_conv2_b]


# From this size on glibc serves every block with a fresh mmap (its dynamic threshold
# stops at 32 MiB), so a chunk-sized input gradient is page-faulted anew every layer.
# Adding it in place instead measured 0.45x the time on (64, 200, 32, 32) float32 and
# 1.25-1.45x on densenet121's smaller chunks (AMD EPYC, 1 thread), hence the bound.
_IN_PLACE_INPUT_GRAD_BYTES = 32 * 2**20


def _input_grad_in_place(chunk: Tensor, weight: Tensor | None, stats: NormStats) -> bool:
    """Whether :func:`_add_norm_input_grad` serves this chunk (see the bound above)."""
    big = chunk.numel() * chunk.element_size() >= _IN_PLACE_INPUT_GRAD_BYTES
    return big and weight is not None and stats.batch and not is_reduced(chunk.dtype)


def _add_norm_input_grad(
    grad_y: Tensor, x: Tensor, weight: Tensor, stats: NormStats, target: Tensor
) -> tuple[Tensor, Tensor]:
    """Add batch norm's input gradient (batch statistics) into ``target`` in place;
    return the weight and bias gradients. Overwrites ``x`` (a scratch copy).

    The input gradient is ``a * grad_y + b * x + c`` per channel, with
    ``a = w * invstd``, ``b = -a * invstd * sum(grad_y * x_hat) / n`` and
    ``c = -a * sum(grad_y) / n - b * mean``; the two sums are the weight and bias
    gradients, which the native kernel returns without writing an input gradient, so
    no chunk-sized gradient tensor is allocated.
    """
    _, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
        grad_y,
        x,
        weight,
        None,
        None,
        stats.mean,
        stats.invstd,
        True,
        stats.eps,
        [False, True, True],
    )
    count = x.numel() // max(x.shape[1], 1)
    a = weight * stats.invstd
    b = -a * stats.invstd * grad_weight / count
    c = -a * grad_bias / count - b * stats.mean
    view = (-1,) + (1,) * (x.dim() - 2)
    scale_shift_act(x, b.view(view), c.view(view), activation=False, out=x)  # b * x + c
    target.addcmul_(grad_y, a.view(view)).add_(x)
    return grad_weight, grad_bias


def _layer_backward(
    layer: DenseLayerSpec,
    record: _LayerRecord,
    w: LayerWeights,
    features: Tensor,
    grad_new: Tensor,
    grad_features: Tensor,
    workspace: _Workspace,
) -> list[Tensor | None]:
    """Backward of one layer; adds its input gradient into ``grad_features`` in place.

    Returns the gradients of the layer's tensors in :class:`LayerWeights` order.
    """
    if record.dropout_mask is not None:
        grad_new = grad_new * record.dropout_mask * record.drop_scale
    second: list[Tensor | None] = [None, None, None, None]
    grad_first = grad_new
    if layer.has_bottleneck:
        grad_first, second = _bottleneck_backward(layer, record, w, features, grad_new, workspace)
    del grad_new
    # conv1 and norm1 act per input channel: their backward runs a chunk of channels at a
    # time, so the recomputed input and its gradients never exist at the layer's full width.
    grad_conv1_w = torch.empty_like(w.conv1_weight)
    grad_norm1_w = None if w.norm1_weight is None else torch.empty_like(w.norm1_weight)
    grad_norm1_b = None if w.norm1_bias is None else torch.empty_like(w.norm1_bias)
    grad_conv1_b: Tensor | None = None
    for start, length in _chunks(features.shape[1], _chunk_width(layer, features)):
        # A contiguous copy of the chunk: the native batch-norm backward and the
        # recomputation run about twice as fast on it as on a strided view of the buffer.
        view = features.narrow(1, start, length)
        chunk = workspace.get("chunk", tuple(view.shape)).copy_(view)
        stats = record.stats1.narrow(start, length)
        norm_w = _narrow(w.norm1_weight, 0, start, length)
        y1 = norm_act(
            chunk,
            norm_w,
            _narrow(w.norm1_bias, 0, start, length),
            stats,
            out=workspace.get("y1", tuple(view.shape)),
        )
        weight = w.conv1_weight.narrow(1, start, length)
        has_bias = w.conv1_bias is not None and start == 0
        if runs_gemm(layer.conv1, y1):
            # The input gradient goes into the workspace: no chunk-sized allocation.
            grad_y1, conv_w, conv_b = pointwise_backward(
                grad_first,
                y1,
                weight,
                has_bias=has_bias,
                grad_input=workspace.get("grad_y1", tuple(view.shape)),
            )
        else:
            grad_y1, conv_w, conv_b = conv_backward(
                layer.conv1, grad_first, y1, weight, has_bias=has_bias
            )
        assert grad_y1 is not None and conv_w is not None
        grad_conv1_w.narrow(1, start, length).copy_(conv_w)
        if start == 0:
            grad_conv1_b = conv_b
        relu_backward_(grad_y1, y1)
        del y1
        target = grad_features.narrow(1, start, length)
        if _input_grad_in_place(chunk, norm_w, stats):
            norm_gw, norm_gb = _add_norm_input_grad(grad_y1, chunk, norm_w, stats, target)
        else:
            grad_x, norm_gw, norm_gb = norm_act_backward(grad_y1, chunk, norm_w, stats)
            target.add_(grad_x)
            del grad_x
        del grad_y1
        if grad_norm1_w is not None and norm_gw is not None:
            grad_norm1_w.narrow(0, start, length).copy_(norm_gw)
        if grad_norm1_b is not None and norm_gb is not None:
            grad_norm1_b.narrow(0, start, length).copy_(norm_gb)
    return [grad_norm1_w, grad_norm1_b, grad_conv1_w, grad_conv1_b, *second]


def run_dense_block(
    inputs: Tensor | Sequence[Tensor],
    layers: Sequence[DenseLayerLike | DenseLayerSpec],
    *,
    input_moments: Sequence[ChannelMoments | None] | None = None,
    policy: BottleneckPolicy = "keep",
    spare_channels: int = 0,
) -> DenseBlockOutput:
    """Run a dense block on a shared buffer; returns the buffer and its channels' moments.

    Args:
        inputs: The block input ``(N, C0, *spatial)``, or the parts whose concatenation
            it is (e.g. ``[skip, upsampled]``), each written once into the buffer and not
            stored otherwise.
        layers: The block's layers (:class:`DenseLayerSpec`, or DenseNet-BC modules with
            torchvision's names), with ``layers[l].conv1.in_channels == C0 + l * k``.
        input_moments: Per part, its :class:`ChannelMoments` when already known (e.g. a
            skip's, from the block that produced it) or None to compute them.
        policy: ``"keep"`` stores each bottleneck layer's 1x1 convolution output (fast;
            memory linear in depth with slope ``bn_size * k``); ``"recompute"`` recomputes
            it in backward (one more 1x1 convolution per layer, least memory). Layers
            without a bottleneck store nothing either way.
        spare_channels: Channels allocated after the output in the same storage and
            reserved for the next block whose first input part is this output (e.g. an
            FC-DenseNet down block's, for the up block that starts from ``[skip,
            upsampled]``): that block writes its other parts and new maps there, so its
            first part is neither copied nor stored twice. A reservation serves one block;
            a block that starts from an output without one (or too narrow) copies it.

    Gradients are exact (same as the naive network up to floating-point rounding); double
    backward is not supported. Under ``torch.autocast`` the buffer, the bottleneck outputs
    and the convolutions are in the autocast dtype, statistics in float32
    (:mod:`concatnets.engine.precision`).
    """
    if policy not in ("keep", "recompute"):
        raise ValueError(f"policy must be 'keep' or 'recompute', got {policy!r}")
    parts = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    if not parts:
        raise ValueError("run_dense_block needs at least one input part")
    moments = list(input_moments) if input_moments is not None else [None] * len(parts)
    if len(moments) != len(parts):
        raise ValueError(
            f"input_moments has {len(moments)} entries for {len(parts)} input parts; give "
            "one ChannelMoments or None per part"
        )
    if (
        not isinstance(spare_channels, int)
        or isinstance(spare_channels, bool)
        or spare_channels < 0
    ):
        raise ValueError(f"spare_channels must be a non-negative integer, got {spare_channels!r}")
    specs = [dense_layer_spec(layer) for layer in layers]
    _check_layers(specs, sum(int(part.shape[1]) for part in parts))
    if specs:
        for part in parts:
            check_input_dtype(part, specs[0].conv1.weight, "dense block")
    return in_engine_precision(
        parts[0].device,
        lambda cast: _dense_block([cast(p) for p in parts], moments, specs, policy, spare_channels),
    )


def dense_block(
    x: Tensor,
    layers: Sequence[DenseLayerLike | DenseLayerSpec],
    *,
    policy: BottleneckPolicy = "keep",
) -> Tensor:
    """The buffer ``(N, C0 + L*k, *spatial)`` of :func:`run_dense_block` on input ``x``."""
    return run_dense_block(x, layers, policy=policy).features


def _dense_block(
    parts: list[Tensor],
    part_moments: list[ChannelMoments | None],
    layers: Sequence[DenseLayerSpec],
    policy: BottleneckPolicy,
    spare_channels: int,
) -> DenseBlockOutput:
    params = [p for layer in layers for p in layer.weights()]
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (*parts, *params)
    )
    if not needs_grad:
        with torch.no_grad():
            buffer, moments, _ = _forward(
                layers,
                parts,
                part_moments,
                params,
                policy=policy,
                record=False,
                spare_channels=spare_channels,
            )
        return DenseBlockOutput(buffer, moments)
    buffer, mean, var = _DenseBlockFunction.apply(
        layers, policy, part_moments, spare_channels, len(parts), *parts, *params
    )
    return DenseBlockOutput(buffer, ChannelMoments(mean, var) if mean.numel() else None)
