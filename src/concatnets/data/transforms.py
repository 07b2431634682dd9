"""Augmentations, size policies and normalization on ``(C, H, W)`` tensors.

Every random choice draws from a ``torch.Generator`` passed in by the caller, so a
sample's augmentation depends only on ``(seed, epoch, index)`` and not on worker count
or on whether training was resumed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
NORMALIZATIONS: tuple[str, ...] = ("image", "unit")


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
    neighbour so it keeps exactly its class values.

    Args:
        image: ``(C, H, W)`` float image.
        mask: ``(H, W)`` integer mask, or ``None``.
        generator: Source of randomness.
        sigma: Standard deviation of the displacements, in pixels.
        grid: Number of control points per side.
    """
    _, height, width = image.shape
    displacement = torch.randn((1, 2, grid, grid), generator=generator) * sigma
    field = F.interpolate(displacement, size=(height, width), mode="bicubic", align_corners=True)
    # Pixels -> normalized [-1, 1] coordinates (align_corners=True convention).
    scale = torch.tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)]).view(1, 2, 1, 1)
    offsets = (field * scale).permute(0, 2, 3, 1)  # (1, H, W, 2) as (x, y)
    ys = torch.linspace(-1.0, 1.0, height)
    xs = torch.linspace(-1.0, 1.0, width)
    base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]  # (1, H, W, 2)
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
        """Augment ``image`` (``(C, H, W)``) and ``mask`` (``(H, W)``) the same way."""
        # Draw every random number, used or not, so each choice has a fixed stream position.
        draws = torch.rand(4, generator=generator)
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
        if "elastic" in self.names and draws[3] < self.elastic_probability:
            image, mask = elastic_deform(
                image, mask, generator, self.elastic_sigma, self.elastic_grid
            )
        return image.contiguous(), None if mask is None else mask.contiguous()


@dataclass(frozen=True)
class SizePolicy:
    """Bring every sample to one ``(height, width)`` so samples can be batched.

    ``resize`` rescales (image bilinear, mask nearest); ``pad`` pads up to the size
    (image with zeros, mask with :data:`IGNORE_INDEX`) and crops larger images;
    ``crop`` takes a random patch in training and the centre patch otherwise, padding
    smaller images first.

    Args:
        mode: One of :data:`SIZE_POLICIES`.
        size: Target ``(height, width)``.
    """

    mode: str
    size: tuple[int, int]

    def __post_init__(self) -> None:
        if self.mode not in SIZE_POLICIES:
            raise ValueError(
                f"unknown size policy {self.mode!r}; choose from {', '.join(SIZE_POLICIES)}"
            )

    def __call__(
        self,
        image: Tensor,
        mask: Tensor | None,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor | None]:
        """Apply the policy; ``generator=None`` makes crops central (validation)."""
        height, width = self.size
        if tuple(image.shape[-2:]) == (height, width):
            return image, mask
        if self.mode == "resize":
            resized = F.interpolate(
                image[None].float(),
                size=(height, width),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )[0].to(image.dtype)
            if mask is None:
                return resized, None
            small = F.interpolate(mask[None, None].float(), size=(height, width), mode="nearest")
            return resized, small[0, 0].to(mask.dtype)
        image, mask = self._pad(image, mask)
        return self._crop(image, mask, generator if self.mode == "crop" else None)

    def _pad(self, image: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        height, width = self.size
        extra_h = max(0, height - image.shape[-2])
        extra_w = max(0, width - image.shape[-1])
        if not extra_h and not extra_w:
            return image, mask
        padding = (extra_w // 2, extra_w - extra_w // 2, extra_h // 2, extra_h - extra_h // 2)
        image = F.pad(image, padding, value=0.0)
        if mask is not None:
            mask = F.pad(mask, padding, value=IGNORE_INDEX)
        return image, mask

    def _crop(
        self, image: Tensor, mask: Tensor | None, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor | None]:
        height, width = self.size
        spare_h, spare_w = image.shape[-2] - height, image.shape[-1] - width
        if generator is None:
            top, left = spare_h // 2, spare_w // 2
        else:
            top = int(torch.randint(spare_h + 1, (1,), generator=generator))
            left = int(torch.randint(spare_w + 1, (1,), generator=generator))
        image = image[..., top : top + height, left : left + width]
        if mask is not None:
            mask = mask[top : top + height, left : left + width]
        return image, mask


def match_channels(array: np.ndarray, channels: int) -> np.ndarray:
    """Convert an ``(H, W)`` or ``(H, W, 3)`` image to ``channels`` (1 or 3) channels.

    Grayscale is repeated to RGB; RGB becomes grayscale by ITU-R 601 luma weights.

    Args:
        array: The image.
        channels: 1 or 3.
    """
    if channels == 1 and array.ndim == 3:
        weights = np.array([0.299, 0.587, 0.114], dtype=np.float64)
        grey = array[..., :3].astype(np.float64) @ weights
        return (
            grey.astype(array.dtype)
            if np.issubdtype(array.dtype, np.floating)
            else (np.clip(np.round(grey), 0, np.iinfo(array.dtype).max).astype(array.dtype))
        )
    if channels == 3 and array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=-1)
    return array


def normalize_image(image: Tensor, mode: str = "image") -> Tensor:
    """Normalize a ``(C, H, W)`` image already scaled to [0, 1].

    Args:
        image: The image.
        mode: ``'image'`` standardizes each channel to zero mean and unit variance
            over the image (robust to microscope brightness changes); ``'unit'``
            keeps [0, 1].
    """
    if mode == "unit":
        return image
    if mode != "image":
        raise ValueError(f"unknown normalization {mode!r}; choose from {', '.join(NORMALIZATIONS)}")
    mean = image.mean(dim=(-2, -1), keepdim=True)
    std = image.std(dim=(-2, -1), keepdim=True, correction=0)
    return (image - mean) / (std + 1e-6)
