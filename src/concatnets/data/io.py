"""Reading and writing images and masks: PNG, JPEG, TIFF (via Pillow) and NumPy ``.npy``.

2-D images are ``(H, W)`` or ``(H, W, C)``. 3-D volumes are ``.npy`` files holding
``(D, H, W)`` (one channel) or ``(D, H, W, C)``: channels last, as for images. A 3-D
array whose last axis has 1, 3 or 4 entries is an ``(H, W, C)`` image; save a volume
that thin as ``(D, H, W, 1)``.

A file that cannot be decoded (empty, truncated, not an image, a pickled ``.npy``) raises
a one-line :class:`ValueError` naming the file and the fix. ``.npy`` files are read with
``allow_pickle=False``, so reading never runs code from a file.

Pillow images above :func:`max_image_pixels` (by default Pillow's own refusal threshold,
about 179 megapixels) are refused before any pixel is decoded, with a one-line error
naming the file, its size, the limit and how to raise it: the environment variable
``CONCATNETS_MAX_IMAGE_PIXELS`` (a pixel count, or ``0`` for no limit). This guards
against decompression bombs, e.g. a small 1-bit PNG that decodes to 30000 x 30000 pixels.
Uncompressed TIFFs above the limit (or that Pillow cannot open, e.g. BigTIFF) are
memory-mapped through the optional ``tifffile`` package instead, when it is installed.

Integer pixels are scaled by a rule fixed by their type, never by an image's own values
(:func:`integer_full_scale`): 8-bit types by 255, every wider type by 65535, sign kept.
A file's declared sample depth is kept: a 16-bit PNG that Pillow < 10.3 opens as a
32-bit ``"I"`` image is read back as the uint16 it stores. Integers wider than 16 bits
(int32 ``.npy``, 32-bit TIFF) declare no depth and must hold 16-bit values
(``|v| <= 65535``); other values are refused with an error naming the file and the fix.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS_ENV",
    "MAX_VOLUME_CHANNELS",
    "ImageInfo",
    "PixelLimitError",
    "array_spatial_dims",
    "check_integer_range",
    "integer_full_scale",
    "is_image_file",
    "list_image_files",
    "max_image_pixels",
    "probe_image",
    "read_image",
    "read_mask",
    "to_float_image",
    "write_mask_png",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy")
MAX_VOLUME_CHANNELS = 16
"""Most channels a ``(D, H, W, C)`` volume may have (more looks like channels first)."""
_IMAGE_CHANNEL_COUNTS = (1, 3, 4)
_TIFF_SUFFIXES = (".tif", ".tiff")
MAX_IMAGE_PIXELS_ENV = "CONCATNETS_MAX_IMAGE_PIXELS"
"""Environment variable raising (or, with ``0``, lifting) the pixel limit of images."""
# What Pillow and numpy raise for files they cannot decode.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error)


def _unreadable(path: Path, exc: BaseException) -> ValueError:
    text = str(exc).strip()
    reason = text.splitlines()[0] if text else type(exc).__name__
    if "allow_pickle" in text:
        reason = "it holds pickled Python objects, which are never loaded"
    if len(reason) > 120:
        reason = reason[:117] + "..."
    return ValueError(
        f"{path}: cannot read this file ({reason}); it is corrupt, truncated or not an "
        "image: replace it or move it out of the data folder"
    )


class PixelLimitError(ValueError):
    """An image has more pixels than :func:`max_image_pixels` allows, or the limit is no number."""


def max_image_pixels() -> int | None:
    """Most pixels an image file may decode to; ``None`` when there is no limit.

    ``CONCATNETS_MAX_IMAGE_PIXELS`` when set (``0`` lifts the limit), otherwise the count
    above which Pillow refuses an image as a decompression bomb (twice
    ``PIL.Image.MAX_IMAGE_PIXELS``).
    """
    text = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip().replace("_", "")
    if not text:
        pillow = Image.MAX_IMAGE_PIXELS
        return None if pillow is None else 2 * int(pillow)
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise PixelLimitError(
            f"{MAX_IMAGE_PIXELS_ENV}={os.environ[MAX_IMAGE_PIXELS_ENV]!r} is not a pixel "
            "count; set it to a whole number such as 1000000000, or 0 for no limit"
        )
    return value or None


def _tifffile() -> Any:
    """The optional ``tifffile`` module, or ``None`` when it is not installed."""
    try:
        import tifffile
    except ImportError:
        return None
    return tifffile


def _tiff_hint(path: Path) -> str:
    if path.suffix.lower() not in _TIFF_SUFFIXES:
        return ""
    if _tifffile() is None:
        return "; or install tifffile (pip install tifffile) to memory-map uncompressed TIFFs"
    return "; or save it as an uncompressed TIFF, which is memory-mapped at any size"


def _too_many_pixels(path: Path, width: int, height: int, limit: int) -> PixelLimitError:
    return PixelLimitError(
        f"{path}: {width} x {height} = {width * height:,} pixels is above the limit of "
        f"{limit:,} pixels that guards against decompression bombs; if you trust the file, "
        f"raise it, e.g. {MAX_IMAGE_PIXELS_ENV}={width * height} (0 for no limit)"
        + _tiff_hint(path)
    )


def _tiff_memmap(path: Path) -> np.ndarray | None:
    """An uncompressed TIFF's image memory-mapped by the optional ``tifffile``, else ``None``.

    Its pixels are the file's bytes, so it cannot be a decompression bomb and is read
    only where used (a tile at a time in ``predict``), whatever its size.
    """
    tifffile = _tifffile()
    if tifffile is None or path.suffix.lower() not in _TIFF_SUFFIXES:
        return None
    try:
        array = tifffile.memmap(path, mode="r")
    except (*_DECODE_ERRORS, TypeError, KeyError):  # compressed or not contiguous
        return None
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in _IMAGE_CHANNEL_COUNTS):
        return array
    return None


def _tiff_instead(path: Path, exc: BaseException) -> np.ndarray:
    """The TIFF memory map to use where Pillow refused ``path`` with ``exc``; re-raises a
    pixel-limit refusal, and any other error as unreadable, when there is none."""
    mapped = _tiff_memmap(path)
    if mapped is not None:
        return mapped
    if isinstance(exc, PixelLimitError):
        raise exc
    raise _unreadable(path, exc) from exc


@contextlib.contextmanager
def _open_pillow(path: Path) -> Iterator[Image.Image]:
    """``Image.open`` with :func:`max_image_pixels` checked on the header, before decoding.

    Pillow's own check is switched off while the file opens (it would raise a bare
    ``DecompressionBombError``, or warn, at its fixed limit): ours replaces it.
    """
    limit = max_image_pixels()
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        image = Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    with image:
        width, height = image.size
        if limit is not None and width * height > limit:
            raise _too_many_pixels(path, width, height, limit)
        yield image


@dataclass(frozen=True)
class ImageInfo:
    """Size and channel count of an image file, read without decoding its pixels.

    Args:
        height: Rows.
        width: Columns.
        channels: 1 for grayscale, 3 for colour; any count up to
            :data:`MAX_VOLUME_CHANNELS` for volumes.
        depth: Slices of a 3-D volume, ``None`` for a 2-D image.
    """

    height: int
    width: int
    channels: int
    depth: int | None = None

    @property
    def spatial_dims(self) -> int:
        """2 for an image, 3 for a volume."""
        return 2 if self.depth is None else 3

    @property
    def size(self) -> tuple[int, ...]:
        """``(height, width)``, or ``(depth, height, width)`` for a volume."""
        if self.depth is None:
            return (self.height, self.width)
        return (self.depth, self.height, self.width)


def is_image_file(path: Path) -> bool:
    """True when ``path`` is a file with a supported image extension."""
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def list_image_files(directory: Path) -> list[Path]:
    """Supported image files directly inside ``directory``, sorted by name."""
    return sorted(p for p in directory.iterdir() if is_image_file(p) and not p.name.startswith("."))


def array_spatial_dims(shape: tuple[int, ...]) -> int:
    """2 for an ``(H, W)`` / ``(H, W, C<=4)`` image shape, 3 for a volume shape.

    Args:
        shape: Shape of an array as stored (channels last).
    """
    if len(shape) == 2 or (len(shape) == 3 and shape[-1] in _IMAGE_CHANNEL_COUNTS):
        return 2
    return 3


def _channels_of_array(array: np.ndarray, path: Path) -> int:
    shape = tuple(int(v) for v in array.shape)
    if len(shape) == 2:
        return 1
    if len(shape) == 3:
        if shape[-1] in _IMAGE_CHANNEL_COUNTS:
            return 1 if shape[-1] == 1 else 3
        return 1  # (D, H, W) volume
    if len(shape) == 4 and shape[-1] <= MAX_VOLUME_CHANNELS:
        return shape[-1]
    if len(shape) == 4:
        raise ValueError(
            f"{path}: volume of shape {shape} has {shape[-1]} channels on its last axis; "
            "volumes are (D, H, W) or (D, H, W, C) with channels last: for a channels-first "
            "(C, D, H, W) array save np.moveaxis(volume, 0, -1)"
        )
    raise ValueError(
        f"{path}: array of shape {shape} is not an image or volume; save 2-D images as "
        "(H, W) or (H, W, C) with C in 1, 3 or 4, and 3-D volumes as (D, H, W) or (D, H, W, C)"
    )


def probe_image(path: Path) -> ImageInfo:
    """Read the size and channel count of ``path`` from its header.

    Pillow formats are also checked with ``Image.verify`` (chunk checksums of PNGs, a
    truncated file), which reads the file without decoding its pixels.

    Args:
        path: A PNG, JPEG, TIFF or ``.npy`` file.
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        else:
            with _open_pillow(path) as image:
                width, height = image.size
                colour = image.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX")
                image.verify()
            return ImageInfo(height, width, 3 if colour else 1)
    except (PixelLimitError, *_DECODE_ERRORS) as exc:
        array = _tiff_instead(path, exc)
    channels = _channels_of_array(array, path)
    shape = tuple(int(v) for v in array.shape)
    if array_spatial_dims(shape) == 3:
        return ImageInfo(shape[1], shape[2], channels, depth=shape[0])
    return ImageInfo(shape[0], shape[1], channels)


