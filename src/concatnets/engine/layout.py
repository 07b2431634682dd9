"""Memory layouts of the engine's activations: formats and conversions.

oneDNN (the CPU convolution backend) works in a channels-last layout; given the default
``(N, C, H, W)`` layout it reorders every convolution's input (and, in backward, its
output gradient) into a transient copy. Measured on a 2-core Intel Xeon (AVX-512) with
torch 2.13, a 3x3 convolution over ``(4, 128, 256, 256)`` peaks at 3x its output's size in
forward with the default layout and at 1x with channels-last. Whether channels-last is
also faster depends on the CPU, so the engine's layout is chosen per machine
(:mod:`concatnets.engine.layout_choice`); every tensor the engine creates takes the
layout of the tensor it derives from (:func:`layout_of`).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["channels_last_format", "layout_of", "to_layout"]

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


def to_layout(x: Tensor, layout: torch.memory_format) -> Tensor:
    """``x`` in ``layout`` (no copy when it already is)."""
    return x.contiguous(memory_format=layout)
