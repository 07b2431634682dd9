"""The DenseNet family (Huang et al., "Densely Connected Convolutional Networks", CVPR 2017).

Module names follow torchvision's DenseNet (``features.denseblock1.denselayer1.norm1``,
...), so its state dicts load with ``strict=True`` into every mode and back. Three modes
share one set of modules:

* ``memory_efficient=False``: the naive reference, one ``torch.cat`` of all earlier
  features per layer and plain autograd (as torchvision writes it).
* ``memory_efficient="checkpoint"``: torchvision's technique, ``torch.utils.checkpoint``
  around cat + BN + ReLU + 1x1 conv (for comparison; updates BN running statistics twice).
* ``memory_efficient=True``: concatnets' engine, one shared buffer per block and
  BN/ReLU recomputed from saved statistics (Pleiss et al. 2017, arXiv 1707.06990).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import Tensor, nn

from concatnets.engine import (
    BottleneckPolicy,
    ChannelMoments,
    DenseBlockOutput,
    NormActPart,
    norm_act_conv,
    norm_stats,
    run_dense_block,
)
from concatnets.models._memory_mode import MemoryMode, MemoryModeModel
from concatnets.models._registry import register_model

__all__ = ["DenseNet", "MemoryMode", "densenet_bc_config"]

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_AVG_POOL = {2: nn.AvgPool2d, 3: nn.AvgPool3d}
_MAX_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}


class _DenseLayer(nn.Module):
    """BN -> ReLU -> 1x1 conv -> BN -> ReLU -> 3x3 conv -> dropout (DenseNet-B)."""

    def __init__(
        self, in_channels: int, growth_rate: int, bn_size: int, drop_rate: float, spatial_dims: int
    ) -> None:
        super().__init__()
        conv, norm = _CONV[spatial_dims], _NORM[spatial_dims]
        width = bn_size * growth_rate
        self.norm1 = norm(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = conv(in_channels, width, kernel_size=1, stride=1, bias=False)
        self.norm2 = norm(width)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = conv(width, growth_rate, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = float(drop_rate)

    def bottleneck(self, features: Sequence[Tensor]) -> Tensor:
        concatenated = torch.cat(list(features), 1)  # (N, C_l, *spatial): the naive copy
        return self.conv1(self.relu1(self.norm1(concatenated)))

    def forward(self, features: Sequence[Tensor], checkpoint: bool = False) -> Tensor:
        needs_grad = any(t.requires_grad for t in features)
        if checkpoint and needs_grad and torch.is_grad_enabled():
            bottleneck = cp.checkpoint(
                lambda *f: self.bottleneck(f), *features, use_reentrant=False
            )
        else:
            bottleneck = self.bottleneck(features)
        new = self.conv2(self.relu2(self.norm2(bottleneck)))  # (N, k, *spatial)
        if self.drop_rate > 0:
            new = F.dropout(new, p=self.drop_rate, training=self.training)
        return new


class _DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers; output is the concatenation of input and all layers."""

    def __init__(
        self,
        num_layers: int,
        in_channels: int,
        growth_rate: int,
        bn_size: int,
        drop_rate: float,
        spatial_dims: int,
        memory_efficient: MemoryMode,
        policy: BottleneckPolicy,
    ) -> None:
        super().__init__()
        for index in range(num_layers):
            layer = _DenseLayer(
                in_channels + index * growth_rate, growth_rate, bn_size, drop_rate, spatial_dims
            )
            self.add_module(f"denselayer{index + 1}", layer)
        self.memory_efficient = memory_efficient
        self.policy = policy

    def forward(self, x: Tensor) -> Tensor:
        if self.memory_efficient is True:
            return self.forward_engine(x).features
        features = [x]
        for layer in self.values():
            features.append(layer(features, checkpoint=self.memory_efficient == "checkpoint"))
        return torch.cat(features, 1)

    def forward_engine(self, x: Tensor) -> DenseBlockOutput:
        """The engine's forward: the shared buffer and the moments of its channels."""
        return run_dense_block(x, list(self.values()), policy=self.policy)  # type: ignore[arg-type]