def _read_raw(path: Path, mmap: bool = False) -> np.ndarray:
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise ValueError(
            f"{path}: unsupported file type {path.suffix!r}; "
            f"use one of {', '.join(IMAGE_EXTENSIONS)}"
        )
    try:
        if path.suffix.lower() == ".npy":
            if mmap:
                return np.load(path, mmap_mode="r", allow_pickle=False)
            return np.asarray(np.load(path, allow_pickle=False))
        with _open_pillow(path) as image:
            rawmode = _declared_rawmode(image)
            image.load()
            return _pil_to_array(image, rawmode)
    except PixelLimitError:
        raise
    except _DECODE_ERRORS as exc:
        raise _unreadable(path, exc) from exc


def _declared_rawmode(image: Image.Image) -> str | None:
    """The raw mode in which the file stores its samples (``'I;16B'`` for a 16-bit PNG),
    known until the image is loaded; ``None`` where Pillow does not say."""
    tile = getattr(image, "tile", None) or ()
    if not tile or len(tile[0]) < 4:
        return None
    args = tile[0][3]
    if isinstance(args, tuple):
        args = args[0] if args else None
    return args if isinstance(args, str) else None


def _declared_dtype(mode: str, rawmode: str | None) -> np.dtype | None:
    """The dtype a Pillow image of ``mode`` decoded from ``rawmode`` samples stores.

    Pillow widens 8- and 16-bit samples to 32-bit ``"I"`` images (16-bit PNGs before
    Pillow 10.3): their declared depth, not the values, sets the scale.
    """
    if mode.startswith("I;16"):
        return np.dtype(np.uint16)
    if mode != "I" or rawmode is None:
        return None
    signed = rawmode.endswith("S")
    if rawmode.startswith("I;16"):
        return np.dtype(np.int16 if signed else np.uint16)
    if rawmode.startswith("I;8"):
        return np.dtype(np.int8 if signed else np.uint8)
    return None


