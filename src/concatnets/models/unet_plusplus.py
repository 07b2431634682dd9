"""UNet++: a U-Net whose skip paths are nested, densely connected convolution blocks
(Zhou, Rahman Siddiquee, Tajbakhsh & Liang, "UNet++: A Nested U-Net Architecture for
Medical Image Segmentation", DLMIA 2018, arXiv 1807.10165).

Node ``X(i, j)`` sits at resolution level ``i`` (``i`` poolings) and position ``j`` along
the skip path. ``X(i, 0)`` is the encoder backbone; for ``j >= 1`` it convolves the
concatenation of every earlier node of its level and the upsampled node below,
``[X(i, 0), ..., X(i, j-1), up(X(i+1, j-1))]`` (paper Eq. 1). Every node is a
:class:`~concatnets.models.unet.ConvBlock` (two 3x3 conv-BN-ReLU), with
``features * 2**i`` maps (paper: 32, 64, 128, 256, 512).

Deep supervision (paper Sec. 2): 1x1 heads on ``X(0, 1..depth)``; the model returns the
average of their logits (the paper's "accurate mode"), in training as in evaluation, so
that every loss of the CLI (which takes one logits tensor) trains it.
:meth:`UNetPlusPlus.forward_heads` returns the heads one by one, for a training loop
that averages per-head losses as the paper does.

Registered variants: ``unet_plusplus`` (the paper's configuration) and
``unet_plusplus_small``. Memory modes (:mod:`concatnets.models._memory_mode`): ``False``,
``"checkpoint"`` and ``True``, the engine, from the same forward written in
:mod:`concatnets.engine.vocabulary`: each node is stored once, as its second
convolution's output before normalisation plus the statistics, and none of the nested
concatenations, up-convolutions or poolings is stored.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from concatnets.engine import vocabulary as vocab
from concatnets.engine.vocabulary import FeatureMap
from concatnets.models._memory_mode import MemoryMode, MemoryModeModel, run_maybe_checkpointed
from concatnets.models._registry import register_model
from concatnets.models.fc_densenet import _check_input, _pad_to_multiple
from concatnets.models.unet import (
    ConvBlock,
    Normalization,
    _check_choice,
    _check_config,
    init_unet_weights,
)

__all__ = ["NestedNode", "UNetPlusPlus"]

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_TRANSPOSE = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_MAX_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_NORMALIZATIONS = ("batch", "instance", "none")


class NestedNode(nn.Module):
    """Node ``X(i, j)``, ``j >= 1``: 2x2 up-convolution of ``X(i+1, j-1)``, concatenation
    after the ``j`` earlier nodes of level ``i``, and a ConvBlock (paper Eq. 1).

    Args:
        position: ``j``, the number of earlier nodes on this level.
        channels: Maps of every node of this level (and of the upsampled map).
        spatial_dims: 2 or 3.
        normalization: See :class:`~concatnets.models.unet.ConvBlock`.
    """

    def __init__(
        self, position: int, channels: int, spatial_dims: int, normalization: Normalization
    ) -> None:
        super().__init__()
        self.up = _TRANSPOSE[spatial_dims](2 * channels, channels, kernel_size=2, stride=2)
        self.block = ConvBlock(
            (position + 1) * channels,
            channels,
            spatial_dims=spatial_dims,
            normalization=normalization,
        )

    def forward(self, *parts: FeatureMap) -> FeatureMap:
        """``parts``: ``X(i, 0..j-1)`` then ``X(i+1, j-1)`` (the coarse map, last)."""
        *same_level, coarse = parts
        x = vocab.cat([*same_level, vocab.conv(coarse, self.up)])  # (N, (j + 1) * C, *s)
        return self.block(x)  # (N, C, *spatial)


class UNetPlusPlus(MemoryModeModel):
    """UNet++ (Zhou et al. 2018, arXiv 1807.10165), 2-D or 3-D.

    Layout (module names are state-dict keys): ``encoder[i]`` is ``X(i, 0)``, ``pool``
    the 2x2 max pooling, ``nodes["x{i}_{j}"]`` the :class:`NestedNode` ``X(i, j)``,
    ``head`` the 1x1 convolution on ``X(0, depth)``; with deep supervision also
    ``side_heads[j - 1]`` on ``X(0, j)`` for ``j < depth``. A state dict without deep
    supervision thus loads into a model with it by ``strict=False`` (only side heads missing).

    Any input size works, by the policy of ``unet``'s same-padding models: zero padding
    at the far end of each axis to a multiple of ``2**depth``, output cropped back.

    Args:
        spatial_dims: 2 (images) or 3 (volumes).
        in_channels: Channels of the input image.
        num_classes: Channels of the output logits.
        depth: Poolings (the paper: 4, levels 0..4).
        features: Maps of level 0, doubling per level (the paper: 32 -> 512).
        deep_supervision: Heads on ``X(0, 1..depth)``, output their average.
        normalization: ``"batch"`` (the paper's setting here), ``"instance"`` or ``"none"``.
        memory_efficient: ``False`` (naive), ``"checkpoint"`` (recompute each node in
            backward; BN running statistics are then updated twice per training step) or
            ``True`` (the memory engine); switch later with ``set_memory_efficient``.

    >>> model = UNetPlusPlus(depth=2, features=4, deep_supervision=True).eval()
    >>> model(torch.zeros(1, 1, 13, 17)).shape
    torch.Size([1, 2, 13, 17])
    """

    memory_modes = (False, "checkpoint", True)

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        depth: int = 4,
        features: int = 32,
        deep_supervision: bool = False,
        normalization: Normalization = "batch",
        memory_efficient: MemoryMode = False,
    ) -> None:
        super().__init__()
        _check_config(spatial_dims, in_channels, num_classes, depth, features)
        _check_choice("normalization", normalization, _NORMALIZATIONS)
        if not isinstance(deep_supervision, bool):
            raise ValueError(f"deep_supervision must be True or False, got {deep_supervision!r}")
        self.memory_efficient = memory_efficient  # validated by the property
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.depth = depth  # with padding: read by tiled inference (pooling grid 2**depth)
        self.padding = "same"
        self.features = features
        self.deep_supervision = deep_supervision

        widths = [features * 2**level for level in range(depth + 1)]
        level_inputs = [in_channels, *widths[:-1]]
        self.encoder = nn.ModuleList(
            ConvBlock(c_in, c_out, spatial_dims=spatial_dims, normalization=normalization)
            for c_in, c_out in zip(level_inputs, widths, strict=True)
        )
        self.pool = _MAX_POOL[spatial_dims](2)
        self.nodes = nn.ModuleDict(
            {
                f"x{i}_{j}": NestedNode(j, widths[i], spatial_dims, normalization)
                for j in range(1, depth + 1)
                for i in range(depth + 1 - j)
            }
        )
        conv = _CONV[spatial_dims]
        self.head = conv(features, num_classes, 1)
        self.side_heads = nn.ModuleList(
            conv(features, num_classes, 1) for _ in range(depth - 1 if deep_supervision else 0)
        )
        init_unet_weights(self)  # as unet

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes, *spatial)``: the head on ``X(0, depth)``, or with deep
        supervision the average of the heads on ``X(0, 1..depth)``."""
        heads = self.forward_heads(x)
        if len(heads) == 1:
            return heads[0]
        return torch.stack(heads).mean(dim=0)

    def forward_heads(self, x: Tensor) -> list[Tensor]:
        """Logits of every head, ordered ``X(0, 1)``, ..., ``X(0, depth)``; one without
        deep supervision. Average per-head losses over them to train as the paper does."""
        _check_input(type(self).__name__, x, self.spatial_dims, self.in_channels)
        spatial = tuple(x.shape[2:])
        padded = _pad_to_multiple(x, 2**self.depth)
        heads = vocab.run(self._forward_heads, padded, engine=self.memory_efficient is True)
        crop = (..., *(slice(0, s) for s in spatial))
        return [head[crop] for head in heads]

    def _forward_heads(self, x: FeatureMap) -> list[FeatureMap]:
        """The network, for every mode (:mod:`concatnets.engine.vocabulary`)."""
        nodes = self._forward_nodes(x)
        finals = [nodes[0][j] for j in range(1, self.depth + 1)]
        head_modules: Sequence[nn.Module] = [*self.side_heads, self.head]
        return [
            vocab.conv(node, head)
            for head, node in zip(head_modules, finals[-len(head_modules) :], strict=True)
        ]

    def _forward_nodes(self, x: FeatureMap) -> list[list[FeatureMap]]:
        """All nodes: ``grid[i][j]`` is ``X(i, j)``, ``(N, features * 2**i, *spatial_i)``."""
        checkpoint = self.memory_efficient == "checkpoint"
        grid: list[list[FeatureMap]] = []
        for level, block in enumerate(self.encoder):
            x = block(x if level == 0 else vocab.pool(x, self.pool))
            grid.append([x])
        for j in range(1, self.depth + 1):
            for i in range(self.depth + 1 - j):
                node = self.nodes[f"x{i}_{j}"]
                parts = [*grid[i][:j], grid[i + 1][j - 1]]
                grid[i].append(run_maybe_checkpointed(node, parts, checkpoint))  # type: ignore[arg-type]
        return grid


register_model(
    "unet_plusplus",
    UNetPlusPlus,
    # The paper's data are mostly single-channel; the CLI sets channels from the data.
    defaults=dict(spatial_dims=2, in_channels=1, num_classes=2, depth=4, features=32),
    family="unet_plusplus",
    task="segmentation",
    description="UNet++ (Zhou et al. 2018): nested dense skips, 32->512, deep_supervision=False",
)
register_model(
    "unet_plusplus_small",
    UNetPlusPlus,
    defaults=dict(spatial_dims=2, in_channels=3, num_classes=2, depth=3, features=16),
    family="unet_plusplus",
    task="segmentation",
    description="tiny 2-D UNet++ for CPU demos: 16->128, deep_supervision=False",
)
