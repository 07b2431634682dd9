"""FC-DenseNet: dense blocks in a U-Net (Jégou et al., "The One Hundred Layers Tiramisu:
Fully Convolutional DenseNets for Semantic Segmentation", CVPRW 2017, arXiv 1611.09326).

A 3x3 convolution (48 maps), then per level a dense block and a transition down; a dense
bottleneck block; per level a transition up and a dense block; a 1x1 convolution. Layers
are BN-ReLU-3x3 conv-dropout(0.2) without bottleneck (paper Table 1). Only the new feature
maps of a block are upsampled, "to avoid feature explosion" (paper Sec. 3.2), and each
up-path block starts from the concatenation ``[skip, upsampled]``. The last block's output
is the concatenation of its input and its new maps (Table 2: 256 maps for FC-DenseNet103).

Registered variants (paper Sec. 4): ``fc_densenet56`` (4 layers per block, k = 12),
``fc_densenet67`` (5 layers, k = 16), ``fc_densenet103`` (4-5-7-10-12, bottleneck 15,
k = 16). The network's wiring is written once (``FCDenseNet._decode``) for every memory mode
(:mod:`concatnets.models._memory_mode`): ``False`` (plain),
``"checkpoint"`` (``torch.utils.checkpoint`` per dense layer) and ``True``, the memory
engine: every dense block runs on one shared buffer (:func:`concatnets.engine.run_dense_block`);
a down block's buffer has room after it for ``[upsampled, new maps]`` of the up-path block
at its level, which starts from ``[skip, upsampled]`` in that storage (the skip is stored
once, never copied); each block's per-channel moments go to the normalisations that read
its output next (the transition down, and the up-path block that reads it as its skip).
The transition down's dropout and pooling keep only each window's argmax offset and
dropout bit (:mod:`concatnets.models._dropout_pool`), not the full-resolution map.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from concatnets.engine import (
    ChannelMoments,
    DenseLayerSpec,
    NormActPart,
    norm_act_conv,
    norm_stats,
    run_dense_block,
)
from concatnets.models._dropout_pool import dropout_max_pool
from concatnets.models._memory_mode import MemoryMode, MemoryModeModel, run_maybe_checkpointed
from concatnets.models._registry import register_model

__all__ = ["DenseBlock", "DenseLayer", "FCDenseNet", "Grown", "TransitionDown", "TransitionUp"]

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_MAX_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_TRANSPOSE = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


class DenseLayer(nn.Module):
    """BN -> ReLU -> 3x3 conv -> dropout: ``growth_rate`` new maps (paper Table 1)."""

    def __init__(
        self, in_channels: int, growth_rate: int, dropout: float, spatial_dims: int
    ) -> None:
        super().__init__()
        self.norm = _NORM[spatial_dims](in_channels)
        self.act = nn.ReLU()
        self.conv = _CONV[spatial_dims](in_channels, growth_rate, 3, padding=1)
        # Element-wise dropout, as in the paper's code (not channel dropout).
        self.drop = nn.Dropout(dropout)

    def forward(self, *features: Tensor) -> Tensor:
        x = torch.cat(features, dim=1)  # (N, in_channels, *spatial)
        return self.drop(self.conv(self.act(self.norm(x))))  # (N, growth_rate, *spatial)

    def spec(self) -> DenseLayerSpec:
        """The layer as the memory engine runs it."""
        return DenseLayerSpec(
            self.norm, self.conv, drop_rate=float(self.drop.p), training=self.drop.training
        )


class DenseBlock(nn.Module):
    """``num_layers`` dense layers; layer ``l`` sees the block input and all earlier new maps.

    The forward returns only the new maps (``num_layers * growth_rate`` channels), plain
    modules; :meth:`grow` runs the block in any memory mode and also gives the
    concatenation with its input where the paper uses it (down path, last block).
    """

    def __init__(
        self,
        in_channels: int,
        num_layers: int,
        growth_rate: int,
        dropout: float,
        spatial_dims: int,
    ) -> None:
        super().__init__()
        self.growth_rate = growth_rate
        self.layers = nn.ModuleList(
            DenseLayer(in_channels + i * growth_rate, growth_rate, dropout, spatial_dims)
            for i in range(num_layers)
        )

    def forward(self, inputs: Sequence[Tensor], checkpoint: bool = False) -> Tensor:
        features = list(inputs)
        new: list[Tensor] = []
        for layer in self.layers:
            out = run_maybe_checkpointed(layer, features, checkpoint)
            features.append(out)
            new.append(out)
        return torch.cat(new, dim=1)  # (N, num_layers * growth_rate, *spatial)

    def new_maps(self, features: Tensor) -> Tensor:
        """The channels the block's layers added to ``features`` (its output), as a view."""
        grown = len(self.layers) * self.growth_rate
        return features.narrow(1, features.shape[1] - grown, grown)

    def grow(
        self,
        inputs: Sequence[Tensor],
        moments: Sequence[ChannelMoments | None] | None = None,
        *,
        mode: MemoryMode,
        whole: bool = True,
        spare_channels: int = 0,
    ) -> Grown:
        """The block in memory mode ``mode``: its new maps and, with ``whole``, the
        concatenation ``[*inputs, new maps]`` (what the paper passes on in the down path and
        after the last block).

        On the engine the block runs on one buffer (:func:`~concatnets.engine.run_dense_block`),
        which is the concatenation; ``moments`` gives, per input, its batch moments when
        known, and ``spare_channels`` reserves room after the buffer for the block that
        starts from it. Otherwise plain modules run (``"checkpoint"``: each layer under
        ``torch.utils.checkpoint``) and the concatenation is one ``torch.cat``.
        """
        if mode is True:
            out = run_dense_block(
                inputs,
                [layer.spec() for layer in self.layers],
                input_moments=moments,
                spare_channels=spare_channels,
            )
            return Grown(out.features, self.new_maps(out.features), out.moments)
        new = self(inputs, checkpoint=mode == "checkpoint")
        if not whole:
            return Grown(None, new, None)
        features = torch.cat([*inputs, new], dim=1)
        return Grown(features, self.new_maps(features), None)