def _pil_to_array(image: Image.Image, rawmode: str | None = None) -> np.ndarray:
    if image.mode == "1":
        return np.asarray(image, dtype=np.uint8)
    declared = _declared_dtype(image.mode, rawmode)
    if declared is not None:
        return np.asarray(image).astype(declared)
    return np.asarray(image)


def read_image(path: Path, mmap: bool = False) -> np.ndarray:
    """Read an input image as ``(H, W)`` (grayscale) or ``(H, W, 3)`` (colour).

    Palette images become RGB, alpha channels are dropped and single-channel 3-D
    arrays are squeezed. The dtype is kept (uint8, uint16 or float; a file's declared
    sample depth rather than Pillow's 32-bit widening of it). A ``.npy``
    volume is returned as ``(D, H, W)`` (one channel) or ``(D, H, W, C)``.

    Args:
        path: A PNG, JPEG, TIFF or ``.npy`` file.
        mmap: Map a ``.npy`` file read-only instead of loading it, so that only the
            parts used are read (tiled prediction of large arrays).
    """
    path = Path(path)
    if path.suffix.lower() != ".npy":
        try:
            with _open_pillow(path) as image:
                rawmode = _declared_rawmode(image)
                image.load()
                if image.mode in ("P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBA"):
                    image = image.convert("RGB")
                elif image.mode in ("LA", "PA"):
                    image = image.convert("L")
                array = _pil_to_array(image, rawmode)
        except (PixelLimitError, *_DECODE_ERRORS) as exc:
            array = _tiff_instead(path, exc)
    else:
        array = _read_raw(path, mmap)
    _channels_of_array(array, path)
    check_integer_range(array, path)
    if array_spatial_dims(array.shape) == 3:
        return array[..., 0] if array.ndim == 4 and array.shape[-1] == 1 else array
    if array.ndim == 3:
        array = array[..., 0] if array.shape[-1] == 1 else array[..., :3]
    return array


