"""U-Net family: the original crop-and-concatenate network and modern same-padded variants.

Implements Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical
Image Segmentation" (MICCAI 2015, arXiv 1505.04597): a contracting path of 3x3
convolution blocks and 2x2 max pooling, an expanding path of 2x2 up-convolutions, and at
every level the concatenation of the encoder's feature map with the upsampled one. The
3-D variant follows Cicek et al., "3D U-Net" (MICCAI 2016, arXiv 1606.06650).

Registered variants: ``unet_original`` (the paper's network), ``unet`` (same padding,
batch norm), ``unet3d`` and ``unet_small`` (a tiny model for CPU demos).
"""

from __future__ import annotations

import math
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from concatnets.engine import vocabulary as vocab
from concatnets.engine.vocabulary import FeatureMap
from concatnets.models._memory_mode import MemoryModeModel
from concatnets.models._registry import register_model
from concatnets.models._unet_sizes import (
    check_valid_input_size,
    nearest_valid_input_sizes,
    unet_input_size_for_output,
    unet_output_size,
    unet_valid_margin,
)

__all__ = [
    "ConvBlock",
    "UNet",
    "UpBlock",
    "UpsampleConv",
    "check_valid_input_size",
    "init_unet_weights",
    "nearest_valid_input_sizes",
    "unet_input_size_for_output",
    "unet_output_size",
    "unet_valid_margin",
]

Normalization = Literal["batch", "instance", "group", "none"]
Upsampling = Literal["transpose", "interpolate"]
Padding = Literal["same", "valid"]

_NORMALIZATIONS = ("batch", "instance", "group", "none")
_UPSAMPLINGS = ("transpose", "interpolate")
_PADDINGS = ("same", "valid")
# Wu & He, "Group Normalization" (arXiv 1803.08494), found 32 groups a good default.
_DEFAULT_GROUPS = 32


def _conv_type(spatial_dims: int) -> type[nn.Module]:
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


