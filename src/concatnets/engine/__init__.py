"""The memory engine: shared feature buffers and recompute-from-statistics autograd.

Knows nothing of models. DenseNet and FC-DenseNet use :func:`run_dense_block` (layers
described by :class:`DenseLayerSpec`, the block input given as parts, the output's
:class:`ChannelMoments` handed to the next normalisation) and :func:`norm_act_conv`;
U-Net and UNet++ are written once in :mod:`~concatnets.engine.vocabulary`, whose
operations run plain torch on tensors and build :func:`norm_act_conv` parts on the
engine (skips written into the decoder's concatenation, pooling and up-convolution
recomputed in backward). Its memory layout is
chosen per machine; :func:`set_layout` and :func:`use_layout` override it and
:func:`layout_decisions` shows what was chosen. Its 1x1 convolutions run as matrix
products into its own workspace or as ATen convolutions, chosen per machine by timing
(:func:`set_pointwise_kernel` overrides, :func:`pointwise_decisions` shows). With
``CONCATNETS_MALLOC=pool`` large CPU buffers come from a reused pool
(:mod:`~concatnets.engine.buffer_pool`); :func:`release_buffers` gives its free blocks
back to the OS; with
``CONCATNETS_MALLOC=trim`` the engine gives glibc's piled-up free heap pages back at its
block boundaries (:mod:`~concatnets.engine.heap_release`, :func:`heap_release_stats`).
"""

from __future__ import annotations

from concatnets.engine import vocabulary
from concatnets.engine.block_buffer import (
    BottleneckPolicy,
    DenseBlockOutput,
    dense_block,
    run_dense_block,
)
from concatnets.engine.buffer_pool import release_buffers
from concatnets.engine.dense_layer import ChannelMoments, DenseLayerLike, DenseLayerSpec
from concatnets.engine.dropout import dropout
from concatnets.engine.heap_release import heap_release_stats
from concatnets.engine.layout_choice import layout_decisions, set_layout, use_layout
from concatnets.engine.parts_conv import NormActPart, norm_act_conv
from concatnets.engine.pointwise_choice import pointwise_decisions, set_pointwise_kernel
from concatnets.engine.stats import NormStats, norm_stats

__all__ = [
    "BottleneckPolicy",
    "ChannelMoments",
    "DenseBlockOutput",
    "DenseLayerLike",
    "DenseLayerSpec",
    "NormActPart",
    "NormStats",
    "dense_block",
    "dropout",
    "heap_release_stats",
    "layout_decisions",
    "norm_act_conv",
    "norm_stats",
    "pointwise_decisions",
    "release_buffers",
    "run_dense_block",
    "set_layout",
    "set_pointwise_kernel",
    "use_layout",
    "vocabulary",
]
