"""Convolution forward and backward for any spatial rank, called outside autograd.

The engine's custom autograd functions run convolutions on tensors they manage
themselves (views of shared buffers, recomputed activations); these helpers call the same
ATen kernels plain autograd would (``convolution`` / ``convolution_backward``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

__all__ = ["conv_backward", "conv_forward", "is_supported_conv"]


def is_supported_conv(module: nn.Module) -> bool:
    """Whether ``module`` is a plain (transposed) convolution with zero padding."""
    return isinstance(module, _ConvNd) and module.padding_mode == "zeros"


def _padding(conv: _ConvNd) -> list[int]:
    if isinstance(conv.padding, str):
        raise ValueError(
            f"{type(conv).__name__} with padding={conv.padding!r} is not supported by the "
            "memory engine; give explicit integer padding"
        )
    return list(conv.padding)


def conv_forward(conv: _ConvNd, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Apply ``conv``'s geometry with the given ``weight``/``bias`` to ``x``."""
    return torch.convolution(
        x,
        weight,
        bias,
        list(conv.stride),
        _padding(conv),
        list(conv.dilation),
        conv.transposed,
        list(conv.output_padding),
        conv.groups,
    )


def conv_backward(
    conv: _ConvNd,
    grad_out: Tensor,
    x: Tensor,
    weight: Tensor,
    *,
    has_bias: bool,
    needs_input_grad: bool = True,
    needs_weight_grad: bool = True,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of ``conv_forward`` for input, weight and bias."""
    mask = [needs_input_grad, needs_weight_grad, has_bias and needs_weight_grad]
    grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
        grad_out,
        x,
        weight,
        [weight.shape[1] * conv.groups if conv.transposed else weight.shape[0]]
        if has_bias
        else None,
        list(conv.stride),
        _padding(conv),
        list(conv.dilation),
        conv.transposed,
        list(conv.output_padding),
        conv.groups,
        mask,
    )
    return (grad_x if mask[0] else None, grad_w if mask[1] else None, grad_b if mask[2] else None)
