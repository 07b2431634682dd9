"""The memory engine: shared feature buffers and recompute-from-statistics autograd.

Knows nothing of models. DenseNet uses :func:`dense_block` and :func:`norm_act_conv`;
U-Net and UNet++ are written once in :mod:`~concatnets.engine.vocabulary`, whose
operations run plain torch on tensors and build :func:`norm_act_conv` parts on the
engine (skips written into the decoder's concatenation, pooling and up-convolution
recomputed in backward). Its memory layout is
chosen per machine; :func:`set_layout` and :func:`use_layout` override it and
:func:`layout_decisions` shows what was chosen.
"""

from __future__ import annotations

from concatnets.engine import vocabulary
from concatnets.engine.block_buffer import BottleneckPolicy, DenseLayerLike, dense_block
from concatnets.engine.layout_choice import layout_decisions, set_layout, use_layout
from concatnets.engine.parts_conv import NormActPart, norm_act_conv
from concatnets.engine.stats import NormStats, norm_stats

__all__ = [
    "BottleneckPolicy",
    "DenseLayerLike",
    "NormActPart",
    "NormStats",
    "dense_block",
    "layout_decisions",
    "norm_act_conv",
    "norm_stats",
    "set_layout",
    "use_layout",
    "vocabulary",
]
