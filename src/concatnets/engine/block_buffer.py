"""A dense block on one shared feature buffer and one shared gradient buffer.

Implements the memory-efficient DenseNet of Pleiss et al. 2017 ("Memory-Efficient
Implementation of DenseNets", arXiv 1707.06990) for layers of the form
BN -> ReLU -> conv (1x1 bottleneck) -> BN -> ReLU -> conv (3x3) -> dropout
(Huang et al. 2017, DenseNet-BC):

* Forward writes every layer's new channels into its slice of one pre-allocated buffer
  ``(N, C0 + L * k, *spatial)``; layer ``l`` reads the view ``buffer[:, :C0 + l * k]``.
  Concatenation is a view, never a copy, and the block's output is the buffer itself.
* Batch statistics of each channel are computed once, when the channel is written: every
  later layer normalises the same data, so its batch-norm mean and variance are the same
  numbers (only the affine parameters differ). Running statistics are updated once per
  layer per forward, exactly as in the naive network.
* Backward walks the layers in reverse, recomputes the normalised, rectified input of each
  layer from the saved statistics, and accumulates input gradients in place in one shared
  gradient buffer (no per-layer gradient tensors kept alive by narrow views).

Memory kept between forward and backward is linear in depth: the buffer, per-channel
statistics, dropout masks, and (policy ``"keep"``) each layer's bottleneck output, or
(policy ``"recompute"``) nothing else at the price of one more 1x1 convolution per layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from concatnets.engine.conv import conv_backward, conv_forward
from concatnets.engine.precision import in_engine_precision, is_reduced, stats_dtype
from concatnets.engine.stats import (
    NormStats,
    batch_moments,
    norm_act,
    norm_act_backward,
    norm_act_forward,
    norm_stats,
    relu_backward_,
    uses_batch_stats,
)

__all__ = ["BottleneckPolicy", "DenseLayerLike", "dense_block"]

BottleneckPolicy = Literal["keep", "recompute"]

# Tensors per layer passed to the autograd function, in this order.
_PARAMS_PER_LAYER = 8


class DenseLayerLike(Protocol):
    """What the engine needs of a dense layer (the model's module provides it)."""

    norm1: _BatchNorm
    conv1: _ConvNd
    norm2: _BatchNorm
    conv2: _ConvNd
    drop_rate: float
    training: bool


def _layer_params(layer: DenseLayerLike) -> list[Tensor | None]:
    return [
        layer.norm1.weight,
        layer.norm1.bias,
        layer.conv1.weight,
        layer.conv1.bias,
        layer.norm2.weight,
        layer.norm2.bias,
        layer.conv2.weight,
        layer.conv2.bias,
    ]


@dataclass
class _LayerRecord:
    """What one layer keeps from forward for backward."""

    stats1: NormStats
    stats2: NormStats
    bottleneck: Tensor | None  # conv1 output before norm2 (policy "keep")
    dropout_mask: Tensor | None  # bool, True where kept
    drop_scale: float


def _growth(layer: DenseLayerLike) -> int:
    return int(layer.conv2.out_channels)


def _check_layers(layers: Sequence[DenseLayerLike], in_channels: int) -> None:
    channels = in_channels
    for index, layer in enumerate(layers):
        if layer.conv1.in_channels != channels:
            raise ValueError(
                f"dense layer {index} expects {layer.conv1.in_channels} input channels but the "
                f"block gives it {channels}; build layer {index} with in_channels={channels}"
            )
        channels += _growth(layer)


class _DenseBlockFunction(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        layers: Sequence[DenseLayerLike],
        policy: BottleneckPolicy,
        x: Tensor,
        *params: Tensor | None,
    ) -> Tensor:
        buffer, records = _forward(layers, x, params, policy=policy, record=True)
        ctx.layers = layers
        ctx.in_channels = x.shape[1]
        # Per-channel statistics are tiny and stay on ctx; every activation-sized tensor goes
        # through save_for_backward, so autograd frees it right after backward (and keeps it
        # for a second backward with retain_graph=True).
        ctx.stats = [(r.stats1, r.stats2, r.drop_scale) for r in records]
        ctx.num_params = len(params)
        ctx.save_for_backward(
            buffer,
            *params,
            *(r.bottleneck for r in records),
            *(r.dropout_mask for r in records),
        )
        return buffer

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        saved = ctx.saved_tensors
        layers: Sequence[DenseLayerLike] = ctx.layers
        count = len(layers)
        buffer = saved[0]
        params = saved[1 : 1 + ctx.num_params]
        bottlenecks = saved[1 + ctx.num_params : 1 + ctx.num_params + count]
        masks = saved[1 + ctx.num_params + count :]
        # One gradient buffer for the whole block, accumulated in place.
        grad_buffer = grad_output.clone(memory_format=torch.contiguous_format)
        param_grads: list[Tensor | None] = [None] * len(params)
        channels = ctx.in_channels + sum(_growth(layer) for layer in layers)
        workspace = _Workspace(buffer)
        for index in reversed(range(count)):
            layer = layers[index]
            stats1, stats2, drop_scale = ctx.stats[index]
            record = _LayerRecord(stats1, stats2, bottlenecks[index], masks[index], drop_scale)
            growth = _growth(layer)
            channels -= growth
            w = params[index * _PARAMS_PER_LAYER : (index + 1) * _PARAMS_PER_LAYER]
            grads = _layer_backward(
                layer,
                record,
                w,
                buffer.narrow(1, 0, channels),
                grad_buffer.narrow(1, channels, growth),
                grad_buffer.narrow(1, 0, channels),
                workspace,
            )
            del record
            param_grads[index * _PARAMS_PER_LAYER : (index + 1) * _PARAMS_PER_LAYER] = grads
        grad_x = grad_buffer.narrow(1, 0, ctx.in_channels).clone()
        return (None, None, grad_x, *param_grads)


def _chunks(channels: int, width: int) -> list[tuple[int, int]]:
    """``(start, length)`` spans of at most ``width`` channels covering ``channels``."""
    return [(start, min(width, channels - start)) for start in range(0, channels, width)]


# Values per chunk of a layer's input in backward (32 MiB of float32). Smaller chunks save
# little memory and cost kernel-call time: densenet_bc_100 (batch 64, 32x32) measured
# 1.06x naive CPU time with 48-channel chunks and 0.94x with 128-channel ones, and
# densenet121 (batch 8, 224x224) paid 9% for 128-channel chunks of its small late maps.
_CHUNK_ELEMENTS = 8 * 2**20


def _chunk_width(layer: DenseLayerLike, features: Tensor) -> int:
    # At least one bottleneck's width, so backward's transients stay about what one layer
    # keeps anyway: memory stays linear in depth.
    per_channel = features.numel() // max(features.shape[1], 1)
    return max(int(layer.conv1.out_channels), _CHUNK_ELEMENTS // max(per_channel, 1))


class _Workspace:
    """Reusable scratch tensors for the per-chunk temporaries of one block pass.

    Every layer needs the same few chunk-sized temporaries; reusing one allocation per
    slot avoids allocator churn (with glibc's mmap threshold fixed low, each fresh large
    tensor costs page faults).
    """

    def __init__(self, like: Tensor) -> None:
        self._like = like
        self._slots: dict[str, Tensor] = {}

    def get(self, slot: str, shape: tuple[int, ...]) -> Tensor:
        numel = 1
        for size in shape:
            numel *= size
        flat = self._slots.get(slot)
        if flat is None or flat.numel() < numel:
            flat = self._like.new_empty(numel)
            self._slots[slot] = flat
        return flat[:numel].view(shape)


def _narrow(t: Tensor | None, dim: int, start: int, length: int) -> Tensor | None:
    return None if t is None else t.narrow(dim, start, length)


def _bottleneck(
    layer: DenseLayerLike,
    w: Sequence[Tensor | None],
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
            _narrow(w[0], 0, start, length),
            _narrow(w[1], 0, start, length),
            stats1.narrow(start, length),
            out=workspace.get("y1", tuple(chunk.shape)),
        )
        part = conv_forward(
            layer.conv1,
            y1,
            w[2].narrow(1, start, length),  # type: ignore[union-attr]
            w[3] if out is None else None,
        )
        out = part if out is None else out.add_(part)
    assert out is not None
    return out


def _forward(
    layers: Sequence[DenseLayerLike],
    x: Tensor,
    params: Sequence[Tensor | None],
    *,
    policy: BottleneckPolicy,
    record: bool,
) -> tuple[Tensor, list[_LayerRecord]]:
    in_channels = x.shape[1]
    total = in_channels + sum(_growth(layer) for layer in layers)
    buffer = x.new_empty((x.shape[0], total, *x.shape[2:]))  # (N, C0 + L*k, *spatial)
    buffer.narrow(1, 0, in_channels).copy_(x)
    workspace = _Workspace(buffer)
    # Per-channel batch moments of the buffer, filled as channels are written.
    need_moments = any(uses_batch_stats(layer.norm1) for layer in layers)
    moments_dtype = stats_dtype(x.dtype)  # float32 under autocast
    means = x.new_empty(total, dtype=moments_dtype) if need_moments else None
    variances = x.new_empty(total, dtype=moments_dtype) if need_moments else None
    if means is not None and variances is not None:
        m, v = batch_moments(x)
        means[:in_channels], variances[:in_channels] = m, v
    records: list[_LayerRecord] = []
    channels = in_channels
    for index, layer in enumerate(layers):
        w = params[index * _PARAMS_PER_LAYER : (index + 1) * _PARAMS_PER_LAYER]
        features = buffer.narrow(1, 0, channels)  # the concatenation: a view
        moments = (
            (means[:channels], variances[:channels])
            if means is not None and variances is not None
            else None
        )
        stats1 = norm_stats(layer.norm1, features, moments=moments)
        bottleneck = _bottleneck(layer, w, features, stats1, workspace)
        y2, stats2 = norm_act_forward(layer.norm2, bottleneck, w[4], w[5])
        new = conv_forward(layer.conv2, y2, w[6], w[7])  # (N, k, *spatial)
        del y2
        growth = new.shape[1]
        mask, scale = None, 1.0
        if layer.drop_rate > 0 and layer.training:
            keep = 1.0 - layer.drop_rate
            # Same draw as F.dropout on CPU: bernoulli_(1 - p) on a tensor shaped like ``new``.
            noise = torch.empty_like(new).bernoulli_(keep)
            scale = 1.0 / keep if keep > 0 else 0.0
            new.mul_(noise).mul_(scale)
            mask = noise.bool()
            del noise
        buffer.narrow(1, channels, growth).copy_(new)
        if means is not None and variances is not None:
            m, v = batch_moments(new)
            means[channels : channels + growth], variances[channels : channels + growth] = m, v
        del new
        if record:
            records.append(
                _LayerRecord(
                    stats1,
                    stats2,
                    bottleneck if policy == "keep" else None,
                    mask,
                    scale,
                )
            )
        del bottleneck
        channels += growth
    return buffer, records


def _layer_backward(
    layer: DenseLayerLike,
    record: _LayerRecord,
    w: Sequence[Tensor | None],
    features: Tensor,
    grad_new: Tensor,
    grad_features: Tensor,
    workspace: _Workspace,
) -> list[Tensor | None]:
    """Backward of one layer; adds its input gradient into ``grad_features`` in place."""
    if record.dropout_mask is not None:
        grad_new = grad_new * record.dropout_mask * record.drop_scale
    bottleneck = record.bottleneck
    if bottleneck is None:  # policy "recompute"
        bottleneck = _bottleneck(layer, w, features, record.stats1, workspace)
    # Each recomputed activation is freed as soon as its ReLU mask has been applied.
    y2 = norm_act(bottleneck, w[4], w[5], record.stats2)
    grad_y2, grad_conv2_w, grad_conv2_b = conv_backward(
        layer.conv2,
        grad_new,
        y2,
        w[6],  # type: ignore[arg-type]
        has_bias=w[7] is not None,
    )
    relu_backward_(grad_y2, y2)  # type: ignore[arg-type]
    del y2
    grad_bottleneck, grad_norm2_w, grad_norm2_b = norm_act_backward(
        grad_y2, bottleneck, w[4], record.stats2
    )
    del grad_y2, bottleneck
    assert grad_bottleneck is not None
    # conv1 and norm1 act per input channel: their backward runs a chunk of channels at a
    # time, so the recomputed input and its gradients never exist at the layer's full width.
    grad_conv1_w = torch.empty_like(w[2])  # type: ignore[arg-type]
    grad_norm1_w = None if w[0] is None else torch.empty_like(w[0])
    grad_norm1_b = None if w[1] is None else torch.empty_like(w[1])
    grad_conv1_b: Tensor | None = None
    for start, length in _chunks(features.shape[1], _chunk_width(layer, features)):
        # A contiguous copy of the chunk: the native batch-norm backward and the
        # recomputation run about twice as fast on it as on a strided view of the buffer.
        view = features.narrow(1, start, length)
        chunk = workspace.get("chunk", tuple(view.shape)).copy_(view)
        stats = record.stats1.narrow(start, length)
        norm_w = _narrow(w[0], 0, start, length)
        y1 = norm_act(
            chunk,
            norm_w,
            _narrow(w[1], 0, start, length),
            stats,
            out=workspace.get("y1", tuple(view.shape)),
        )
        grad_y1, conv_w, conv_b = conv_backward(
            layer.conv1,
            grad_bottleneck,
            y1,
            w[2].narrow(1, start, length),  # type: ignore[union-attr]
            has_bias=w[3] is not None and start == 0,
        )
        grad_conv1_w.narrow(1, start, length).copy_(conv_w)  # type: ignore[arg-type]
        if start == 0:
            grad_conv1_b = conv_b
        relu_backward_(grad_y1, y1)  # type: ignore[arg-type]
        del y1
        grad_x, norm_gw, norm_gb = norm_act_backward(grad_y1, chunk, norm_w, stats)
        del grad_y1
        grad_features.narrow(1, start, length).add_(grad_x)  # type: ignore[arg-type]
        del grad_x
        if grad_norm1_w is not None:
            grad_norm1_w.narrow(0, start, length).copy_(norm_gw)  # type: ignore[arg-type]
        if grad_norm1_b is not None:
            grad_norm1_b.narrow(0, start, length).copy_(norm_gb)  # type: ignore[arg-type]
    return [
        grad_norm1_w,
        grad_norm1_b,
        grad_conv1_w,
        grad_conv1_b,
        grad_norm2_w,
        grad_norm2_b,
        grad_conv2_w,
        grad_conv2_b,
    ]


def dense_block(
    x: Tensor,
    layers: Sequence[DenseLayerLike],
    *,
    policy: BottleneckPolicy = "keep",
) -> Tensor:
    """Run a dense block on a shared buffer; returns the buffer ``(N, C0 + L*k, *spatial)``.

    Args:
        x: Block input ``(N, C0, *spatial)``.
        layers: The block's layers, each BN -> ReLU -> conv1 -> BN -> ReLU -> conv2 ->
            dropout, with ``layers[l].conv1.in_channels == C0 + l * k``.
        policy: ``"keep"`` stores each layer's bottleneck output (fast; memory linear in
            depth with slope ``bn_size * k``); ``"recompute"`` recomputes the 1x1
            convolution in backward (one more 1x1 convolution per layer, least memory).

    Gradients are exact (same as the naive network up to floating-point rounding); double
    backward is not supported. Under ``torch.autocast`` the buffer, the bottleneck outputs
    and the convolutions are in the autocast dtype, statistics in float32
    (:mod:`concatnets.engine.precision`).
    """
    if policy not in ("keep", "recompute"):
        raise ValueError(f"policy must be 'keep' or 'recompute', got {policy!r}")
    _check_layers(layers, x.shape[1])
    return in_engine_precision(x.device, lambda cast: _dense_block(cast(x), layers, policy))


def _dense_block(x: Tensor, layers: Sequence[DenseLayerLike], policy: BottleneckPolicy) -> Tensor:
    params = [p for layer in layers for p in _layer_params(layer)]
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or any(p is not None and p.requires_grad for p in params)
    )
    if not needs_grad:
        with torch.no_grad():
            buffer, _ = _forward(layers, x, params, policy=policy, record=False)
        return buffer
    return _DenseBlockFunction.apply(layers, policy, x, *params)
