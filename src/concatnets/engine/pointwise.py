"""1x1 convolutions as matrix products written into tensors the engine owns.

A 1x1 convolution (stride 1, no padding, one group) is a matrix product over channels:
``y[n] = W @ x[n]`` with ``x[n]`` the ``(C, pixels)`` matrix of sample ``n``. ATen's
convolution kernels allocate every result themselves, so in a dense block's backward the
input gradient of each bottleneck convolution (the width of the layer's whole input) is a
fresh allocation per layer and chunk: a new ``mmap`` page-faulted in at 32 MiB and above,
a heap block left behind between smaller live ones below it. A matrix product takes
``out=``, so the engine writes the result into its reused workspace, and accumulates the
chunks of a forward into one tensor (``baddbmm_``/``addmm_``) with no partial sums.

Both memory layouts are served without a copy: the default one as ``(N, C, pixels)``
batches, channels-last as one ``(N * pixels, C)`` matrix. Whether the matrix product or
the convolution kernel runs is chosen per machine by measurement
(:mod:`concatnets.engine.pointwise_choice`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn.modules.conv import _ConvNd

from concatnets.engine.conv import as_dtype, compute_dtype
from concatnets.engine.layout import channels_last_format
from concatnets.engine.precision import stats_dtype

__all__ = [
    "as_matrices",
    "is_pointwise",
    "pointwise_backward",
    "pointwise_forward",
    "pointwise_output",
]


def is_pointwise(conv: _ConvNd) -> bool:
    """Whether ``conv`` is a plain 1x1 convolution: kernel 1, stride 1, no padding, one
    group, not transposed (its dilation does not matter)."""
    padding = conv.padding
    no_padding = padding == "valid" or (
        not isinstance(padding, str) and all(p == 0 for p in padding)
    )
    return (
        not conv.transposed
        and conv.groups == 1
        and no_padding
        and all(k == 1 for k in conv.kernel_size)
        and all(s == 1 for s in conv.stride)
    )


def _spatial_contiguous(t: Tensor) -> bool:
    """Whether ``t``'s spatial dimensions are one dense run (row-major, innermost 1)."""
    step = 1
    for dim in range(t.dim() - 1, 1, -1):
        if t.shape[dim] != 1 and t.stride(dim) != step:
            return False
        step *= t.shape[dim]
    return True


def _pixels_mergeable(t: Tensor) -> bool:
    """Whether ``t``'s batch and spatial dimensions are one dense run of pixels of
    ``t.stride(1) == 1`` channels (channels-last, possibly a channel slice)."""
    if t.shape[1] > 1 and t.stride(1) != 1:
        return False
    step = t.stride(-1) if t.dim() > 2 else t.stride(0)
    for dim in (*range(t.dim() - 1, 1, -1), 0):
        if t.shape[dim] != 1 and t.stride(dim) != step:
            return False
        step *= t.shape[dim]
    return True


def as_matrices(t: Tensor) -> Tensor | None:
    """``t`` ``(N, C, *spatial)`` as matrices without a copy, or None when its strides
    allow neither form: ``(N, C, pixels)`` for the default layout (also a channel slice of
    a wider tensor) and ``(N * pixels, C)`` for channels-last (2-D and 3-D maps only, the
    ranks with a channels-last memory format)."""
    if t.dim() < 3:
        return None
    batch, channels = t.shape[0], t.shape[1]
    pixels = math.prod(t.shape[2:])
    if _spatial_contiguous(t):
        return t.as_strided((batch, channels, pixels), (t.stride(0), t.stride(1), 1))
    if t.dim() in (4, 5) and _pixels_mergeable(t) and pixels > 1:  # a channels-last format
        pixel_stride = t.stride(-1)
        return t.as_strided((batch * pixels, channels), (pixel_stride, 1))
    return None


def _weight_matrix(weight: Tensor, dtype: torch.dtype) -> Tensor:
    """A 1x1 kernel ``(C_out, C_in, 1, ...)`` as a ``(C_out, C_in)`` matrix in ``dtype``."""
    return as_dtype(weight.reshape(weight.shape[0], weight.shape[1]), dtype)


def _memory_format(x: Tensor) -> torch.memory_format:
    """The dense layout of ``x``'s matrix form: default, or channels-last."""
    return torch.contiguous_format if _spatial_contiguous(x) else channels_last_format(x.dim())


def pointwise_output(x: Tensor, out_channels: int, dtype: torch.dtype) -> Tensor:
    """An uninitialised ``(N, out_channels, *spatial)`` tensor in ``x``'s matrix form."""
    shape = (x.shape[0], out_channels, *x.shape[2:])
    return torch.empty(shape, dtype=dtype, device=x.device, memory_format=_memory_format(x))


