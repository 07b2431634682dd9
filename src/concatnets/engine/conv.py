"""Convolution forward and backward for any spatial rank, called outside autograd.

The engine's custom autograd functions run convolutions on tensors they manage
themselves (views of shared buffers, recomputed activations); these helpers call the same
ATen kernels plain autograd would (``convolution`` / ``convolution_backward``).

A convolution runs in the dtype of its input: under autocast the engine's activations
are float16/bfloat16 and the float32 weights are cast to that dtype for the kernel, as
autocast casts them (the weight gradient is computed in that dtype too, then returned in
the weight's own dtype, as autocast's differentiable cast returns it).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.modules.conv import _ConvNd

from concatnets.engine.precision import is_reduced

__all__ = ["as_dtype", "compute_dtype", "conv_backward", "conv_forward"]


def _padding(conv: _ConvNd) -> list[int]:
    if isinstance(conv.padding, str):
        raise ValueError(
            f"{type(conv).__name__} with padding={conv.padding!r} is not supported by the "
            "memory engine; give explicit integer padding"
        )
    return list(conv.padding)


def _geometry(conv: _ConvNd) -> tuple[list[int], list[int], list[int], bool, list[int], int]:
    """``conv``'s stride, padding, dilation, transposed, output padding and groups."""
    return (
        list(conv.stride),
        _padding(conv),
        list(conv.dilation),
        conv.transposed,
        list(conv.output_padding),
        conv.groups,
    )


def compute_dtype(x: Tensor, weight: Tensor) -> torch.dtype:
    """The dtype a convolution of ``x`` runs in: ``x``'s when it is a reduced float."""
    return x.dtype if is_reduced(x.dtype) else weight.dtype


def as_dtype(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` in ``dtype`` (itself when it already is)."""
    return t if t.dtype == dtype else t.to(dtype)


def conv_forward(conv: _ConvNd, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Apply ``conv``'s geometry with ``weight``/``bias`` to ``x`` (in ``x``'s dtype when
    that is float16/bfloat16)."""
    dtype = compute_dtype(x, weight)
    bias = None if bias is None else as_dtype(bias, dtype)
    return torch.convolution(x, as_dtype(weight, dtype), bias, *_geometry(conv))


def conv_backward(
    conv: _ConvNd,
    grad_out: Tensor,
    x: Tensor,
    weight: Tensor,
    *,
    has_bias: bool,
    input_grad: bool = True,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of ``conv_forward`` for input, weight and bias.

    The input gradient is None when ``input_grad`` is False, the bias gradient when
    ``has_bias`` is False. They run in the dtype :func:`conv_forward` ran in; weight and
    bias gradients are returned in ``weight``'s dtype.
    """
    out_channels = weight.shape[1] * conv.groups if conv.transposed else weight.shape[0]
    dtype = compute_dtype(x, weight)
    grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
        as_dtype(grad_out, dtype),
        x,
        as_dtype(weight, dtype),
        [out_channels] if has_bias else None,
        *_geometry(conv),
        [input_grad, True, has_bias],
    )
    grad_b = as_dtype(grad_b, weight.dtype) if has_bias else None
    return (grad_x if input_grad else None), as_dtype(grad_w, weight.dtype), grad_b
