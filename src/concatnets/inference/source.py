"""Model input read from a stored image one region at a time.

:class:`ImageSource` keeps the image as stored (uint8: one byte per pixel and channel)
and converts only the region a tile needs to the normalized float input the model was
trained on; per-image normalization statistics are gathered once, band by band. So
tiled prediction never holds a float copy of the whole image.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from concatnets.data.datasets import load_input_tensor
from concatnets.data.io import to_float_image
from concatnets.data.transforms import ChannelStatistics, match_channels
from concatnets.inference.tiling import TensorSource, TileSource

__all__ = ["ImageSource", "image_source"]

_STREAMED_NORMALIZATIONS = ("dataset", "image", "unit")
_BAND_VALUES = 1 << 20  # values converted at once while gathering statistics (~20 MB)
_EPSILON = 1e-6  # as concatnets.data.transforms.normalize_image


def _streamable(array: np.ndarray) -> bool:
    """Dtypes whose float conversion is per pixel: bools, floats and integers (whose
    scale is fixed by their type, :func:`~concatnets.data.io.integer_full_scale`)."""
    return (
        array.dtype == np.bool_
        or np.issubdtype(array.dtype, np.integer)
        or np.issubdtype(array.dtype, np.floating)
    )


class ImageSource:
    """A :class:`~concatnets.inference.tiling.TileSource` over a stored image.

    Args:
        array: ``(H, W)`` / ``(H, W, 3)`` image or ``(D, H, W)`` / ``(D, H, W, C)`` volume
            as read from disk (a memory map works too); integer, bool or float.
        channels: Channels the model takes.
        normalization: ``'dataset'`` (the training split's ``statistics``), ``'image'``
            (each channel standardized over the whole image) or ``'unit'``.
        spatial_dims: 2 for images, 3 for volumes.
        statistics: The training split's channel statistics, for ``'dataset'``.
    """

    def __init__(
        self,
        array: np.ndarray,
        channels: int,
        normalization: str,
        spatial_dims: int = 2,
        statistics: ChannelStatistics | None = None,
    ) -> None:
        if normalization not in _STREAMED_NORMALIZATIONS or not _streamable(array):
            raise ValueError(
                f"ImageSource reads {', '.join(_STREAMED_NORMALIZATIONS)} normalization of "
                f"integer, bool or float images, not {normalization!r} of {array.dtype}; "
                "use image_source(), which falls back to converting the whole image"
            )
        self.array = array
        self.channels = channels
        self.spatial_dims = spatial_dims
        self.shift: Tensor | None = None
        self.scale: Tensor | None = None
        if normalization == "image":
            self.shift, self.scale = self._channel_statistics()
        elif normalization == "dataset":
            self.shift, self.scale = self._saved_statistics(statistics)

    @property
    def spatial(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.array.shape[: self.spatial_dims])

    def _convert(self, region: tuple[slice, ...]) -> Tensor:
        part = match_channels(np.asarray(self.array[region]), self.channels, self.spatial_dims)
        return torch.from_numpy(to_float_image(part, self.spatial_dims))  # (C, *region)

    def _channel_statistics(self) -> tuple[Tensor, Tensor]:
        """Per-channel mean and population std over the image, gathered band by band."""
        spatial = self.spatial
        per_row = int(np.prod(spatial[1:])) * self.channels
        step = max(1, _BAND_VALUES // max(per_row, 1))
        total = torch.zeros(self.channels, dtype=torch.float64)
        squares = torch.zeros(self.channels, dtype=torch.float64)
        for first in range(0, spatial[0], step):
            band = self._convert((slice(first, first + step),)).double()
            flat = band.reshape(band.shape[0], -1)
            total += flat.sum(1)
            squares += flat.square().sum(1)
        count = float(np.prod(spatial))
        mean = total / count
        std = (squares / count - mean.square()).clamp_min(0).sqrt()
        shape = (self.channels,) + (1,) * self.spatial_dims
        return mean.float().reshape(shape), (std + _EPSILON).float().reshape(shape)

    def _saved_statistics(self, statistics: ChannelStatistics | None) -> tuple[Tensor, Tensor]:
        """The training split's mean and std, shaped to broadcast over a tile."""
        if statistics is None:
            raise ValueError(
                "normalization 'dataset' needs the training split's channel statistics "
                "(ChannelStatistics); pass them, or use normalization 'image' or 'unit'"
            )
        if len(statistics.mean) != self.channels:
            raise ValueError(
                f"the model takes {self.channels} channel(s) but the normalization statistics "
                f"have {len(statistics.mean)}; use the statistics of the run the model came from"
            )
        shape = (self.channels,) + (1,) * self.spatial_dims
        mean = torch.tensor(statistics.mean, dtype=torch.float32).reshape(shape)
        std = torch.tensor(statistics.std, dtype=torch.float32).reshape(shape)
        return mean, std

    def read(self, region: tuple[slice, ...]) -> Tensor:
        tile = self._convert(region)
        if self.shift is not None and self.scale is not None:
            tile = (tile - self.shift) / self.scale
        return tile


def image_source(
    array: np.ndarray,
    channels: int,
    normalization: str,
    spatial_dims: int = 2,
    statistics: ChannelStatistics | None = None,
) -> TileSource:
    """An :class:`ImageSource` where the image's dtype and normalization allow, otherwise
    the whole image converted at once (as :func:`~concatnets.data.datasets.load_input_tensor`).

    Args:
        array: The image as read from disk.
        channels: Channels the model takes.
        normalization: The run's input normalization.
        spatial_dims: 2 for images, 3 for volumes.
        statistics: The training split's channel statistics, for ``'dataset'``.
    """
    if normalization in _STREAMED_NORMALIZATIONS and _streamable(array):
        return ImageSource(array, channels, normalization, spatial_dims, statistics)
    return TensorSource(load_input_tensor(array, channels, normalization, spatial_dims, statistics))
