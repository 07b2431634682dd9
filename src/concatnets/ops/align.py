"""Make skip connections fit: crop or pad ``(N, C, *spatial)`` feature maps to a common size.

A U-Net decoder concatenates an upsampled map with the encoder's map of the same level,
and the two differ in size whenever valid convolutions shrink the maps (the original
U-Net, Ronneberger et al. 2015, crops the encoder's map) or the input size is not
divisible by ``2**depth`` (modern same-padded U-Nets pad the decoder's map).

Where a size difference is odd, both directions put the extra pixel at the end: a crop
starts at ``floor((in - out) / 2)`` as the original U-Net's crop does, and a pad puts
``floor(diff / 2)`` before and the rest after. Cropping a padded map back therefore
recovers the original exactly. Everything works on torch tensors (with autograd) and on
numpy arrays, for any number of spatial dimensions (1-D, 2-D, 3-D, ...).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "PadMode",
    "center_crop_to",
    "crop_or_pad_to",
    "crop_slices",
    "pad_to",
    "padding_amounts",
]

PadMode = Literal["constant", "reflect", "replicate", "circular"]
FeatureMap = TypeVar("FeatureMap", torch.Tensor, np.ndarray)
# A map whose shape[2:] is the target size, or the target spatial size itself.
Reference = torch.Tensor | np.ndarray | Sequence[int]

_PAD_MODES: tuple[str, ...] = ("constant", "reflect", "replicate", "circular")
_NUMPY_PAD_MODES = {
    "constant": "constant",
    "reflect": "reflect",
    "replicate": "edge",
    "circular": "wrap",
}
# torch implements reflect/replicate/circular padding for 1, 2 and 3 trailing dims only.
_MAX_TORCH_NONCONSTANT_SPATIAL_DIMS = 3


def _check_sizes_match_in_length(in_size: Sequence[int], out_size: Sequence[int], who: str) -> None:
    if len(in_size) != len(out_size):
        raise ValueError(
            f"{who}: in_size {tuple(in_size)} and out_size {tuple(out_size)} have different "
            "numbers of dimensions; give one size per spatial dimension for both."
        )


def crop_slices(in_size: Sequence[int], out_size: Sequence[int]) -> tuple[slice, ...]:
    """Slices that centre-crop each spatial dimension from ``in_size`` to ``out_size``.

    The crop starts at ``(in - out) // 2``, so an odd extra pixel is dropped at the end.
    Apply to an ``(N, C, *spatial)`` map as ``x[(..., *crop_slices(in_size, out_size))]``.

    Args:
        in_size: spatial size of the map to crop.
        out_size: spatial size wanted; no larger than ``in_size`` in any dimension.

    Examples:
        >>> crop_slices((5, 4), (2, 4))
        (slice(1, 3, None), slice(0, 4, None))
    """
    return _crop_slices(in_size, out_size, "crop_slices")


def _crop_slices(in_size: Sequence[int], out_size: Sequence[int], who: str) -> tuple[slice, ...]:
    _check_sizes_match_in_length(in_size, out_size, who)
    slices = []
    for dim, (size, target) in enumerate(zip(in_size, out_size, strict=True)):
        if size < target:
            raise ValueError(
                f"{who}: spatial dimension {dim} (dimension {dim + 2} of an (N, C, *spatial) "
                f"map) has size {size}, smaller than the target {target}, and a crop cannot "
                "enlarge it; pad instead with concatnets.pad_to(x, reference), or use "
                "crop_or_pad_to to crop and pad as needed."
            )
        start = (size - target) // 2
        slices.append(slice(start, start + target))
    return tuple(slices)


def padding_amounts(in_size: Sequence[int], out_size: Sequence[int]) -> list[tuple[int, int]]:
    """``(before, after)`` padding per spatial dimension to grow ``in_size`` to ``out_size``.

    The difference is split as evenly as possible; an odd extra pixel goes after.

    Args:
        in_size: spatial size of the map to pad.
        out_size: spatial size wanted; no smaller than ``in_size`` in any dimension.

    Examples:
        >>> padding_amounts((5, 4), (8, 4))
        [(1, 2), (0, 0)]
    """
    return _padding_amounts(in_size, out_size, "padding_amounts")


def _padding_amounts(
    in_size: Sequence[int], out_size: Sequence[int], who: str
) -> list[tuple[int, int]]:
    _check_sizes_match_in_length(in_size, out_size, who)
    amounts = []
    for dim, (size, target) in enumerate(zip(in_size, out_size, strict=True)):
        if size > target:
            raise ValueError(
                f"{who}: spatial dimension {dim} (dimension {dim + 2} of an (N, C, *spatial) "
                f"map) has size {size}, larger than the target {target}, and padding cannot "
                "shrink it; crop instead with concatnets.center_crop_to(x, reference), or use "
                "crop_or_pad_to to crop and pad as needed."
            )
        total = target - size
        amounts.append((total // 2, total - total // 2))
    return amounts


def _spatial_size(x: object, who: str) -> tuple[int, ...]:
    shape = getattr(x, "shape", None)
    if not isinstance(x, (torch.Tensor, np.ndarray)) or shape is None:
        raise TypeError(
            f"{who}: x must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}; "
            "convert it with torch.as_tensor(x)."
        )
    if len(shape) < 3:
        raise ValueError(
            f"{who}: x must be an (N, C, *spatial) map with at least one spatial dimension, "
            f"got shape {tuple(shape)}; add the missing batch/channel dimensions, e.g. "
            "x[None] or x[None, None]."
        )
    return tuple(shape[2:])


def _target_size(reference: object, spatial_dims: int, who: str) -> tuple[int, ...]:
    """The spatial size ``reference`` stands for: a map's ``shape[2:]`` or the ints given."""
    if isinstance(reference, (torch.Tensor, np.ndarray)):
        if reference.ndim != spatial_dims + 2:
            raise ValueError(
                f"{who}: reference has shape {tuple(reference.shape)} but x has "
                f"{spatial_dims} spatial dimension(s), so reference must be "
                f"{spatial_dims + 2}-D (N, C, *spatial); pass its spatial size instead, e.g. "
                f"reference.shape[-{spatial_dims}:]."
            )
        return tuple(int(size) for size in reference.shape[2:])
    try:
        size = tuple(operator.index(extent) for extent in reference)  # type: ignore[attr-defined]
    except TypeError:
        raise TypeError(
            f"{who}: reference must be a tensor, an array or a sequence of ints (the spatial "
            f"size), got {reference!r}."
        ) from None
    if len(size) != spatial_dims:
        raise ValueError(
            f"{who}: reference size {size} has {len(size)} entries but x has {spatial_dims} "
            f"spatial dimension(s); pass only the spatial size (e.g. ref.shape[2:]) or the "
            "reference map itself."
        )
    if any(extent < 0 for extent in size):
        raise ValueError(f"{who}: reference size {size} has a negative entry; sizes are >= 0.")
    return size