def read_mask(path: Path, spatial_dims: int = 2) -> np.ndarray:
    """Read a label mask as a 2-D (or 3-D) integer array of raw stored values.

    Palette PNGs give their palette indices (the usual way to store class masks);
    colour masks are rejected because colours are not class indices.

    Args:
        path: A PNG, TIFF or ``.npy`` file holding one value per pixel.
        spatial_dims: 3 to read a ``(D, H, W)`` volume mask (a ``.npy`` file).
    """
    path = Path(path)
    array = _read_raw(path)
    if spatial_dims == 3:
        return _volume_mask(array, path)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3:
        channels = array[..., :3]
        if np.all(channels == channels[..., :1]):
            array = array[..., 0]
        else:
            raise ValueError(
                f"{path}: colour mask of shape {tuple(array.shape)}; store masks as one "
                "channel of class indices (grayscale or palette PNG, or a 2-D .npy)"
            )
    if array.ndim != 2:
        raise ValueError(f"{path}: mask has shape {tuple(array.shape)}; expected a 2-D (H, W) mask")
    return _integer_mask(array, path)


def _integer_mask(array: np.ndarray, path: Path) -> np.ndarray:
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise ValueError(
                f"{path}: mask holds non-integer values; store class indices as integers"
            )
        array = array.astype(np.int64)
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise ValueError(f"{path}: mask has dtype {array.dtype}; store class indices as integers")
    return array.astype(np.int64, copy=False)


