"""A dense layer as the engine runs it: named modules, named weights, per-channel moments.

Two layer forms (both end in dropout, active in training only):

* DenseNet-BC (Huang et al. 2017): BN -> ReLU -> 1x1 conv (bottleneck) -> BN -> ReLU ->
  3x3 conv.
* FC-DenseNet (Jégou et al. 2017, arXiv 1611.09326, Table 1): BN -> ReLU -> 3x3 conv,
  no bottleneck.

:class:`DenseLayerSpec` names a layer's modules; :class:`LayerWeights` names the tensors
the block's autograd function receives for it, so nothing is indexed by position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

__all__ = [
    "ChannelMoments",
    "DenseLayerLike",
    "DenseLayerSpec",
    "LayerWeights",
    "dense_layer_spec",
]


class ChannelMoments(NamedTuple):
    """Batch mean and biased variance of every channel of a feature map ``(N, C, *spatial)``.

    What a training-mode batch norm of that map normalises with; pass it as
    ``norm_stats(bn, x, moments=...)`` so that the consumer does not compute it again.
    """

    mean: Tensor  # (C,)
    var: Tensor  # (C,)


class DenseLayerLike(Protocol):
    """A DenseNet-BC layer module as the engine reads it (torchvision's attribute names)."""

    norm1: _BatchNorm
    conv1: _ConvNd
    norm2: _BatchNorm
    conv2: _ConvNd
    drop_rate: float
    training: bool


@dataclass(frozen=True)
class DenseLayerSpec:
    """One dense layer: BN -> ReLU -> ``conv1`` [-> BN -> ReLU -> ``conv2``] -> dropout.

    Attributes:
        norm1: Batch norm of the layer's input (the concatenation of all earlier maps).
        conv1: The convolution reading it: the 1x1 bottleneck, or the layer's only
            convolution when ``norm2``/``conv2`` are None (FC-DenseNet's layer).
        norm2: Batch norm of the bottleneck output, or None without a bottleneck.
        conv2: The 3x3 convolution after the bottleneck, or None without one.
        drop_rate: Element-wise dropout probability on the new maps.
        training: Whether dropout is active (the layer module's mode).
    """

    norm1: _BatchNorm
    conv1: _ConvNd
    norm2: _BatchNorm | None = None
    conv2: _ConvNd | None = None
    drop_rate: float = 0.0
    training: bool = False

    def __post_init__(self) -> None:
        if (self.norm2 is None) != (self.conv2 is None):
            raise ValueError(
                "DenseLayerSpec needs norm2 and conv2 together (a bottleneck) or neither"
            )
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"DenseLayerSpec drop_rate must be in [0, 1), got {self.drop_rate}")

    @property
    def has_bottleneck(self) -> bool:
        """Whether ``conv1`` is a bottleneck followed by ``norm2`` and ``conv2``."""
        return self.conv2 is not None

    @property
    def output_conv(self) -> _ConvNd:
        """The convolution whose output is the layer's new maps."""
        return self.conv2 if self.conv2 is not None else self.conv1

    @property
    def growth(self) -> int:
        """Channels the layer adds (``k``)."""
        return int(self.output_conv.out_channels)

    @property
    def active_drop_rate(self) -> float:
        """The dropout probability applied now (0 outside training)."""
        return self.drop_rate if self.training else 0.0

    def weights(self) -> LayerWeights:
        """The layer's parameters, by name (None where the layer has no such tensor)."""
        return LayerWeights(
            *_weight_and_bias(self.norm1),
            *_weight_and_bias(self.conv1),
            *_weight_and_bias(self.norm2),
            *_weight_and_bias(self.conv2),
        )


def _weight_and_bias(module: nn.Module | None) -> tuple[Tensor | None, Tensor | None]:
    if module is None:
        return None, None
    return module.weight, module.bias  # type: ignore[return-value]


class LayerWeights(NamedTuple):
    """One layer's tensors as the block's autograd function receives them."""

    norm1_weight: Tensor | None
    norm1_bias: Tensor | None
    conv1_weight: Tensor
    conv1_bias: Tensor | None
    norm2_weight: Tensor | None
    norm2_bias: Tensor | None
    conv2_weight: Tensor | None
    conv2_bias: Tensor | None


WEIGHTS_PER_LAYER = len(LayerWeights._fields)


def dense_layer_spec(layer: DenseLayerLike | DenseLayerSpec) -> DenseLayerSpec:
    """``layer`` as a :class:`DenseLayerSpec` (a DenseNet-BC module is read by its names)."""
    if isinstance(layer, DenseLayerSpec):
        return layer
    return DenseLayerSpec(
        layer.norm1,
        layer.conv1,
        layer.norm2,
        layer.conv2,
        float(layer.drop_rate),
        bool(layer.training),
    )
