"""Augmentations, size policies and normalization on ``(C, H, W)`` tensors.

Volumes are ``(C, D, H, W)`` tensors with ``(D, H, W)`` masks; every transform here
handles both (the sample's dimensionality is read from its mask or size).

Every random choice draws from a ``torch.Generator`` passed in by the caller, so a
sample's augmentation depends only on ``(seed, epoch, index)`` and not on worker count
or on whether training was resumed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "AUGMENTATIONS",
    "IGNORE_INDEX",
    "NORMALIZATIONS",
    "SIZE_POLICIES",
    "Augment",
    "ChannelStatistics",
    "SizePolicy",
    "elastic_deform",
    "match_channels",
    "normalize_image",
    "parse_augmentations",
]

IGNORE_INDEX = -1
"""Mask value of padded pixels: losses and metrics skip it."""

AUGMENTATIONS: tuple[str, ...] = ("flip", "rot90", "elastic")
SIZE_POLICIES: tuple[str, ...] = ("resize", "pad", "crop")
NORMALIZATIONS: tuple[str, ...] = ("dataset", "image", "unit")
_FLAT_CHANNEL_STD = 1e-6  # a channel this flat keeps its scale (divides by 1)
_VOLUME_PLANES = ((-3, -2), (-3, -1), (-2, -1))  # (D, H), (D, W), (H, W)


def parse_augmentations(text: str | Sequence[str]) -> tuple[str, ...]:
    """Parse ``'flip,rot90,elastic'`` (or ``'none'``) into a tuple of names.

    >>> parse_augmentations("flip, elastic")
    ('flip', 'elastic')

    Args:
        text: Comma-separated names, a list of names, or ``'none'``.
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    names = tuple(i.strip() for i in items if i.strip() and i.strip() != "none")
    for name in names:
        if name not in AUGMENTATIONS:
            raise ValueError(
                f"unknown augmentation {name!r}; choose from {', '.join(AUGMENTATIONS)} or 'none'"
            )
    return names


def elastic_deform(
    image: Tensor,
    mask: Tensor | None,
    generator: torch.Generator,
    sigma: float = 10.0,
    grid: int = 3,
) -> tuple[Tensor, Tensor | None]:
    """Elastic deformation of the U-Net paper (Ronneberger et al. 2015, Sec. 3.1).

    Random displacement vectors on a coarse ``grid x grid`` grid, drawn from a Gaussian
    with ``sigma`` pixels standard deviation, are bicubically interpolated to a
    per-pixel field. The image is resampled bilinearly, the mask with nearest
    neighbour so it keeps exactly its class values. Volumes (``(C, D, H, W)``) use a
    ``grid x grid x grid`` grid interpolated trilinearly (PyTorch has no 3-D bicubic).

    Args:
        image: ``(C, H, W)`` or ``(C, D, H, W)`` float image.
        mask: ``(H, W)`` or ``(D, H, W)`` integer mask, or ``None``.
        generator: Source of randomness.
        sigma: Standard deviation of the displacements, in pixels.
        grid: Number of control points per side.
    """
    spatial = tuple(image.shape[1:])
    dims = len(spatial)
    displacement = torch.randn((1, dims, *(grid,) * dims), generator=generator) * sigma
    mode = "bicubic" if dims == 2 else "trilinear"
    field = F.interpolate(displacement, size=spatial, mode=mode, align_corners=True)
    # Pixels -> normalized [-1, 1] coordinates (align_corners=True convention). grid_sample
    # wants (x, y[, z]), the spatial axes reversed: displacement channel 0 moves along x.
    scale = torch.tensor([2.0 / max(n - 1, 1) for n in reversed(spatial)])
    offsets = (field * scale.view(1, dims, *(1,) * dims)).movedim(1, -1)  # (1, *spatial, dims)
    axes = [torch.linspace(-1.0, 1.0, n) for n in spatial]
    base = torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], dim=-1)[None]
    sample_grid = base + offsets
    warped = F.grid_sample(
        image[None].float(),
        sample_grid,
        mode="bilinear",
        padding_mode="reflection",
        align_corners=True,
    )[0].to(image.dtype)
    if mask is None:
        return warped, None
    warped_mask = F.grid_sample(
        mask[None, None].double(),
        sample_grid.double(),
        mode="nearest",
        padding_mode="reflection",
        align_corners=True,
    )[0, 0]
    return warped, warped_mask.round().to(mask.dtype)