class _Transition(nn.Sequential):
    """BN -> ReLU -> 1x1 conv (compression) -> 2x2 average pool."""

    def __init__(
        self, in_channels: int, out_channels: int, spatial_dims: int, memory_efficient: MemoryMode
    ) -> None:
        super().__init__()
        self.add_module("norm", _NORM[spatial_dims](in_channels))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv", _CONV[spatial_dims](in_channels, out_channels, 1, bias=False))
        self.add_module("pool", _AVG_POOL[spatial_dims](kernel_size=2, stride=2))
        self.memory_efficient = memory_efficient

    def forward(self, x: Tensor, moments: ChannelMoments | None = None) -> Tensor:
        """Transition of ``x``; ``moments`` are its channels' batch moments when the dense
        block before computed them (engine mode), so they are not computed again."""
        if self.memory_efficient is not True:
            return super().forward(x)
        stats = norm_stats(self.norm, x, moments=moments)
        part = NormActPart(x, self.norm, stats)
        return self.pool(norm_act_conv([part], self.conv))


class DenseNet(MemoryModeModel):
    """DenseNet-BC for 2-D or 3-D inputs, with an ImageNet or a CIFAR stem.

    Args:
        growth_rate: Channels each layer adds (k).
        block_config: Layers per dense block.
        num_init_features: Channels of the stem's convolution.
        bn_size: Bottleneck width multiplier (the 1x1 conv has ``bn_size * k`` channels).
        compression: Fraction of channels a transition keeps (theta, 0.5 for DenseNet-BC).
        drop_rate: Dropout after each layer's 3x3 conv.
        num_classes: Classifier outputs.
        in_channels: Input image channels.
        spatial_dims: 2 for images, 3 for volumes.
        small_inputs: CIFAR stem (3x3 conv, no pooling) instead of the ImageNet stem
            (7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max pool).
        memory_efficient: False (naive reference), "checkpoint" (torchvision's technique)
            or True (concatnets' engine); switch later with ``set_memory_efficient``.
        bottleneck_policy: The engine's policy, "keep" or "recompute" (see
            :func:`concatnets.engine.dense_block`).
    """

    memory_modes = (False, "checkpoint", True)

    def __init__(
        self,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        num_init_features: int = 64,
        bn_size: int = 4,
        compression: float = 0.5,
        drop_rate: float = 0.0,
        num_classes: int = 1000,
        in_channels: int = 3,
        spatial_dims: int = 2,
        small_inputs: bool = False,
        memory_efficient: MemoryMode = False,
        bottleneck_policy: BottleneckPolicy = "keep",
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if not 0 < compression <= 1:
            raise ValueError(f"compression must be in (0, 1], got {compression}")
        if not 0 <= drop_rate < 1:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
        self.memory_efficient = memory_efficient  # validated by the property
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.num_classes = num_classes
        conv, norm = _CONV[spatial_dims], _NORM[spatial_dims]
        stem: list[tuple[str, nn.Module]]
        if small_inputs:
            stem = [("conv0", conv(in_channels, num_init_features, 3, padding=1, bias=False))]
        else:
            stem = [
                ("conv0", conv(in_channels, num_init_features, 7, stride=2, padding=3, bias=False)),
                ("norm0", norm(num_init_features)),
                ("relu0", nn.ReLU(inplace=True)),
                ("pool0", _MAX_POOL[spatial_dims](kernel_size=3, stride=2, padding=1)),
            ]
        self.features = nn.Sequential()
        for name, module in stem:
            self.features.add_module(name, module)
        channels = num_init_features
        for index, num_layers in enumerate(block_config):
            block = _DenseBlock(
                num_layers,
                channels,
                growth_rate,
                bn_size,
                drop_rate,
                spatial_dims,
                self.memory_efficient,
                bottleneck_policy,
            )
            self.features.add_module(f"denseblock{index + 1}", block)
            channels += num_layers * growth_rate
            if index != len(block_config) - 1:
                out = int(channels * compression)
                transition = _Transition(channels, out, spatial_dims, self.memory_efficient)
                self.features.add_module(f"transition{index + 1}", transition)
                channels = out
        self.features.add_module(f"norm{len(block_config) + 1}", norm(channels))
        self.num_features = channels
        self.classifier = nn.Linear(channels, num_classes)
        self._init_weights()

    def _memory_mode_changed(self, mode: MemoryMode) -> None:
        # The blocks and transitions read the mode on every forward.
        for module in self.modules():
            if isinstance(module, _DenseBlock | _Transition):
                module.memory_efficient = mode

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Conv3d):
                nn.init.kaiming_normal_(module.weight)
            elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm3d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)
            elif isinstance(module, nn.Linear):
                nn.init.constant_(module.bias, 0)

    def forward_features(self, x: Tensor) -> Tensor:
        """Feature maps before the classifier ``(N, num_features, *spatial)``."""
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"DenseNet(spatial_dims={self.spatial_dims}) expects input of shape "
                f"(N, C, {', '.join('*' * self.spatial_dims)}), got {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"DenseNet expects {self.in_channels} input channel(s), got {x.shape[1]}; "
                f"build it with in_channels={x.shape[1]} or convert the images"
            )
        if self.memory_efficient is not True:
            return self.features(x)
        # A dense block in engine mode hands the moments of its output to the transition.
        moments: ChannelMoments | None = None
        for module in self.features:
            if isinstance(module, _DenseBlock) and module.memory_efficient is True:
                x, moments = module.forward_engine(x)
            elif isinstance(module, _Transition):
                x, moments = module(x, moments), None
            else:
                x, moments = module(x), None
        return x

    def forward_head(self, features: Tensor) -> Tensor:
        """Classifier logits ``(N, num_classes)`` from ``forward_features``' output."""
        out = F.relu(features, inplace=True)
        out = torch.flatten(out.mean(dim=tuple(range(2, out.dim()))), 1)
        return self.classifier(out)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def densenet_bc_config(depth: int, growth_rate: int) -> dict[str, Any]:
    """CIFAR DenseNet-BC settings for total depth ``L = 6n + 4`` (three blocks of n layers)."""
    if depth < 10 or (depth - 4) % 6 != 0:
        below = max(10, depth - 4 - (depth - 4) % 6 + 4)
        raise ValueError(
            f"DenseNet-BC depth must be 6n + 4 with n >= 1 (e.g. 40, 100, 190, 250), got "
            f"{depth}; nearest valid depths: {below}, {below + 6}"
        )
    n = (depth - 4) // 6
    return {
        "growth_rate": growth_rate,
        "block_config": (n, n, n),
        "num_init_features": 2 * growth_rate,
        "small_inputs": True,
        "num_classes": 10,
    }


