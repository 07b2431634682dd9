"""Checks of every training sample that can be made before the run folder is touched.

Opening a data folder reads each image's header and each mask's values; two faults only
show when a sample is decoded: a mask whose size differs from its image, and a float
image holding NaN or infinite values (which would make the loss NaN). Both are found
here, from mask headers and from the float files alone (``.npy`` and 32-bit float
TIFF: PNG and JPEG cannot hold NaN), so a refused run writes nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from concatnets.data.io import probe_image
from concatnets.data.sources import LabelledData, format_size

__all__ = ["check_samples"]

_TIFF = (".tif", ".tiff")


def _check_mask_sizes(data: LabelledData) -> None:
    assert data.mask_paths is not None
    for mask_path, size in zip(data.mask_paths, data.sizes, strict=True):
        info = probe_image(mask_path)
        if info.spatial_dims == data.spatial_dims and tuple(info.size) != tuple(size):
            raise ValueError(
                f"{mask_path}: mask is {format_size(info.size)} but its image is "
                f"{format_size(size)}; masks must match their images pixel for pixel"
            )


def _float_pixels(path: Path) -> np.ndarray | None:
    """The pixels of a float image file, or ``None`` for formats that cannot hold NaN."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        return array if np.issubdtype(array.dtype, np.floating) else None
    if suffix in _TIFF:
        with Image.open(path) as image:
            if image.mode != "F":
                return None
            image.load()
            return np.asarray(image)
    return None


def _check_finite_images(paths: list[Path]) -> None:
    for path in paths:
        pixels = _float_pixels(path)
        if pixels is not None and not np.isfinite(pixels).all():
            bad = int(np.size(pixels) - np.count_nonzero(np.isfinite(pixels)))
            raise ValueError(
                f"{path}: image holds {bad} NaN or infinite value(s), which would make the "
                "loss NaN; replace them (e.g. numpy.nan_to_num) or move the file out of the "
                "data folder"
            )


def check_samples(data: LabelledData) -> None:
    """Refuse data whose masks do not match their images or whose images hold NaN.

    Args:
        data: Opened training or validation data (built-in data passes at once).
    """
    if data.mask_paths is not None:
        _check_mask_sizes(data)
    if data.image_paths is not None:
        _check_finite_images(list(data.image_paths))
    if data.images is not None:
        for name, image in zip(data.names, data.images, strict=True):
            if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
                raise ValueError(f"sample {name} holds NaN or infinite values")
