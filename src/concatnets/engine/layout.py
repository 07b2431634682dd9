"""Memory layout of the engine's activations: channels-last where it saves copies.

oneDNN (the CPU convolution backend) works in a channels-last layout; given the default
``(N, C, H, W)`` layout it reorders every convolution's input (and, in backward, its
output gradient) into a transient copy. Measured on a 2-core CPU with torch 2.13: a 3x3
convolution over ``(4, 128, 256, 256)`` peaks at 3x its output's size in forward with the
default layout and at 1x with channels-last, and its forward + backward takes 0.6-0.8x the
time at the high-resolution levels of a U-Net. The engine therefore runs U-Net's
convolutions in channels-last on CPU and allocates every tensor it creates in the layout
of the tensor it derives from.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["channels_last_format", "layout_of", "preferred_layout", "to_layout"]

_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def channels_last_format(ndim: int) -> torch.memory_format:
    """The channels-last memory format of ``ndim``-D tensors (4-D images, 5-D volumes)."""
    if ndim not in _CHANNELS_LAST:
        raise ValueError(
            f"channels-last needs a 2-D or 3-D model (4-D or 5-D input), got a {ndim}-D input"
        )
    return _CHANNELS_LAST[ndim]


def layout_of(x: Tensor) -> torch.memory_format:
    """``x``'s memory format, also for strided views (a crop of a channels-last tensor)."""
    if x.dim() in _CHANNELS_LAST and x.stride(1) == 1 and x.shape[1] > 1:
        return _CHANNELS_LAST[x.dim()]
    return torch.contiguous_format


def preferred_layout(x: Tensor) -> torch.memory_format:
    """The layout the engine computes in for an input like ``x``: channels-last on CPU."""
    if x.device.type == "cpu" and x.dim() in _CHANNELS_LAST:
        return _CHANNELS_LAST[x.dim()]
    return torch.contiguous_format


def to_layout(x: Tensor, layout: torch.memory_format) -> Tensor:
    """``x`` in ``layout`` (no copy when it already is)."""
    return x.contiguous(memory_format=layout)