@dataclass(frozen=True)
class Augment:
    """Random flips, 90-degree rotations and elastic deformation.

    Args:
        names: Which augmentations to apply, from :data:`AUGMENTATIONS`.
        elastic_sigma: Displacement standard deviation in pixels (paper: 10).
        elastic_grid: Control points per side of the displacement grid (paper: 3).
        elastic_probability: Chance that a sample is elastically deformed.
    """

    names: tuple[str, ...] = AUGMENTATIONS
    elastic_sigma: float = 10.0
    elastic_grid: int = 3
    elastic_probability: float = 0.5

    def __call__(
        self, image: Tensor, mask: Tensor | None, generator: torch.Generator
    ) -> tuple[Tensor, Tensor | None]:
        """Augment ``image`` (``(C, H, W)``) and ``mask`` (``(H, W)``) the same way.

        Volumes (``(C, D, H, W)`` with ``(D, H, W)`` masks) are flipped along each
        spatial axis and rotated by 90-degree turns in a random plane of two axes.
        """
        # Draw every random number, used or not, so each choice has a fixed stream position:
        # images take 4 (2 flips, turns, elastic), volumes 6 (3 flips, plane, turns, elastic).
        volume = image.dim() == 4
        draws = torch.rand(6 if volume else 4, generator=generator)
        if volume:
            image, mask = self._flip_rotate_volume(image, mask, draws)
        else:
            image, mask = self._flip_rotate_image(image, mask, draws)
        if "elastic" in self.names and draws[-1] < self.elastic_probability:
            image, mask = elastic_deform(
                image, mask, generator, self.elastic_sigma, self.elastic_grid
            )
        return image.contiguous(), None if mask is None else mask.contiguous()

    def _flip_rotate_image(
        self, image: Tensor, mask: Tensor | None, draws: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        if "flip" in self.names:
            if draws[0] < 0.5:
                image, mask = image.flip(-1), None if mask is None else mask.flip(-1)
            if draws[1] < 0.5:
                image, mask = image.flip(-2), None if mask is None else mask.flip(-2)
        if "rot90" in self.names and image.shape[-1] == image.shape[-2]:
            turns = int(draws[2] * 4) % 4
            if turns:
                image = torch.rot90(image, turns, dims=(-2, -1))
                mask = None if mask is None else torch.rot90(mask, turns, dims=(-2, -1))
        return image, mask

    def _flip_rotate_volume(
        self, image: Tensor, mask: Tensor | None, draws: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        if "flip" in self.names:
            axes = [a for a, draw in zip((-3, -2, -1), draws[:3], strict=True) if draw < 0.5]
            if axes:
                image = image.flip(axes)
                mask = None if mask is None else mask.flip(axes)
        # Only planes whose two sides are equal can turn by 90 degrees in place.
        planes = [(a, b) for a, b in _VOLUME_PLANES if image.shape[a] == image.shape[b]]
        if "rot90" in self.names and planes:
            plane = planes[min(int(draws[3] * len(planes)), len(planes) - 1)]
            turns = int(draws[4] * 4) % 4
            if turns:
                image = torch.rot90(image, turns, dims=plane)
                mask = None if mask is None else torch.rot90(mask, turns, dims=plane)
        return image, mask


@dataclass(frozen=True)
class SizePolicy:
    """Bring every sample to one ``(height, width)`` so samples can be batched.

    ``resize`` rescales (image bilinear, or trilinear for volumes; mask nearest);
    ``pad`` pads up to the size (image with zeros, mask with :data:`IGNORE_INDEX`) and
    crops larger images; ``crop`` takes a random patch in training and the centre
    patch otherwise, padding smaller images first.

    Args:
        mode: One of :data:`SIZE_POLICIES`.
        size: Target ``(height, width)``, or ``(depth, height, width)`` for volumes.
    """

    mode: str
    size: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.mode not in SIZE_POLICIES:
            raise ValueError(
                f"unknown size policy {self.mode!r}; choose from {', '.join(SIZE_POLICIES)}"
            )
        if len(self.size) not in (2, 3):
            raise ValueError(f"size policy size {self.size} must have 2 or 3 sides")

    def __call__(
        self,
        image: Tensor,
        mask: Tensor | None,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor | None]:
        """Apply the policy; ``generator=None`` makes crops central (validation)."""
        dims = len(self.size)
        if image.dim() != dims + 1:
            kind = "(C, H, W) images" if dims == 2 else "(C, D, H, W) volumes"
            raise ValueError(
                f"size policy for {kind} got a sample of shape {tuple(image.shape)}; "
                "train and predict on data of one dimensionality"
            )
        if tuple(image.shape[1:]) == self.size:
            return image, mask
        if self.mode == "resize":
            return self._resize(image, mask)
        image, mask = self._pad(image, mask)
        return self._crop(image, mask, generator if self.mode == "crop" else None)

    def _resize(self, image: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        volume = len(self.size) == 3
        resized = F.interpolate(
            image[None].float(),
            size=self.size,
            mode="trilinear" if volume else "bilinear",
            align_corners=False,
            antialias=not volume,  # PyTorch antialiases only 2-D (bi)linear resizing
        )[0].to(image.dtype)
        if mask is None:
            return resized, None
        small = F.interpolate(mask[None, None].float(), size=self.size, mode="nearest")
        return resized, small[0, 0].to(mask.dtype)

    def _pad(self, image: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        extra = [max(0, target - n) for target, n in zip(self.size, image.shape[1:], strict=True)]
        if not any(extra):
            return image, mask
        padding: list[int] = []
        for amount in reversed(extra):  # F.pad lists the last axis first
            padding += [amount // 2, amount - amount // 2]
        image = F.pad(image, padding, value=0.0)
        if mask is not None:
            mask = F.pad(mask, padding, value=IGNORE_INDEX)
        return image, mask

    def _crop(
        self, image: Tensor, mask: Tensor | None, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor | None]:
        spare = [n - target for n, target in zip(image.shape[1:], self.size, strict=True)]
        if generator is None:
            starts = [s // 2 for s in spare]
        else:
            starts = [int(torch.randint(s + 1, (1,), generator=generator)) for s in spare]
        window = tuple(
            slice(start, start + side) for start, side in zip(starts, self.size, strict=True)
        )
        image = image[(slice(None), *window)]
        if mask is not None:
            mask = mask[window]
        return image, mask


def _clip_to(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``values`` clipped to the range of the integer ``dtype`` (negatives included)."""
    info = np.iinfo(dtype)
    return np.clip(values, info.min, info.max).astype(dtype)


def match_channels(array: np.ndarray, channels: int, spatial_dims: int = 2) -> np.ndarray:
    """Convert an ``(H, W)`` or ``(H, W, 3)`` image to ``channels`` (1 or 3) channels.

    Grayscale is repeated to RGB; RGB becomes grayscale by ITU-R 601 luma weights.
    Volumes are not converted: their channels must already match.

    Args:
        array: The image, or a ``(D, H, W)`` / ``(D, H, W, C)`` volume.
        channels: 1 or 3 (volumes: what the model takes).
        spatial_dims: 2 for images, 3 for volumes.
    """
    if spatial_dims == 3:
        found = 1 if array.ndim == 3 else int(array.shape[-1])
        if found != channels:
            raise ValueError(
                f"volume of shape {tuple(array.shape)} has {found} channel(s) but the model "
                f"takes {channels}; save volumes as (D, H, W, {channels})"
                + (" or (D, H, W)" if channels == 1 else "")
            )
        return array
    if channels == 1 and array.ndim == 3:
        weights = np.array([0.299, 0.587, 0.114], dtype=np.float64)
        grey = array[..., :3].astype(np.float64) @ weights
        return (
            grey.astype(array.dtype)
            if np.issubdtype(array.dtype, np.floating)
            else _clip_to(np.round(grey), array.dtype)
        )
    if channels == 3 and array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=-1)
    return array


@dataclass(frozen=True)
class ChannelStatistics:
    """Per-channel mean and standard deviation of a training split, in [0, 1] units.

    Computed once over the training images and applied unchanged to every image the
    model sees (training, validation, evaluate, predict), so differences in colour and
    brightness between images stay visible to the model.

    Args:
        mean: One mean per channel.
        std: One standard deviation per channel (a channel with none keeps std 1).
        images: How many images they were computed over.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    images: int = 0

    def __post_init__(self) -> None:
        if not self.mean or len(self.mean) != len(self.std):
            raise ValueError(
                f"channel statistics need one mean and one std per channel, got mean "
                f"{list(self.mean)} and std {list(self.std)}"
            )
        values = (*self.mean, *self.std)
        if (
            not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
            or min(self.std) <= 0
        ):
            raise ValueError(
                f"channel statistics must be finite numbers with std > 0, got mean "
                f"{list(self.mean)} and std {list(self.std)}"
            )

    @classmethod
    def of_images(cls, images: Iterable[Tensor]) -> ChannelStatistics:
        """Pixel-weighted statistics of ``(C, ...)`` images in [0, 1] (float64 sums).

        Args:
            images: The training images, each ``(C, H, W)`` or ``(C, D, H, W)``.
        """
        total = squares = None
        pixels = count = 0
        for image in images:
            flat = image.reshape(image.shape[0], -1).double()
            if total is None:
                total, squares = flat.sum(1), (flat * flat).sum(1)
            elif flat.shape[0] != total.shape[0]:
                raise ValueError(
                    f"training image {count} has {flat.shape[0]} channel(s), the first had "
                    f"{total.shape[0]}; give every image the same channels"
                )
            else:
                total, squares = total + flat.sum(1), squares + (flat * flat).sum(1)
            pixels += flat.shape[1]
            count += 1
        if total is None or squares is None or pixels == 0:
            raise ValueError(
                "--normalization dataset needs at least one training image to compute its "
                "channel statistics from; add images or use --normalization image"
            )
        mean = total / pixels
        variance = (squares / pixels - mean * mean).clamp_min(0.0)
        std = [s if s > _FLAT_CHANNEL_STD else 1.0 for s in variance.sqrt().tolist()]
        return cls(tuple(mean.tolist()), tuple(std), count)

    def to_json(self) -> dict[str, Any]:
        """``{"mean": [...], "std": [...], "images": N}`` for config.json and checkpoints."""
        return {"mean": list(self.mean), "std": list(self.std), "images": self.images}

    @classmethod
    def from_json(cls, value: object, source: str) -> ChannelStatistics:
        """Read :meth:`to_json`'s form back, naming ``source`` if it is malformed.

        Args:
            value: The stored dict.
            source: Where it was read from (a file or setting), for the error.
        """
        problem = ""
        if isinstance(value, Mapping):
            mean, std, images = value.get("mean"), value.get("std"), value.get("images", 0)
            if (
                isinstance(mean, list)
                and isinstance(std, list)
                and isinstance(images, int)
                and not isinstance(images, bool)
            ):
                try:
                    return cls(tuple(mean), tuple(std), images)
                except ValueError as invalid:
                    problem = f" ({invalid})"
        raise ValueError(
            f"{source}: normalization_statistics must be "
            '{"mean": [one per channel], "std": [one per channel, > 0], "images": N}, '
            f"got {value!r}{problem}; remove it to compute it again from the training split"
        )

    def describe(self) -> str:
        """``mean 0.412, std 0.231 over 72 images`` (one value per channel)."""

        def show(values: tuple[float, ...]) -> str:
            return "/".join(f"{v:.3f}" for v in values)

        return f"mean {show(self.mean)}, std {show(self.std)} over {self.images} images"


def normalize_image(
    image: Tensor, mode: str = "image", statistics: ChannelStatistics | None = None
) -> Tensor:
    """Normalize a ``(C, H, W)`` image (or ``(C, D, H, W)`` volume) already in [0, 1].

    Args:
        image: The image.
        mode: ``'dataset'`` subtracts the training split's per-channel mean and divides
            by its std (``statistics``): colour and brightness differences between images
            are kept. ``'image'`` standardizes each channel to zero mean and unit variance
            over the image itself (robust to microscope brightness changes, but blind to
            colour and brightness); ``'unit'`` keeps [0, 1].
        statistics: The training split's statistics, for ``'dataset'``.
    """
    if mode == "unit":
        return image
    if mode == "dataset":
        if statistics is None:
            raise ValueError(
                "normalization 'dataset' needs the training split's channel statistics "
                "(ChannelStatistics); pass them, or use normalization 'image' or 'unit'"
            )
        if len(statistics.mean) != image.shape[0]:
            raise ValueError(
                f"image of shape {tuple(image.shape)} has {image.shape[0]} channel(s) but the "
                f"normalization statistics have {len(statistics.mean)}; use images with the "
                "channels the model was trained on"
            )
        view = (-1,) + (1,) * (image.dim() - 1)
        mean = torch.tensor(statistics.mean, dtype=image.dtype).view(view)
        std = torch.tensor(statistics.std, dtype=image.dtype).view(view)
        return (image - mean) / std
    if mode != "image":
        raise ValueError(f"unknown normalization {mode!r}; choose from {', '.join(NORMALIZATIONS)}")
    spatial = tuple(range(1, image.dim()))
    mean = image.mean(dim=spatial, keepdim=True)
    std = image.std(dim=spatial, keepdim=True, correction=0)
    return (image - mean) / (std + 1e-6)