def center_crop_to(x: FeatureMap, reference: Reference) -> FeatureMap:
    """Centre-crop the spatial dimensions of ``x`` to the spatial size of ``reference``.

    Args:
        x: ``(N, C, *spatial)`` tensor or array.
        reference: a map whose ``shape[2:]`` is the target, or the target spatial size.

    Returns:
        A view of ``x`` (no copy); gradients flow through it.

    Examples:
        >>> x = torch.arange(10).reshape(1, 1, 10)
        >>> center_crop_to(x, (7,))
        tensor([[[1, 2, 3, 4, 5, 6, 7]]])
    """
    in_size = _spatial_size(x, "center_crop_to")
    out_size = _target_size(reference, len(in_size), "center_crop_to")
    return x[(..., *_crop_slices(in_size, out_size, "center_crop_to"))]


def _check_pad_mode(
    mode: str, in_size: Sequence[int], amounts: Sequence[tuple[int, int]], who: str
) -> None:
    if mode not in _PAD_MODES:
        raise ValueError(f"{who}: mode must be one of {_PAD_MODES}, got {mode!r}.")
    if mode == "constant":
        return
    for dim, (size, (before, after)) in enumerate(zip(in_size, amounts, strict=True)):
        widest = max(before, after)
        if widest == 0:
            continue
        if mode == "reflect" and widest >= size:
            raise ValueError(
                f"{who}: mode='reflect' needs every pad smaller than the size it reflects, but "
                f"spatial dimension {dim} has size {size} and needs a pad of {widest}; use "
                "mode='replicate' or 'constant', or pad in several smaller steps."
            )
        if mode == "circular" and widest > size:
            raise ValueError(
                f"{who}: mode='circular' can wrap around at most once, but spatial dimension "
                f"{dim} has size {size} and needs a pad of {widest}; use mode='replicate' or "
                "'constant'."
            )
        if mode == "replicate" and size == 0:
            raise ValueError(
                f"{who}: mode='replicate' has nothing to repeat in spatial dimension {dim}, "
                "which is empty; use mode='constant'."
            )