class Grown(NamedTuple):
    """What :meth:`DenseBlock.grow` hands on.

    Attributes:
        features: ``[*inputs, new maps]`` ``(N, C0 + L * k, *spatial)`` when asked for
            (always on the engine: the block's buffer), else None.
        new: The new maps ``(N, L * k, *spatial)`` (a view of ``features`` when it exists).
        moments: Batch moments of every channel of ``features`` (engine, training), else None.
    """

    features: Tensor | None
    new: Tensor
    moments: ChannelMoments | None


class TransitionDown(nn.Module):
    """BN -> ReLU -> 1x1 conv (channels kept) -> dropout -> 2x2 max pooling (Table 1)."""

    def __init__(self, channels: int, dropout: float, spatial_dims: int) -> None:
        super().__init__()
        self.norm = _NORM[spatial_dims](channels)
        self.act = nn.ReLU()
        self.conv = _CONV[spatial_dims](channels, channels, 1)
        self.drop = nn.Dropout(dropout)
        self.pool = _MAX_POOL[spatial_dims](2)

    def forward(
        self, x: Tensor, moments: ChannelMoments | None = None, engine: bool = False
    ) -> Tensor:
        """``(N, C, *spatial / 2)``. With ``engine``, BN and ReLU are recomputed in backward
        from the statistics of ``x`` (``moments``: its batch moments when the dense block
        before measured them), and the dropout and pooling keep only each window's argmax
        offset and dropout bit."""
        if not engine:
            return self.pool(self.drop(self.conv(self.act(self.norm(x)))))
        part = NormActPart(x, self.norm, norm_stats(self.norm, x, moments=moments))
        z = norm_act_conv([part], self.conv)  # (N, C, *spatial)
        kernel = int(self.pool.kernel_size)  # type: ignore[arg-type]
        return dropout_max_pool(z, float(self.drop.p), self.drop.training, kernel)


class TransitionUp(nn.Module):
    """3x3 transposed convolution, stride 2, channels kept (Table 1): exactly doubles the size."""

    def __init__(self, channels: int, spatial_dims: int) -> None:
        super().__init__()
        self.conv = _TRANSPOSE[spatial_dims](
            channels, channels, 3, stride=2, padding=1, output_padding=1
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)  # (N, C, *2 * spatial)


