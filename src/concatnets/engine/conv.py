"""Convolution forward and backward for any spatial rank, called outside autograd.

The engine's custom autograd functions run convolutions on tensors they manage
themselves (views of shared buffers, recomputed activations); these helpers call the same
ATen kernels plain autograd would (``convolution`` / ``convolution_backward``).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.modules.conv import _ConvNd

__all__ = ["conv_backward", "conv_forward"]


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


def conv_forward(conv: _ConvNd, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Apply ``conv``'s geometry with the given ``weight``/``bias`` to ``x``."""
    return torch.convolution(x, weight, bias, *_geometry(conv))


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
    ``has_bias`` is False.
    """
    out_channels = weight.shape[1] * conv.groups if conv.transposed else weight.shape[0]
    grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
        grad_out,
        x,
        weight,
        [out_channels] if has_bias else None,
        *_geometry(conv),
        [input_grad, True, has_bias],
    )
    return (grad_x if input_grad else None), grad_w, (grad_b if has_bias else None)
