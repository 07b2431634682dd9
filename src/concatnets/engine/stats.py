"""Batch-norm statistics computed once and reused: the engine's recompute-from-stats core.

Batch norm in training mode normalises with the batch's per-channel mean and biased
variance and updates its running statistics with the unbiased variance. Recomputing it in
backward with ``F.batch_norm(training=True)`` would update the running statistics a second
time (pytorch/pytorch#96136). Here the forward computes the statistics once, updates the
running statistics once, and keeps only ``mean`` and ``invstd`` (a few numbers per channel)
so that backward can rebuild the normalised activation elementwise and call the same native
backward kernel that plain autograd uses (Pleiss et al. 2017, arXiv 1707.06990, sec. 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from concatnets.engine.layout import layout_of
from concatnets.engine.precision import REDUCED_DTYPES, is_reduced, stats_dtype

__all__ = [
    "NormStats",
    "batch_moments",
    "norm_act",
    "norm_act_backward",
    "norm_act_forward",
    "norm_stats",
    "relu_",
    "relu_backward_",
    "scale_shift_act",
    "update_running_stats",
    "uses_batch_stats",
]


@dataclass(frozen=True)
class NormStats:
    """Per-channel statistics of one batch-norm application.

    Attributes:
        mean: Mean used to normalise (batch mean in training, running mean in eval).
        var: Variance used to normalise (biased batch variance, or running variance).
        invstd: ``1 / sqrt(var + eps)``.
        batch: True when ``mean``/``var`` are statistics of this batch (gradients then flow
            through them), False when they are constants (running statistics).
        eps: The module's epsilon.
    """

    mean: Tensor
    var: Tensor
    invstd: Tensor
    batch: bool
    eps: float

    def narrow(self, start: int, length: int) -> NormStats:
        """Statistics of channels ``start:start + length``."""
        return NormStats(
            self.mean.narrow(0, start, length),
            self.var.narrow(0, start, length),
            self.invstd.narrow(0, start, length),
            self.batch,
            self.eps,
        )


def _reduce_dims(x: Tensor) -> list[int]:
    return [0, *range(2, x.dim())]


def batch_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of ``(N, C, *spatial)`` ``x``.

    Uses the native batch-norm statistics kernel (with eps 0, so ``var = invstd ** -2``),
    several times faster on CPU than ``torch.var_mean`` over dims ``(0, 2, ...)``. For a
    float16/bfloat16 ``x`` the statistics are float32: a float32 unit scale selects the
    kernel's mixed-precision path, the one autocast's batch norm takes.
    """
    weight = None
    if is_reduced(x.dtype):
        weight = torch.ones(x.shape[1], dtype=stats_dtype(x.dtype), device=x.device)
    _, mean, invstd = torch.native_batch_norm(x, weight, None, None, None, True, 0.0, 0.0)
    return mean, invstd.pow(-2)


def uses_batch_stats(bn: nn.modules.batchnorm._BatchNorm) -> bool:
    """Whether ``bn`` normalises with batch statistics in its current mode."""
    return bn.training or not bn.track_running_stats


@torch.no_grad()
def update_running_stats(
    bn: nn.modules.batchnorm._BatchNorm, mean: Tensor, var: Tensor, count: int
) -> None:
    """Update ``bn``'s running statistics exactly as one training-mode forward would.

    Args:
        bn: The batch-norm module.
        mean: Batch mean per channel.
        var: Biased batch variance per channel.
        count: Number of values reduced per channel (``N * prod(spatial)``).
    """
    if not (bn.training and bn.track_running_stats):
        return
    assert bn.running_mean is not None and bn.running_var is not None
    if bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
    # momentum None means a cumulative moving average, as nn.BatchNorm does.
    factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum  # type: ignore[arg-type]
    unbiased = var * (count / max(count - 1, 1))
    bn.running_mean.mul_(1 - factor).add_(mean.to(bn.running_mean.dtype), alpha=factor)
    bn.running_var.mul_(1 - factor).add_(unbiased.to(bn.running_var.dtype), alpha=factor)