class FCDenseNet(MemoryModeModel):
    """Fully convolutional DenseNet (Jégou et al. 2017, arXiv 1611.09326), 2-D or 3-D.

    Layout (module names are state-dict keys): ``first_conv``; ``down_blocks[l]`` and
    ``transitions_down[l]`` for level ``l``; ``bottleneck``; ``transitions_up[i]`` and
    ``up_blocks[i]`` applied ``i``-th (``up_blocks[0]`` at the coarsest level); ``head``.

    Any input size works, by the policy of ``unet``'s same-padding models: the input is
    zero-padded at the far end of each axis to a multiple of ``2**depth`` and the output
    is cropped back, so the pooling grid starts at the first pixel.

    Args:
        spatial_dims: 2 (images) or 3 (volumes).
        in_channels: Channels of the input image.
        num_classes: Channels of the output logits.
        down_layers: Layers of each down-path dense block; the up path mirrors them.
        bottleneck_layers: Layers of the bottleneck dense block.
        growth_rate: ``k``, the maps each layer adds.
        first_features: Maps of the first 3x3 convolution (paper: 48).
        dropout: Dropout after every convolution of the layers and transitions (0.2).
        memory_efficient: ``False`` (plain), ``"checkpoint"`` (recompute each dense layer
            in backward; BN running statistics are then updated twice per training step)
            or ``True`` (the memory engine; see the module docstring). Switch any time
            with ``set_memory_efficient(mode)``.

    >>> model = FCDenseNet(num_classes=2, down_layers=(2, 2), bottleneck_layers=2,
    ...                    growth_rate=4, first_features=8).eval()
    >>> model(torch.zeros(1, 3, 13, 17)).shape
    torch.Size([1, 2, 13, 17])
    """

    memory_modes = (False, "checkpoint", True)

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        num_classes: int = 11,
        down_layers: Sequence[int] = (4, 5, 7, 10, 12),
        bottleneck_layers: int = 15,
        growth_rate: int = 16,
        first_features: int = 48,
        dropout: float = 0.2,
        memory_efficient: MemoryMode = False,
    ) -> None:
        super().__init__()
        down_layers = tuple(down_layers)
        _check_config(
            spatial_dims, in_channels, num_classes, down_layers, bottleneck_layers,
            growth_rate, first_features, dropout,
        )  # fmt: skip
        self.memory_efficient = memory_efficient  # validated by the property
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.down_layers = down_layers
        self.bottleneck_layers = bottleneck_layers
        self.growth_rate = growth_rate
        # Read by tiled inference: same-size output, pooling grid of 2**depth.
        self.depth = len(down_layers)
        self.padding = "same"

        block = dict(growth_rate=growth_rate, dropout=dropout, spatial_dims=spatial_dims)
        self.first_conv = _CONV[spatial_dims](in_channels, first_features, 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.transitions_down = nn.ModuleList()
        channels = first_features
        skip_channels = []
        for num_layers in down_layers:
            self.down_blocks.append(DenseBlock(channels, num_layers, **block))
            channels += num_layers * growth_rate
            skip_channels.append(channels)
            self.transitions_down.append(TransitionDown(channels, dropout, spatial_dims))
        self.bottleneck = DenseBlock(channels, bottleneck_layers, **block)
        upsampled = bottleneck_layers * growth_rate
        self.transitions_up = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for num_layers, skip in zip(reversed(down_layers), reversed(skip_channels), strict=True):
            self.transitions_up.append(TransitionUp(upsampled, spatial_dims))
            self.up_blocks.append(DenseBlock(skip + upsampled, num_layers, **block))
            channels = skip + upsampled + num_layers * growth_rate
            upsampled = num_layers * growth_rate
        self.head = _CONV[spatial_dims](channels, num_classes, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        # The paper's code: He-uniform weights (He et al. 2015), zero biases.
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                nn.init.kaiming_uniform_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        spatial = tuple(x.shape[2:])
        x = _pad_to_multiple(x, 2**self.depth)  # (N, in_channels, *padded)
        x = self.first_conv(x)  # (N, first_features, *padded)
        x = self._decode(x, self.memory_efficient)  # (N, skip_0 + upsampled + new, *padded)
        logits = self.head(x)  # (N, num_classes, *padded)
        return logits[(..., *(slice(0, s) for s in spatial))]  # (N, num_classes, *spatial)

    def _decode(self, x: Tensor, mode: MemoryMode) -> Tensor:
        """Down path, bottleneck and up path in memory mode ``mode``: the last block's
        ``[skip, upsampled, new maps]``. Only the new maps of a block are upsampled."""
        engine = mode is True
        skips: list[Grown] = []
        for block, down, spare in zip(
            self.down_blocks, self.transitions_down, self._up_block_growth(), strict=True
        ):
            # (N, skip_l, *spatial_l); on the engine with room after it for the matching up
            # block's [upsampled, new maps], so that block starts from the skip in place.
            skip = block.grow([x], [None], mode=mode, spare_channels=spare)
            skips.append(skip)
            x = down(skip.features, skip.moments, engine)  # (N, skip_l, *spatial_l / 2)
        grown = self.bottleneck.grow([x], [None], mode=mode, whole=False)
        last = len(self.up_blocks) - 1
        for index, (up, block, skip) in enumerate(
            zip(self.transitions_up, self.up_blocks, reversed(skips), strict=True)
        ):
            parts = [skip.features, up(grown.new)]  # (N, skip_l + upsampled, *spatial_l)
            grown = block.grow(parts, [skip.moments, None], mode=mode, whole=index == last)
        assert grown.features is not None
        return grown.features

    def _up_block_growth(self) -> list[int]:
        """Per level, finest first, the channels its up block adds after the skip: the
        upsampled maps and the block's new maps."""
        pairs = zip(self.transitions_up, self.up_blocks, strict=True)
        growth = [up.conv.out_channels + len(b.layers) * b.growth_rate for up, b in pairs]
        return growth[::-1]  # up_blocks[0] is at the coarsest level

    def _check_input(self, x: Tensor) -> None:
        _check_input(type(self).__name__, x, self.spatial_dims, self.in_channels)


def _pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Zero-pad the far end of every spatial axis of ``x`` to a multiple of ``multiple``."""
    pads: list[int] = []
    for size in reversed(x.shape[2:]):  # F.pad takes (before, after) from the last axis
        pads += [0, -size % multiple]
    return F.pad(x, pads) if any(pads) else x


def _check_input(name: str, x: Tensor, spatial_dims: int, in_channels: int) -> None:
    if x.ndim != spatial_dims + 2:
        layout = "(N, C, H, W)" if spatial_dims == 2 else "(N, C, D, H, W)"
        raise ValueError(
            f"{name}(spatial_dims={spatial_dims}) expects a {spatial_dims + 2}-D input "
            f"{layout}, got shape {tuple(x.shape)}; add the batch/channel axes (e.g. x[None]) "
            "or set spatial_dims to match"
        )
    if x.shape[1] != in_channels:
        raise ValueError(
            f"{name} expects {in_channels} input channel(s), got {x.shape[1]}: input shape "
            f"{tuple(x.shape)}; set in_channels={x.shape[1]} or convert the image"
        )


def _check_config(
    spatial_dims: int,
    in_channels: int,
    num_classes: int,
    down_layers: tuple[int, ...],
    bottleneck_layers: int,
    growth_rate: int,
    first_features: int,
    dropout: float,
) -> None:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    if not down_layers:
        raise ValueError("down_layers must list at least one dense block, e.g. (4, 5, 7, 10, 12)")
    named = [
        ("in_channels", in_channels),
        ("num_classes", num_classes),
        ("bottleneck_layers", bottleneck_layers),
        ("growth_rate", growth_rate),
        ("first_features", first_features),
        *((f"down_layers[{i}]", n) for i, n in enumerate(down_layers)),
    ]
    for name, value in named:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


_DESCRIPTION = "FC-DenseNet{} (Jégou et al. 2017): {}, k={}, any input size"
# The paper trains on CamVid (11 classes, RGB); the CLI sets both from the data.
_PAPER_IO = dict(spatial_dims=2, in_channels=3, num_classes=11)
register_model(
    "fc_densenet56",
    FCDenseNet,
    defaults=dict(**_PAPER_IO, down_layers=(4,) * 5, bottleneck_layers=4, growth_rate=12),
    family="fc_densenet",
    task="segmentation",
    description=_DESCRIPTION.format(56, "4 layers per block", 12),
)
register_model(
    "fc_densenet67",
    FCDenseNet,
    defaults=dict(**_PAPER_IO, down_layers=(5,) * 5, bottleneck_layers=5, growth_rate=16),
    family="fc_densenet",
    task="segmentation",
    description=_DESCRIPTION.format(67, "5 layers per block", 16),
)
register_model(
    "fc_densenet103",
    FCDenseNet,
    defaults=dict(**_PAPER_IO, down_layers=(4, 5, 7, 10, 12), bottleneck_layers=15, growth_rate=16),
    family="fc_densenet",
    task="segmentation",
    description=_DESCRIPTION.format(103, "blocks 4-5-7-10-12-15", 16),
)
