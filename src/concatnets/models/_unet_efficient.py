"""U-Net's memory-efficient forward on the shared engine (one mechanism with DenseNet).

Every convolution reads ``relu(norm(z))`` of the previous convolution's output ``z``
through :func:`concatnets.engine.norm_act_conv`, so only the convolution outputs (before
normalisation) and their statistics (per channel for batch norm, per sample for group and
instance norm) are kept for backward; normalisation and ReLU are recomputed from the
saved statistics, and running statistics are updated once. The decoder's first
convolution reads the concatenation ``[skip, up]`` as two parts written straight into one
transient buffer: the encoder's normalised skip map (centre-cropped for valid padding)
and the up-convolved map (recomputed in backward); no ``torch.cat`` copy is made or
stored. The next encoder level's first convolution reads ``max_pool(relu(norm(z)))`` as a
pooled part, and level 0's first convolution, which reads the few-channel image, is
recomputed in backward, so neither the pooled maps nor the network's largest map are
stored. Everything runs in the layout the engine chose for the machine
(:mod:`concatnets.engine.layout_choice`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from concatnets.engine import NormActPart, norm_act_conv
from concatnets.engine.group_stats import group_norm_forward, is_group_norm
from concatnets.engine.layout import to_layout
from concatnets.engine.layout_choice import preferred_layout
from concatnets.engine.parts_conv import source_conv_output
from concatnets.engine.precision import in_engine_precision
from concatnets.engine.stats import norm_act_forward
from concatnets.ops import crop_slices

if TYPE_CHECKING:
    from concatnets.models.unet import ConvBlock, UNet

__all__ = ["forward_memory_efficient"]


def _activated(norm: nn.Module, z: Tensor) -> NormActPart:
    """``relu(norm(z))`` as a part, computing its statistics (and running stats) once.

    The fused normalisation kernel that finds the statistics also gives the activation,
    which the part's first consumer uses in forward instead of normalising again.
    """
    if isinstance(norm, nn.modules.batchnorm._BatchNorm):
        value, stats = norm_act_forward(norm, z, norm.weight, norm.bias)
        return NormActPart(z, norm, stats, value=value)
    if is_group_norm(norm):  # group and instance norm: per-sample statistics
        value, group_stats = group_norm_forward(norm, z, norm.weight, norm.bias)
        return NormActPart(z, norm, group_stats, value=value)
    return NormActPart(z)  # nn.Identity: ReLU only


def _first_conv(block: ConvBlock, image: Tensor) -> NormActPart:
    """``relu(norm1(conv1(image)))`` keeping only the image: conv1 is recomputed in backward.

    The image has few channels, so recomputing the first convolution costs little time
    and saves storing its full-resolution output (the largest map of the network).
    """
    conv = block.conv1
    with torch.no_grad():
        z1 = source_conv_output(conv, image, conv.weight, conv.bias)  # as backward recomputes
    return replace(_activated(block.norm1, z1), tensor=image, source_conv=block.conv1)


def _conv_block(block: ConvBlock, inputs: Tensor | Sequence[NormActPart]) -> NormActPart:
    """``relu(norm2(conv2(relu(norm1(conv1(inputs))))))`` as a part (see module docstring)."""
    if isinstance(inputs, Tensor):
        first = _first_conv(block, inputs)
    else:
        first = _activated(block.norm1, norm_act_conv(inputs, block.conv1))
    z2 = norm_act_conv([first], block.conv2)
    return _activated(block.norm2, z2)


def _upsampled(up: nn.Module, below: NormActPart) -> NormActPart:
    """The decoder's upsampled part of the concatenation ``[skip, up]``."""
    if isinstance(up, nn.modules.conv._ConvTransposeNd):
        # The up-convolution's output is recomputed in backward rather than stored.
        return replace(below, then_conv=up)
    # UpsampleConv: linear interpolation and a 1x1 convolution commute (both are linear,
    # the interpolation weights sum to one), so convolve first at the coarse size.
    return NormActPart(up.upsample(norm_act_conv([below], up.conv)), activation=False)


def forward_memory_efficient(model: UNet, x: Tensor) -> Tensor:
    """Logits of ``model`` for ``x`` (already padded for same padding).

    Under autocast the whole path runs in the autocast dtype, statistics in float32
    (:mod:`concatnets.engine.precision`), in forward and backward alike.
    """
    return in_engine_precision(x.device, lambda cast: _forward(model, cast(x)))


def _forward(model: UNet, x: Tensor) -> Tensor:
    x = to_layout(x, preferred_layout(x))
    skips: list[NormActPart] = []
    inputs: Tensor | list[NormActPart] = x
    for block in model.encoder:
        level = _conv_block(block, inputs)  # relu(bn(z)) of (N, features * 2**l, *spatial_l)
        # The next level reads max_pool(level), recomputed in backward rather than stored.
        inputs = [replace(level, pool=2, value=None)]
        skips.append(replace(level, value=None))  # recomputed when the decoder needs it
    below = _conv_block(model.bottleneck, inputs)
    for up_block, skip in zip(model.decoder, reversed(skips), strict=True):
        up = _upsampled(up_block.up, below)  # (N, C, *2 * spatial)
        have = tuple(skip.tensor.shape[2:])
        want = tuple(2 * s for s in below.tensor.shape[2:])  # both upsamplings double
        if have != want:  # valid padding: the paper's centre crop of the skip map
            skip = replace(skip, crop=crop_slices(have, want))
        below = _conv_block(up_block.block, [skip, up])
    logits = norm_act_conv([below], model.head)  # (N, num_classes, *spatial_out)
    return logits.contiguous()