def _pad(
    x: FeatureMap, amounts: list[tuple[int, int]], mode: str, value: float, who: str
) -> FeatureMap:
    if isinstance(x, np.ndarray):
        widths = [(0, 0), (0, 0), *amounts]
        if mode == "constant":
            return np.pad(x, widths, mode="constant", constant_values=value)
        return np.pad(x, widths, mode=_NUMPY_PAD_MODES[mode])
    if mode != "constant" and len(amounts) > _MAX_TORCH_NONCONSTANT_SPATIAL_DIMS:
        raise ValueError(
            f"{who}: torch supports mode={mode!r} for 1 to 3 spatial dimensions, but x has "
            f"{len(amounts)}; use mode='constant'."
        )
    # F.pad lists (before, after) pairs starting from the last dimension.
    flat = [pad for pair in reversed(amounts) for pad in pair]
    if mode == "constant":
        return F.pad(x, flat, mode="constant", value=value)
    return F.pad(x, flat, mode=mode)


def pad_to(
    x: FeatureMap, reference: Reference, mode: PadMode = "constant", value: float = 0.0
) -> FeatureMap:
    """Pad the spatial dimensions of ``x`` up to the spatial size of ``reference``.

    Args:
        x: ``(N, C, *spatial)`` tensor or array.
        reference: a map whose ``shape[2:]`` is the target, or the target spatial size.
        mode: "constant" (fill with ``value``), "reflect", "replicate" or "circular".
        value: fill value for ``mode="constant"``.

    Returns:
        The padded map (``x`` itself when nothing needs padding); gradients flow through it.

    Examples:
        >>> x = torch.ones(1, 1, 2)
        >>> pad_to(x, (5,))
        tensor([[[0., 1., 1., 0., 0.]]])
    """
    in_size = _spatial_size(x, "pad_to")
    out_size = _target_size(reference, len(in_size), "pad_to")
    amounts = _padding_amounts(in_size, out_size, "pad_to")
    _check_pad_mode(mode, in_size, amounts, "pad_to")
    if all(before == after == 0 for before, after in amounts):
        return x
    return _pad(x, amounts, mode, value, "pad_to")


def crop_or_pad_to(
    x: FeatureMap, reference: Reference, mode: PadMode = "constant", value: float = 0.0
) -> FeatureMap:
    """Centre-crop dimensions that are too large and pad those that are too small.

    Args:
        x: ``(N, C, *spatial)`` tensor or array.
        reference: a map whose ``shape[2:]`` is the target, or the target spatial size.
        mode: padding mode, as in ``pad_to``.
        value: fill value for ``mode="constant"``.

    Examples:
        >>> crop_or_pad_to(torch.zeros(1, 1, 5, 2), (3, 4)).shape
        torch.Size([1, 1, 3, 4])
    """
    in_size = _spatial_size(x, "crop_or_pad_to")
    out_size = _target_size(reference, len(in_size), "crop_or_pad_to")
    cropped_size = tuple(min(size, target) for size, target in zip(in_size, out_size, strict=True))
    cropped = x[(..., *_crop_slices(in_size, cropped_size, "crop_or_pad_to"))]
    amounts = _padding_amounts(cropped_size, out_size, "crop_or_pad_to")
    _check_pad_mode(mode, cropped_size, amounts, "crop_or_pad_to")
    if all(before == after == 0 for before, after in amounts):
        return cropped
    return _pad(cropped, amounts, mode, value, "crop_or_pad_to")