@torch.no_grad()
def norm_stats(
    bn: nn.modules.batchnorm._BatchNorm,
    x: Tensor,
    *,
    moments: tuple[Tensor, Tensor] | None = None,
) -> NormStats:
    """Statistics ``bn`` normalises ``x`` with, updating running statistics once.

    Args:
        bn: The batch-norm module whose mode (train/eval) decides the statistics.
        x: The input ``(N, C, *spatial)``.
        moments: Precomputed ``(mean, biased var)`` of ``x`` (the dense block computes
            them once per feature map and reuses them in every later layer).
    """
    if uses_batch_stats(bn):
        mean, var = moments if moments is not None else batch_moments(x)
        update_running_stats(bn, mean, var, x.numel() // x.shape[1])
        batch = True
    else:
        assert bn.running_mean is not None and bn.running_var is not None
        mean, var = bn.running_mean, bn.running_var
        batch = False
    invstd = torch.rsqrt(var + bn.eps)
    return NormStats(mean, var, invstd, batch, bn.eps)


def norm_act(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    stats: NormStats,
    *,
    activation: bool = True,
    out: Tensor | None = None,
) -> Tensor:
    """``relu(batch_norm(x))`` with fixed statistics, into ``out`` or a new contiguous tensor.

    One fused multiply-add per element (``x * scale + shift``), which also reads a strided
    view of a shared buffer efficiently.
    """
    scale = stats.invstd if weight is None else stats.invstd * weight
    shift = -stats.mean * scale if bias is None else bias - stats.mean * scale
    view = (-1,) + (1,) * (x.dim() - 2)
    return scale_shift_act(x, scale.view(view), shift.view(view), activation=activation, out=out)


def scale_shift_act(
    x: Tensor, scale: Tensor, shift: Tensor, *, activation: bool, out: Tensor | None
) -> Tensor:
    """``relu(x * scale + shift)`` into ``out`` or a new tensor in ``x``'s layout.

    ``scale`` and ``shift`` broadcast against ``x`` (per channel, or per sample and
    channel). When they are in the statistics dtype of ``x`` (float32 for a float32,
    float16 or bfloat16 ``x``) :func:`_scale_shift_native` computes it one cache-sized
    block at a time, the ReLU on each block while it is still in cache; otherwise one
    ``addcmul`` and one ReLU pass.
    """
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=layout_of(x))
    if scale.dtype == stats_dtype(x.dtype) and x.dim() >= 2:
        _scale_shift_native(x, scale, shift, out, activation=activation)
        return out
    torch.addcmul(shift, x, scale, out=out)
    return relu_(out) if activation else out


# Elements per block of :func:`_scale_shift_native`. Measured on CPU (1 thread, Intel Xeon
# with AVX-512, torch 2.13), normalisation plus ReLU of a channel slice of a dense block's
# buffer, ``(64, 192, 32, 32)`` of ``(64, 216, 32, 32)``: float32 21 ms in one call, 10 ms
# sample by sample; bfloat16 20 ms against 8 ms. A contiguous bfloat16 tensor gains from
# blocks too (10 ms against 8 ms), a contiguous float32 one does not (8.7 ms against 9.7).
_BLOCK_ELEMENTS = 2**18


def _dense_format(t: Tensor) -> torch.memory_format | None:
    """The memory format ``t`` is contiguous in, or None for a strided view."""
    if t.is_contiguous():
        return torch.contiguous_format
    layout = layout_of(t)
    return layout if t.is_contiguous(memory_format=layout) else None