def _make_norm(kind: str, channels: int, spatial_dims: int, num_groups: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels) if spatial_dims == 2 else nn.BatchNorm3d(channels)
    if kind == "instance":
        # affine=True so every normalization option can learn a scale and shift.
        norm = nn.InstanceNorm2d if spatial_dims == 2 else nn.InstanceNorm3d
        return norm(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(num_groups, channels)
    return nn.Identity()


class ConvBlock(nn.Module):
    """Two 3x3 convolutions, each followed by normalization and ReLU (paper Sec. 2).

    Args:
        in_channels: Channels of the block's input.
        out_channels: Channels of both convolutions' outputs.
        spatial_dims: 2 or 3.
        normalization: ``"batch"``, ``"instance"``, ``"group"`` or ``"none"``.
        padding: ``"same"`` (zero padding 1, size kept) or ``"valid"`` (unpadded, as in
            the paper: each convolution loses one pixel per side).
        num_groups: Groups for ``normalization="group"``; must divide ``out_channels``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        spatial_dims: int = 2,
        normalization: Normalization = "batch",
        padding: Padding = "same",
        num_groups: int = 1,
    ) -> None:
        super().__init__()
        conv = _conv_type(spatial_dims)
        pad = 1 if padding == "same" else 0
        # A following normalization subtracts the mean, which cancels any conv bias.
        bias = normalization == "none"
        self.conv1 = conv(in_channels, out_channels, 3, padding=pad, bias=bias)
        self.norm1 = _make_norm(normalization, out_channels, spatial_dims, num_groups)
        self.act1 = nn.ReLU()
        self.conv2 = conv(out_channels, out_channels, 3, padding=pad, bias=bias)
        self.norm2 = _make_norm(normalization, out_channels, spatial_dims, num_groups)
        self.act2 = nn.ReLU()

    def forward(self, x: FeatureMap) -> FeatureMap:
        """A tensor (naive) or an engine map (see :mod:`concatnets.engine.vocabulary`)."""
        x = vocab.activate(self.norm1, self.act1, vocab.conv(x, self.conv1))  # (N, out, *s)
        return vocab.activate(self.norm2, self.act2, vocab.conv(x, self.conv2))


class UpsampleConv(nn.Module):
    """A 1x1 convolution that sets the channel count and linear (bilinear/trilinear) 2x
    upsampling; the size-free alternative to the paper's 2x2 up-convolution.

    The two commute exactly (both are linear, each interpolated pixel is a weighted mean
    with weights summing to one, so the bias passes through), so the convolution runs
    first, at the coarse size: four (2-D) or eight (3-D) times fewer operations, and on
    the engine only the upsampled map of ``out_channels`` is stored. The 1x1 kernel keeps
    the spatial size in both padding modes, so the size arithmetic is the same as with
    the transposed convolution.

    Args:
        in_channels: Channels of the coarse map.
        out_channels: Channels after the 1x1 convolution.
        spatial_dims: 2 or 3.
    """

    def __init__(self, in_channels: int, out_channels: int, *, spatial_dims: int = 2) -> None:
        super().__init__()
        mode = "bilinear" if spatial_dims == 2 else "trilinear"
        self.upsample = nn.Upsample(scale_factor=2, mode=mode, align_corners=False)
        self.conv = _conv_type(spatial_dims)(in_channels, out_channels, 1)

    def forward(self, x: FeatureMap) -> FeatureMap:
        return vocab.upsample(vocab.conv(x, self.conv), self.upsample)  # (N, out, *2 * s)


class UpBlock(nn.Module):
    """One expanding-path level: upsample, concatenate ``[skip, up]``, ConvBlock.

    Args:
        in_channels: Channels of the coarse map coming from below.
        out_channels: Channels of the skip map and of the block's output; the upsampling
            halves ``in_channels`` to this, as in the paper.
        spatial_dims: 2 or 3.
        upsampling: ``"transpose"`` (2x2 stride-2 transposed convolution, the paper's
            up-convolution) or ``"interpolate"`` (:class:`UpsampleConv`).
        normalization: See :class:`ConvBlock`.
        padding: See :class:`ConvBlock`.
        num_groups: See :class:`ConvBlock`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        spatial_dims: int = 2,
        upsampling: Upsampling = "transpose",
        normalization: Normalization = "batch",
        padding: Padding = "same",
        num_groups: int = 1,
    ) -> None:
        super().__init__()
        self.up: nn.Module
        if upsampling == "transpose":
            transpose = nn.ConvTranspose2d if spatial_dims == 2 else nn.ConvTranspose3d
            self.up = transpose(in_channels, out_channels, kernel_size=2, stride=2)
        else:
            self.up = UpsampleConv(in_channels, out_channels, spatial_dims=spatial_dims)
        self.block = ConvBlock(
            2 * out_channels,
            out_channels,
            spatial_dims=spatial_dims,
            normalization=normalization,
            padding=padding,
            num_groups=num_groups,
        )

    def forward(self, x: FeatureMap, skip: FeatureMap) -> FeatureMap:
        up = vocab.conv(x, self.up)  # (N, out_channels, *2 * spatial)
        # Valid padding: the skip map is larger than the upsampled one (paper Fig. 1).
        skip = vocab.center_crop(skip, vocab.spatial_size(up))
        return self.block(vocab.cat([skip, up]))  # (N, out_channels, *2 * spatial)