def _volume_mask(array: np.ndarray, path: Path) -> np.ndarray:
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise ValueError(
            f"{path}: mask has shape {tuple(array.shape)} but its image is a 3-D volume; "
            "save volume masks as (D, H, W) integer .npy arrays"
        )
    return _integer_mask(array, path)


_FULL_SCALE_8_BIT = 255.0
_FULL_SCALE = 65535.0


def integer_full_scale(dtype: np.dtype) -> float:
    """The value that becomes 1.0 in :func:`to_float_image` for an integer ``dtype``.

    255 for 8-bit types, 65535 (the 16-bit full scale) for every wider one, signed or
    not: a property of the stored type, so every image of a dataset shares it.
    """
    return _FULL_SCALE_8_BIT if np.dtype(dtype).itemsize == 1 else _FULL_SCALE


def check_integer_range(array: np.ndarray, source: str | Path | None = None) -> None:
    """Refuse integers wider than 16 bits holding values beyond ``+-65535``.

    Such types (int32 ``.npy``, 32-bit TIFF) declare no bit depth, so they are read as
    16-bit samples (:func:`integer_full_scale`); larger values have no scale to read.

    Args:
        array: An image or volume as stored.
        source: The file (or sample) named in the error.
    """
    if array.dtype.kind not in "iu" or array.dtype.itemsize <= 2 or array.size == 0:
        return
    low, high = int(array.min()), int(array.max())
    if low >= -_FULL_SCALE and high <= _FULL_SCALE:
        return
    where = f"{source}: " if source is not None else ""
    raise ValueError(
        f"{where}{array.dtype} image holds values from {low} to {high}, beyond the 16-bit "
        "range (|value| <= 65535) that integer images wider than 16 bits are scaled by "
        "(65535 is 1.0); save it as float32 scaled as you want, e.g. "
        "np.save(path, (image / image_max).astype(np.float32)), or as uint16"
    )


def to_float_image(
    array: np.ndarray, spatial_dims: int = 2, source: str | Path | None = None
) -> np.ndarray:
    """Scale an image to float32 and lay it out as ``(C, H, W)``.

    Integers are divided by :func:`integer_full_scale` of their type (uint8 by 255,
    uint16 and wider by 65535; signed values keep their sign, so they land in
    [-1, 1]); bools become 0 and 1, float images are kept as they are. The scale never
    depends on the image's values, so images of one dataset are scaled alike.

    Args:
        array: ``(H, W)`` or ``(H, W, C)`` image; with ``spatial_dims=3`` a
            ``(D, H, W)`` or ``(D, H, W, C)`` volume, returned as ``(C, D, H, W)``.
        spatial_dims: 2 for images, 3 for volumes.
        source: The file named when integers wider than 16 bits are out of range
            (:func:`check_integer_range`).
    """
    if array.dtype == np.bool_:
        scaled = array.astype(np.float32)
    elif np.issubdtype(array.dtype, np.integer):
        check_integer_range(array, source)
        scaled = array.astype(np.float32) / integer_full_scale(array.dtype)
    else:
        scaled = array.astype(np.float32)
    if scaled.ndim == spatial_dims:
        return scaled[None]
    return np.ascontiguousarray(np.moveaxis(scaled, -1, 0))


def write_mask_png(path: Path, mask: np.ndarray) -> None:
    """Save a class-index mask as an 8-bit (or 16-bit when needed) grayscale PNG.

    Args:
        path: Destination ``.png``.
        mask: 2-D array of non-negative class indices.
    """
    mask = np.asarray(mask)
    if mask.max(initial=0) < 256:
        Image.fromarray(mask.astype(np.uint8)).save(path)
    else:
        Image.fromarray(mask.astype(np.uint16)).save(path)