def _densenet_bc(depth: int = 100, growth_rate: int = 12, **overrides: Any) -> DenseNet:
    return DenseNet(**{**densenet_bc_config(depth, growth_rate), **overrides})


_IMAGENET_VARIANTS: dict[str, dict[str, Any]] = {
    "densenet121": {"growth_rate": 32, "block_config": (6, 12, 24, 16), "num_init_features": 64},
    "densenet161": {"growth_rate": 48, "block_config": (6, 12, 36, 24), "num_init_features": 96},
    "densenet169": {"growth_rate": 32, "block_config": (6, 12, 32, 32), "num_init_features": 64},
    "densenet201": {"growth_rate": 32, "block_config": (6, 12, 48, 32), "num_init_features": 64},
    "densenet264": {"growth_rate": 32, "block_config": (6, 12, 64, 48), "num_init_features": 64},
}

for _name, _config in _IMAGENET_VARIANTS.items():
    register_model(
        _name,
        DenseNet,
        defaults=_config,
        family="densenet",
        task="classification",
        description=f"ImageNet DenseNet-BC, k={_config['growth_rate']}, "
        f"blocks {_config['block_config']} (Huang et al. 2017)",
    )

for _name, _depth, _k in (
    ("densenet_bc_100", 100, 12),
    ("densenet_bc_250", 250, 24),
    ("densenet_bc_190", 190, 40),
):
    register_model(
        _name,
        _densenet_bc,
        defaults={"depth": _depth, "growth_rate": _k},
        family="densenet",
        task="classification",
        description=f"CIFAR DenseNet-BC, L={_depth}, k={_k} (Huang et al. 2017)",
    )

register_model(
    "densenet_bc",
    _densenet_bc,
    defaults={"depth": 100, "growth_rate": 12},
    family="densenet",
    task="classification",
    description="CIFAR DenseNet-BC of any depth L = 6n + 4: pass depth=L, growth_rate=k",
)