def _samples_per_block(x: Tensor, out: Tensor, per_sample: bool) -> tuple[int, bool]:
    """How many samples of ``x`` go into one block, and whether blocks are contiguous.

    Contiguous blocks take the native kernel's fast path and stay in cache between the
    normalisation and the ReLU. A strided ``x`` or ``out`` whose samples are contiguous
    (a channel slice of a buffer in the default layout) goes sample by sample.
    """
    samples = x.shape[0]
    if x.device.type != "cpu" or samples == 0:  # cache blocking is a CPU matter
        return (1 if per_sample else max(samples, 1)), False
    layout = _dense_format(x)
    if layout is not None and _dense_format(out) == layout:
        if per_sample:
            return 1, True
        if not is_reduced(x.dtype):
            return samples, True
        return max(1, _BLOCK_ELEMENTS // max(x[0].numel(), 1)), True
    layout = _dense_format(x[:1])
    dense_samples = layout is not None and _dense_format(out[:1]) == layout
    if dense_samples:  # also when small: the same arithmetic as on a contiguous copy
        return 1, True
    return (1 if per_sample else samples), False


def _blocks(x: Tensor, out: Tensor, per_sample: bool) -> list[tuple[slice, slice]]:
    """``(samples, channels)`` slices cutting ``x`` and ``out`` into blocks.

    Runs of whole samples (:func:`_samples_per_block`); in the default layout a single
    sample larger than a block is cut further into runs of channels, which are
    contiguous too.
    """
    samples, channels = x.shape[0], x.shape[1]
    run, dense = _samples_per_block(x, out, per_sample)
    width = channels
    if dense and run == 1 and _dense_format(x[:1]) == torch.contiguous_format:
        per_channel = x[0, 0].numel() if channels else 1
        width = max(1, min(channels, _BLOCK_ELEMENTS // max(per_channel, 1)))
    return [
        (slice(n, min(n + run, samples)), slice(c, min(c + width, channels)))
        for n in range(0, samples, run)
        for c in range(0, channels, width)
    ]


def _scale_shift_native(
    x: Tensor, scale: Tensor, shift: Tensor, out: Tensor, *, activation: bool
) -> None:
    """``out = relu(x * scale + shift)`` by the native batch-norm kernel, rounded once.

    The kernel in inference mode with zero mean, unit variance and ``eps = 0`` computes
    exactly ``x * weight + bias`` with ``weight`` and ``bias`` in the statistics dtype,
    several times faster on CPU than ``addcmul`` plus ReLU (1 thread, float32
    ``(64, 192, 32, 32)``: 9 ms against 18 ms). For a float16/bfloat16 ``x`` it computes
    in float32 and rounds once, as autocast's batch norm does; rounding ``scale`` and
    ``shift`` to bfloat16 for an ``addcmul`` instead would cost an absolute error of
    ``|shift| * 2**-8`` (``shift`` is about ``mean * scale``), which flips ReLU signs near
    zero that autocast's batch norm gets right. Per-sample parameters (group norm) run
    one sample at a time.
    """
    channels = x.shape[1]
    scale, shift = torch.broadcast_tensors(scale, shift)
    scale, shift = scale.reshape(-1, channels), shift.reshape(-1, channels)
    per_sample = scale.shape[0] > 1
    zeros, ones = scale.new_zeros(channels), scale.new_ones(channels)
    unused = scale.new_empty(0)
    for samples, part in _blocks(x, out, per_sample):
        row = samples.start if per_sample else 0
        block = out[samples, part]
        torch.ops.aten.native_batch_norm.out(
            x[samples, part],
            scale[row, part].contiguous(),
            shift[row, part].contiguous(),
            zeros[part],
            ones[part],
            False,
            0.0,
            0.0,
            out=block,
            save_mean=unused,
            save_invstd=unused,
        )
        if activation:
            relu_(block)


@torch.no_grad()
def norm_act_forward(
    bn: nn.modules.batchnorm._BatchNorm,
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
) -> tuple[Tensor, NormStats]:
    """``relu(bn(x))`` as ``bn`` computes it in its current mode, and the statistics used.

    In training mode one fused native kernel computes the batch statistics, normalises and
    updates the running statistics (once), as the naive network's forward does.
    """
    if not uses_batch_stats(bn):
        stats = norm_stats(bn, x)
        return norm_act(x, weight, bias, stats), stats
    momentum = 0.0
    running_mean, running_var = None, None
    if bn.training and bn.track_running_stats:
        running_mean, running_var = bn.running_mean, bn.running_var
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
        momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum  # type: ignore[arg-type]
    y, mean, invstd = torch.native_batch_norm(
        x, weight, bias, running_mean, running_var, True, momentum, bn.eps
    )
    var = (invstd.pow(-2) - bn.eps).clamp_(min=0)
    return relu_(y), NormStats(mean, var, invstd, True, bn.eps)


# The bit pattern of -inf read as int16: a float16/bfloat16 is negative and not NaN exactly
# when its int16 reading is at most this (sign bit set, exponent and mantissa at most inf's).
_NEGATIVE_INFINITY_BITS = {
    dtype: int(torch.tensor(float("-inf"), dtype=dtype).view(torch.int16))
    for dtype in REDUCED_DTYPES
}


def _on_bits(t: Tensor) -> bool:
    """Whether ReLU and its backward run on ``t``'s bit pattern (float16/bfloat16 on CPU).

    On CPU the float16/bfloat16 elementwise kernels convert every element to float32 and
    back; the same comparison on the int16 reading is 4-5x faster (1 thread,
    ``(64, 192, 32, 32)`` bfloat16: ``relu_`` 12.9 ms, on the bits 2.6 ms).
    """
    return is_reduced(t.dtype) and t.device.type == "cpu"


def relu_(t: Tensor) -> Tensor:
    """ReLU of ``t`` in place.

    A float16/bfloat16 ``t`` on CPU is rectified on its int16 reading: every value whose
    reading is at most that of ``-inf`` (the negative numbers, ``-inf`` and ``-0.0``) is
    set to ``+0.0``; NaNs stay NaN, as ``torch.relu`` keeps them.
    """
    if not _on_bits(t):
        return t.relu_()
    torch.nn.functional.threshold_(t.view(torch.int16), _NEGATIVE_INFINITY_BITS[t.dtype], 0)
    return t


def relu_backward_(grad_y: Tensor, y: Tensor) -> Tensor:
    """Zero ``grad_y`` in place where the ReLU output ``y`` is not positive.

    For float16/bfloat16 on CPU the test runs on the int16 readings (see :func:`relu_`):
    ``y`` is positive when its reading is, and ``grad_y`` is kept bit for bit. The one
    difference from ``torch.relu``'s backward: a gradient at a NaN with the sign bit clear
    is kept rather than zeroed; a step with a NaN activation has non-finite gradients
    either way (the NaN reaches the next convolution's weight gradient).
    """
    if _on_bits(grad_y) and y.dtype == grad_y.dtype:
        bits = grad_y.view(torch.int16)
        torch.ops.aten.threshold_backward.grad_input(bits, y.view(torch.int16), 0, grad_input=bits)
        return grad_y
    return torch.ops.aten.threshold_backward.grad_input(grad_y, y, 0, grad_input=grad_y)


def norm_act_backward(
    grad_y: Tensor,
    x: Tensor,
    weight: Tensor | None,
    stats: NormStats,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Gradients of ``batch_norm(x)`` for input, weight and bias.

    Args:
        grad_y: Gradient of the normalised output (apply :func:`relu_backward_` first
            when a ReLU followed).
        x: The normalisation's input.
        weight: The batch-norm scale (None when not affine).
        stats: The statistics the forward used.
    """
    mask = [True, weight is not None, weight is not None]
    grad_x, grad_w, grad_b = torch.ops.aten.native_batch_norm_backward(
        grad_y,
        x,
        weight,
        None if stats.batch else stats.mean,
        None if stats.batch else stats.var,
        stats.mean if stats.batch else None,
        stats.invstd if stats.batch else None,
        stats.batch,
        stats.eps,
        mask,
    )
    return grad_x, (grad_w if mask[1] else None), (grad_b if mask[2] else None)