def init_unet_weights(model: nn.Module) -> None:
    """Ronneberger et al. 2015, Sec. 3: Gaussian weights with std sqrt(2 / N), N the
    incoming nodes per unit (He-normal for convolutions), zero biases."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(module, (nn.ConvTranspose2d, nn.ConvTranspose3d)):
            # Kernel == stride: each output unit sees one tap of every input channel.
            nn.init.normal_(module.weight, std=math.sqrt(2.0 / module.in_channels))
        else:
            continue
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class UNet(MemoryModeModel):
    """U-Net (Ronneberger et al. 2015, arXiv 1505.04597), 2-D or 3-D.

    Layout (module names are state-dict keys): ``encoder[l]`` is the ConvBlock of level
    ``l`` (``features * 2**l`` channels), ``pool`` the 2x2 max pooling, ``bottleneck``
    the ConvBlock at ``features * 2**depth`` channels, ``decoder[i]`` the UpBlock applied
    ``i``-th, i.e. ``decoder[0]`` takes the bottleneck output and the skip of level
    ``depth - 1``, ``decoder[-1]`` the skip of level 0; ``head`` a 1x1 convolution.

    With ``padding="same"`` the output has the input's spatial size for any input size:
    the input is zero-padded at the far end of each axis to the next multiple of
    ``2**depth`` and the output cropped back. Zeros rather than a reflection because the
    network's own convolutions pad with zeros, so the added border looks to the first
    layer like the border it already sees, and zero padding works for any size (a
    reflection needs the pad to be smaller than the input). At the far end only, so the
    pooling grid always starts at the first pixel: a pixel's prediction does not depend on
    how far the image extends, which lets tiled inference match whole-image inference.
    With ``padding="valid"`` convolutions are unpadded, skip maps are centre-cropped
    before concatenation, and the output is ``2 * unet_valid_margin(depth)`` smaller than
    the input; only some input sizes work (see :func:`unet_output_size`).

    Args:
        spatial_dims: 2 (images) or 3 (volumes).
        in_channels: Channels of the input image.
        num_classes: Channels of the output logits.
        depth: Number of pooling steps (the paper uses 4).
        features: Channels of level 0; they double per level (paper: 64 -> 1024).
        normalization: ``"batch"``, ``"instance"``, ``"group"`` or ``"none"`` (the paper).
        upsampling: ``"transpose"`` (2x2 up-convolution, the paper) or ``"interpolate"``.
        padding: ``"same"`` or ``"valid"`` (the paper).
        memory_efficient: ``True`` runs the memory engine, ``False`` the naive reference;
            switch later with :meth:`set_memory_efficient` (U-Net has no checkpoint mode).
        num_groups: Groups for ``normalization="group"``; default ``gcd(32, features)``,
            which divides every level's channel count.

    >>> import torch
    >>> model = UNet(in_channels=1, num_classes=2, depth=2, features=4).eval()
    >>> model(torch.zeros(1, 1, 13, 17)).shape
    torch.Size([1, 2, 13, 17])
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        depth: int = 4,
        features: int = 64,
        normalization: Normalization = "batch",
        upsampling: Upsampling = "transpose",
        padding: Padding = "same",
        memory_efficient: bool = False,
        num_groups: int | None = None,
    ) -> None:
        super().__init__()
        _check_config(spatial_dims, in_channels, num_classes, depth, features)
        _check_choice("normalization", normalization, _NORMALIZATIONS)
        _check_choice("upsampling", upsampling, _UPSAMPLINGS)
        _check_choice("padding", padding, _PADDINGS)
        groups = _resolve_groups(normalization, features, num_groups)

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.depth = depth
        self.features = features
        self.normalization = normalization
        self.upsampling = upsampling
        self.padding = padding
        self.memory_efficient = memory_efficient  # validated by the property

        block_options = dict(
            spatial_dims=spatial_dims, normalization=normalization, padding=padding
        )
        widths = [features * 2**level for level in range(depth + 1)]
        level_inputs = [in_channels, *widths[: depth - 1]]
        self.encoder = nn.ModuleList(
            ConvBlock(level_inputs[level], widths[level], num_groups=groups, **block_options)
            for level in range(depth)
        )
        self.pool = nn.MaxPool2d(2) if spatial_dims == 2 else nn.MaxPool3d(2)
        self.bottleneck = ConvBlock(
            widths[depth - 1], widths[depth], num_groups=groups, **block_options
        )
        self.decoder = nn.ModuleList(
            UpBlock(
                widths[level + 1],
                widths[level],
                upsampling=upsampling,
                num_groups=groups,
                **block_options,
            )
            for level in reversed(range(depth))
        )
        self.head = _conv_type(spatial_dims)(features, num_classes, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        init_unet_weights(self)

    def output_size(self, input_size: tuple[int, ...]) -> tuple[int, ...]:
        """Spatial output size for ``input_size``; raises for sizes valid padding refuses."""
        return unet_output_size(input_size, self.depth, self.padding)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        spatial = tuple(x.shape[2:])
        if self.padding == "same":
            x = self._pad_to_multiple(x)  # (N, C, *padded)
        logits = vocab.run(self._forward_maps, x, engine=self.memory_efficient is True)
        if self.padding == "same":
            logits = logits[(..., *(slice(0, s) for s in spatial))]  # (N, num_classes, *spatial)
        return logits

    def _forward_maps(self, x: FeatureMap) -> FeatureMap:
        """The network, for both modes (:mod:`concatnets.engine.vocabulary`): plain
        ``torch.cat([skip, up])`` per level on tensors; on the engine only convolution
        outputs and statistics are stored, the concatenations, poolings and
        up-convolutions are rebuilt in backward, and level 0's first convolution is
        recomputed from the image."""
        skips = []
        for block in self.encoder:
            x = block(x)  # (N, features * 2**level, *spatial_level)
            skips.append(x)
            x = vocab.pool(x, self.pool)
        x = self.bottleneck(x)  # (N, features * 2**depth, *spatial_depth)
        for up_block, skip in zip(self.decoder, reversed(skips), strict=True):
            x = up_block(x, skip)
        return vocab.conv(x, self.head)  # (N, num_classes, *spatial_out)

    def _pad_to_multiple(self, x: Tensor) -> Tensor:
        multiple = 2**self.depth
        pads: list[int] = []
        # F.pad takes (before, after) pairs starting from the last axis.
        for size in reversed(x.shape[2:]):
            pads += [0, -size % multiple]
        return F.pad(x, pads) if any(pads) else x

    def _check_input(self, x: Tensor) -> None:
        expected_ndim = self.spatial_dims + 2
        if x.ndim != expected_ndim:
            layout = "(N, C, H, W)" if self.spatial_dims == 2 else "(N, C, D, H, W)"
            raise ValueError(
                f"UNet(spatial_dims={self.spatial_dims}) expects a {expected_ndim}-D input "
                f"{layout}, got shape {tuple(x.shape)}; add the batch/channel axes "
                "(e.g. x[None]) or set spatial_dims to match"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNet expects {self.in_channels} input channel(s), got {x.shape[1]}: "
                f"input shape {tuple(x.shape)}; set in_channels={x.shape[1]} or convert "
                "the image"
            )
        if self.padding == "valid":
            check_valid_input_size(tuple(x.shape[2:]), self.depth)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _check_config(
    spatial_dims: int, in_channels: int, num_classes: int, depth: int, features: int
) -> None:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    for name, value in [
        ("in_channels", in_channels),
        ("num_classes", num_classes),
        ("depth", depth),
        ("features", features),
    ]:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _resolve_groups(normalization: str, features: int, num_groups: int | None) -> int:
    if normalization != "group":
        return 1
    if num_groups is None:
        return math.gcd(_DEFAULT_GROUPS, features)
    # Every level's width is features * 2**level, so dividing `features` suffices.
    if num_groups < 1 or features % num_groups:
        divisors = [g for g in range(1, features + 1) if features % g == 0]
        raise ValueError(
            f"num_groups={num_groups} must divide features={features} (the channels of "
            f"level 0) for group normalization; pick one of {divisors} or leave it None"
        )
    return num_groups


# Variants as data. All accept overrides: create_model("unet", in_channels=1, num_classes=4).
register_model(
    "unet_original",
    UNet,
    defaults=dict(
        spatial_dims=2,
        in_channels=1,
        num_classes=2,
        depth=4,
        features=64,
        normalization="none",
        upsampling="transpose",
        padding="valid",
    ),
    family="unet",
    task="segmentation",
    description="Ronneberger et al. 2015 exactly: valid convs, 64->1024, 572x572 -> 388x388",
)
register_model(
    "unet",
    UNet,
    # in_channels=3: user image folders are mostly RGB; grayscale users pass in_channels=1.
    defaults=dict(
        spatial_dims=2,
        in_channels=3,
        num_classes=2,
        depth=4,
        features=64,
        normalization="batch",
        upsampling="transpose",
        padding="same",
    ),
    family="unet",
    task="segmentation",
    description="modern 2-D U-Net: same padding (any input size), batch norm, 64->1024",
)
register_model(
    "unet3d",
    UNet,
    # Volumes cost a cube of the side in memory, so a smaller base and three pooling
    # steps (32 -> 256, as in Cicek et al. 2016); CT/MRI volumes are mostly one channel.
    defaults=dict(
        spatial_dims=3,
        in_channels=1,
        num_classes=2,
        depth=3,
        features=32,
        normalization="batch",
        upsampling="transpose",
        padding="same",
    ),
    family="unet",
    task="segmentation",
    description="3-D U-Net (Cicek et al. 2016): same padding, batch norm, 32->256",
)
register_model(
    "unet_small",
    UNet,
    defaults=dict(
        spatial_dims=2,
        in_channels=3,
        num_classes=2,
        depth=3,
        features=16,
        normalization="batch",
        upsampling="transpose",
        padding="same",
    ),
    family="unet",
    task="segmentation",
    description="tiny 2-D U-Net for CPU demos: same padding, batch norm, 16->128",
)