def pointwise_forward(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    *,
    out: Tensor | None = None,
    accumulate: bool = False,
) -> Tensor:
    """``conv1x1(x, weight, bias)`` written into ``out`` (added to it with ``accumulate``).

    ``x`` and ``out`` must both have a matrix form (:func:`as_matrices`) of the same kind;
    without ``out`` one is allocated in ``x``'s form.
    """
    dtype = compute_dtype(x, weight)
    w = _weight_matrix(weight, dtype)
    bias = None if bias is None else as_dtype(bias, dtype)
    if out is None:
        out = pointwise_output(x, w.shape[0], dtype)
        accumulate = False
    xm, om = as_matrices(x), as_matrices(out)
    if xm is None or om is None or xm.dim() != om.dim():
        raise ValueError("pointwise_forward needs x and out in the same matrix form")
    if xm.dim() == 3:  # (N, C, pixels): W @ x[n]
        if accumulate:
            om.baddbmm_(w.expand(xm.shape[0], -1, -1), xm)
        else:
            torch.matmul(w, xm, out=om)
        if bias is not None:
            om.add_(bias.view(1, -1, 1))
    else:  # (pixels, C): x @ W^T
        if bias is not None and not accumulate:
            torch.addmm(bias, xm, w.t(), out=om)
        elif accumulate:
            om.addmm_(xm, w.t())
            if bias is not None:
                om.add_(bias)
        else:
            torch.mm(xm, w.t(), out=om)
    return out


#: Elements of the per-sample weight gradients ``(samples, C_out, C_in)`` summed at a time
#: in the default layout (4 MiB of float32): the whole batch of a DenseNet bottleneck at the
#: batches benchmarked here, a bounded transient at any batch size.
_WEIGHT_GRAD_ELEMENTS = 2**20


def _batched_weight_grad(grad: Tensor, x: Tensor, sum_dtype: torch.dtype) -> Tensor:
    """``sum_n grad[n] @ x[n]^T`` for ``(N, C_out, pixels)`` and ``(N, C_in, pixels)``
    batches, a group of samples at a time (see :data:`_WEIGHT_GRAD_ELEMENTS`)."""
    batch, out_channels, in_channels = grad.shape[0], grad.shape[1], x.shape[1]
    step = max(1, _WEIGHT_GRAD_ELEMENTS // max(out_channels * in_channels, 1))
    total: Tensor | None = None
    for start in range(0, batch, step):
        group = torch.matmul(grad[start : start + step], x[start : start + step].transpose(1, 2))
        part = group.sum(0, dtype=sum_dtype)
        total = part if total is None else total.add_(part)
    assert total is not None
    return total


def pointwise_backward(
    grad_out: Tensor,
    x: Tensor,
    weight: Tensor,
    *,
    has_bias: bool,
    grad_input: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Input, weight and bias gradients of :func:`pointwise_forward`.

    The input gradient is written into ``grad_input`` when given (a tensor shaped like
    ``x`` with ``x``'s matrix form), else allocated. Weight and bias gradients are summed
    over the batch in float32 under float16/bfloat16 and returned in ``weight``'s dtype.
    """
    dtype = compute_dtype(x, weight)
    w = _weight_matrix(weight, dtype)
    grad_out = as_dtype(grad_out, dtype)
    if grad_input is None:
        grad_input = pointwise_output(x, x.shape[1], dtype)
    if _spatial_contiguous(grad_out) != _spatial_contiguous(x):
        grad_out = grad_out.contiguous(memory_format=_memory_format(x))
    gm, xm, im = as_matrices(grad_out), as_matrices(x), as_matrices(grad_input)
    if gm is None or xm is None or im is None or not gm.dim() == xm.dim() == im.dim():
        raise ValueError("pointwise_backward needs grad_out, x and grad_input in one matrix form")
    sum_dtype = stats_dtype(dtype)
    if gm.dim() == 3:
        torch.matmul(w.t(), gm, out=im)
        grad_w = _batched_weight_grad(gm, xm, sum_dtype)
        grad_b = gm.sum((0, 2), dtype=sum_dtype) if has_bias else None
    else:
        torch.mm(gm, w, out=im)
        grad_w = torch.mm(gm.t(), xm)
        grad_b = gm.sum(0, dtype=sum_dtype) if has_bias else None
    grad_w = as_dtype(grad_w, weight.dtype).view(weight.shape)
    return grad_input, grad_w, (None if grad_b is None else as_dtype(grad_b, weight.dtype))
