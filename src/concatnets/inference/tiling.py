"""Overlap-tile inference for images too large to segment in one pass.

Ronneberger et al. 2015 (arXiv 1505.04597, Sec. 2 and Fig. 2) segment a large image
with a valid-convolution U-Net tile by tile: each output tile is predicted from a larger
input tile that carries the context the network's border needs, and the context missing
beyond the image border is extrapolated by mirroring. :func:`predict_tiled` does that for
valid-padding models and blends overlapping tiles for same-padding models.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from concatnets.models.unet import (
    check_valid_input_size,
    unet_input_size_for_output,
    unet_valid_margin,
)

__all__ = ["TensorSource", "TileSource", "iter_tiled_logits", "predict_tiled"]

_BLENDS = ("gaussian", "linear", "constant")
# nnU-Net (Isensee et al. 2021) weights tiles with a Gaussian of sigma = tile / 8.
_GAUSSIAN_SIGMA_FRACTION = 1 / 8


@dataclass(frozen=True)
class _AxisPlan:
    """How one spatial axis is cut into tiles.

    Tile ``k`` reads input ``[starts[k], starts[k] + tile)`` of the (mirror-padded) image
    and writes its output ``[0, keep)`` to result ``[starts[k], starts[k] + keep)``.
    """

    pad_before: int
    pad_after: int
    tile: int
    starts: tuple[int, ...]
    keep: int
    result_size: int


def _per_axis(value: int | Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
    values = (value,) * ndim if isinstance(value, int) else tuple(value)
    if len(values) != ndim or any(not isinstance(v, int) or isinstance(v, bool) for v in values):
        raise ValueError(
            f"{name} must be an int or {ndim} ints (one per spatial axis), got {value!r}"
        )
    return values


def _plan_valid_axis(size: int, tile: int, depth: int, dim: int) -> _AxisPlan:
    """Non-overlapping output tiles; stride a multiple of 2**depth so that every tile sees
    the pooling grid of whole-image inference and the stitched result equals it."""
    align = 2**depth
    margin = unet_valid_margin(depth)
    output = tile - 2 * margin
    stride = output - output % align
    if stride < align:
        smallest = unet_input_size_for_output(align, depth)[0]
        raise ValueError(
            f"tile_size {tile} in spatial dim {dim} is too small for a valid U-Net of depth "
            f"{depth}: its {output}-pixel output tile holds no 2**depth = {align}-aligned "
            f"step. Use tile_size >= {smallest}."
        )
    count = math.ceil(size / stride)
    padded = (count - 1) * stride + tile
    return _AxisPlan(
        pad_before=margin,
        pad_after=padded - size - margin,
        tile=tile,
        starts=tuple(k * stride for k in range(count)),
        keep=stride,
        result_size=count * stride,
    )


def _plan_same_axis(size: int, tile: int, overlap: int, align: int, dim: int) -> _AxisPlan:
    """Overlapping tiles at multiples of ``align`` over the image zero-padded at its far end
    to a multiple of ``align``, exactly as a same-padding UNet pads it internally; so every
    tile shares the pooling grid of whole-image inference and the image border's padding."""
    padded = -(-size // align) * align
    if padded <= tile:
        # One tile holding the whole axis: exactly whole-image inference along it.
        return _AxisPlan(0, padded - size, padded, (0,), padded, padded)
    if tile < align or tile % align:
        below = tile - tile % align
        choices = f"{below} or {below + align}" if below else f"{align} or larger"
        raise ValueError(
            f"tile_size {tile} in spatial dim {dim} must be a multiple of 2**depth = {align} "
            f"so tiles keep the model's pooling grid; use {choices}"
        )
    if not 0 <= overlap < tile:
        raise ValueError(
            f"overlap {overlap} in spatial dim {dim} must be in [0, tile_size = {tile})"
        )
    stride = max(align, (tile - overlap) // align * align)
    starts = (*range(0, padded - tile, stride), padded - tile)
    return _AxisPlan(0, padded - size, tile, starts, tile, padded)


def _reflect(positions: Tensor, size: int) -> Tensor:
    """Indices of a reflection (edge pixel not repeated) that may exceed the size itself,
    by reflecting again at each border (period 2 * (size - 1))."""
    if size == 1:
        return torch.zeros_like(positions)
    period = 2 * (size - 1)
    folded = positions.remainder(period)
    return torch.where(folded < size, folded, period - folded)


class TileSource(Protocol):
    """A ``(C, *spatial)`` model input read one region at a time.

    Lets :func:`iter_tiled_logits` predict images that are never held whole as float
    tensors: a region is converted and normalized only when a tile needs it.
    """

    @property
    def spatial(self) -> tuple[int, ...]:
        """The image's spatial size."""
        ...

    def read(self, region: tuple[slice, ...]) -> Tensor:
        """The ``(C, *region)`` model input of an in-bounds region (one slice per axis)."""
        ...


class TensorSource:
    """A :class:`TileSource` over a ``(C, *spatial)`` tensor already normalized."""

    def __init__(self, image: Tensor) -> None:
        self.image = image

    @property
    def spatial(self) -> tuple[int, ...]:
        return tuple(self.image.shape[1:])

    def read(self, region: tuple[slice, ...]) -> Tensor:
        return self.image[(slice(None), *region)]


def _read_tile(
    source: TileSource, plans: Sequence[_AxisPlan], origin: Sequence[int], valid: bool
) -> Tensor:
    """Tile ``origin`` of the padded image: mirrored past the border for valid models (the
    paper's Fig. 2), zeros for same-padding ones (as the model pads internally)."""
    spatial = source.spatial
    if valid:
        indices = [
            _reflect(torch.arange(o - p.pad_before, o - p.pad_before + p.tile), size)
            for o, p, size in zip(origin, plans, spatial, strict=True)
        ]
        lows = [int(i.min()) for i in indices]
        region = tuple(slice(lo, int(i.max()) + 1) for lo, i in zip(lows, indices, strict=True))
        tile = source.read(region)
        for axis, (index, low) in enumerate(zip(indices, lows, strict=True), start=1):
            if len(index) != tile.shape[axis] or int(index[0]) != low or index.diff().ne(1).any():
                tile = tile.index_select(axis, (index - low).to(tile.device))
        return tile
    region = tuple(
        slice(o, min(o + p.tile, size)) for o, p, size in zip(origin, plans, spatial, strict=True)
    )
    tile = source.read(region)
    pads = [
        amount
        for r, p in reversed(list(zip(region, plans, strict=True)))
        for amount in (0, p.tile - (r.stop - r.start))
    ]
    return F.pad(tile, pads) if any(pads) else tile


def _axis_weights(length: int, blend: str) -> Tensor:
    position = torch.arange(length, dtype=torch.float64) + 0.5
    if blend == "gaussian":
        sigma = length * _GAUSSIAN_SIGMA_FRACTION
        weights = torch.exp(-0.5 * ((position - length / 2) / sigma) ** 2)
    elif blend == "linear":
        weights = 1 - (2 * position / length - 1).abs()
    else:
        weights = torch.ones(length, dtype=torch.float64)
    # Strictly positive, so every pixel covered by some tile gets a finite weighted mean.
    return weights.clamp_min(1e-6)


def _tile_weights(lengths: Sequence[int], blend: str) -> Tensor:
    weights = torch.ones((), dtype=torch.float64)
    for length in lengths:
        weights = weights[..., None] * _axis_weights(length, blend)
    return weights.float()  # (*tile)


def _plans_for(
    model: nn.Module,
    spatial: tuple[int, ...],
    tile_size: int | Sequence[int],
    overlap: int | Sequence[int] | None,
) -> tuple[list[_AxisPlan], bool]:
    """How each axis is tiled, and whether the model is a valid-padding U-Net."""
    tiles = _per_axis(tile_size, len(spatial), "tile_size")
    depth = int(getattr(model, "depth", 0))
    if getattr(model, "padding", "same") == "valid":
        if overlap is not None:
            raise ValueError(
                "overlap must be None for a valid-padding model: its tiles overlap by "
                f"exactly the network border ({2 * unet_valid_margin(depth)} pixels); "
                "choose tile_size instead"
            )
        check_valid_input_size(tiles, depth)
        plans = [
            _plan_valid_axis(s, t, depth, dim)
            for dim, (s, t) in enumerate(zip(spatial, tiles, strict=True))
        ]
        return plans, True
    overlaps = _per_axis(
        [t // 4 for t in tiles] if overlap is None else overlap, len(spatial), "overlap"
    )
    plans = [
        _plan_same_axis(s, t, o, 2**depth, dim)
        for dim, (s, t, o) in enumerate(zip(spatial, tiles, overlaps, strict=True))
    ]
    return plans, False


def _chunks(items: list[tuple[int, ...]], size: int) -> Iterator[list[tuple[int, ...]]]:
    for first in range(0, len(items), size):
        yield items[first : first + size]


class _Band:
    """Weighted sums of tile logits over the rows (first spatial axis) that tiles still
    write to: ``rows`` result rows from ``start``, full width on the other axes."""

    def __init__(self, classes: int, rows: int, rest: Sequence[int], like: Tensor) -> None:
        self.start = 0
        self.sums = like.new_zeros((classes, rows, *rest))
        self.weights = like.new_zeros((1, rows, *rest))

    def add(self, origin: Sequence[int], logits: Tensor, weights: Tensor) -> None:
        """Add a kept ``(K, *keep)`` output tile whose result origin is ``origin``."""
        region = (origin[0] - self.start, *origin[1:])
        window = _window(region, logits.shape[1:])
        self.sums[(slice(None), *window)] += weights * logits
        self.weights[(slice(None), *window)] += weights

    def finish(self, rows: int) -> Tensor:
        """The blended logits of the first ``rows`` rows; the band moves on by ``rows``."""
        rows = min(rows, self.sums.shape[1])
        done = self.sums[:, :rows] / self.weights[:, :rows]
        kept = self.sums.shape[1] - rows
        for buffer in (self.sums, self.weights):
            buffer[:, :kept] = buffer[:, rows:].clone()
            buffer[:, kept:] = 0
        self.start += rows
        return done


def iter_tiled_logits(
    model: nn.Module,
    source: TileSource,
    *,
    tile_size: int | Sequence[int],
    overlap: int | Sequence[int] | None = None,
    batch_size: int = 4,
    progress: bool = False,
    blend: str = "gaussian",
) -> Iterator[tuple[int, Tensor]]:
    """Logits of one image, tile by tile, as bands of finished rows (first spatial axis).

    The tiling is that of :func:`predict_tiled`; only the rows that tiles still write to
    are held (one tile high, the image wide), so memory is bounded by the tile and the
    image's width, not its area. Consume each band as it comes, e.g. take its argmax.

    Args:
        model: As for :func:`predict_tiled`.
        source: The normalized ``(C, *spatial)`` input, read region by region.
        tile_size: As for :func:`predict_tiled`.
        overlap: As for :func:`predict_tiled`.
        batch_size: Tiles per forward pass.
        progress: Show a tqdm progress bar over batches (when stderr is a terminal).
        blend: As for :func:`predict_tiled`.

    Yields:
        ``(first_row, logits)`` with logits ``(num_classes, rows, *spatial[1:])`` on the
        CPU; the bands follow each other and cover the image.
    """
    if blend not in _BLENDS:
        raise ValueError(f"blend must be one of {', '.join(map(repr, _BLENDS))}, got {blend!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    spatial = tuple(source.spatial)
    plans, valid = _plans_for(model, spatial, tile_size, overlap)
    depth = int(getattr(model, "depth", 0))
    tile_lengths = [p.tile for p in plans]
    keep_lengths = [p.keep for p in plans]
    margin = unet_valid_margin(depth) if valid else 0
    expected_output = tuple(t - 2 * margin for t in tile_lengths)
    # Valid tiles do not overlap: weight one, so the blend is the tile's own output.
    weights = _tile_weights(keep_lengths, "constant" if valid else blend)
    model_device = next(iter(model.parameters()), torch.empty(0)).device
    kept = (slice(None), *(slice(0, n) for n in keep_lengths))
    rows = plans[0].starts
    total = sum(math.ceil(len(list(_row_jobs(r, plans))) / batch_size) for r in rows)
    bar = tqdm(total=total, desc="tiles", disable=None if progress else True)
    band: _Band | None = None
    emitted = 0
    with torch.no_grad(), bar:
        for row_start in rows:
            if band is not None and row_start > band.start:
                yield from _emit(band.finish(row_start - band.start), emitted, spatial)
                emitted = band.start
            for batch in _chunks(list(_row_jobs(row_start, plans)), batch_size):
                tiles = [_read_tile(source, plans, origin, valid) for origin in batch]
                logits = model(torch.stack(tiles).to(model_device)).float().cpu()
                _check_tile_output(logits, tile_lengths, expected_output, valid)
                if band is None:
                    rest = [p.result_size for p in plans[1:]]
                    band = _Band(logits.shape[1], keep_lengths[0], rest, logits)
                for origin, tile_logits in zip(batch, logits, strict=True):
                    band.add(origin, tile_logits[kept], weights)
                bar.update()
        assert band is not None
        while emitted < spatial[0]:
            yield from _emit(band.finish(keep_lengths[0]), emitted, spatial)
            emitted = band.start


def _row_jobs(row_start: int, plans: Sequence[_AxisPlan]) -> Iterator[tuple[int, ...]]:
    for rest in itertools.product(*(p.starts for p in plans[1:])):
        yield (row_start, *rest)


def _emit(logits: Tensor, first_row: int, spatial: Sequence[int]) -> Iterator[tuple[int, Tensor]]:
    """The part of a finished band inside the image."""
    rows = min(logits.shape[1], spatial[0] - first_row)
    if rows > 0:
        yield first_row, logits[(slice(None), slice(0, rows), *(slice(0, s) for s in spatial[1:]))]


def predict_tiled(
    model: nn.Module,
    image: Tensor,
    *,
    tile_size: int | Sequence[int],
    overlap: int | Sequence[int] | None = None,
    batch_size: int = 4,
    progress: bool = False,
    blend: str = "gaussian",
) -> Tensor:
    """Segment a large 2-D or 3-D image tile by tile (overlap-tile strategy, paper Fig. 2).

    Valid-padding U-Nets (``model.padding == "valid"``): the image is mirrored by the
    network's border (:func:`~concatnets.models.unet.unet_valid_margin`) on every side,
    input tiles of ``tile_size`` are cut at a stride that is a multiple of ``2**depth``,
    and their output tiles, kept without overlap, cover the image exactly. The result
    equals whole-image inference on the mirror-padded image: one output pixel per input
    pixel, only the memory is bounded by the tile.

    Other models (same padding, or any size-preserving model without a ``padding``
    attribute): tiles start at multiples of ``2**depth``, overlap by about ``overlap``,
    and cover the image zero-padded at its far end to a multiple of ``2**depth`` (as the
    model pads it internally, so tiles share its pooling grid); each output pixel is the
    weighted mean of the tiles covering it, weights strictly positive and highest
    at a tile's centre, where its context is most complete. The result is therefore a
    convex combination of per-tile predictions, so its error against whole-image
    inference is at most the largest error of a covering tile, and pixels whose covering
    tiles all hold their full receptive field are exact. The network's own zero padding
    already extrapolates the image border as whole-image inference would, so nothing is
    mirrored here. An axis not longer than the tile is taken whole (exact along it).

    This returns the whole logits; :func:`iter_tiled_logits` gives them band by band
    from a :class:`TileSource`, for images whose logits would not fit in memory.

    Put the model in eval mode first: batch norm in training mode would normalise each
    batch of tiles with its own statistics.

    Args:
        model: A segmentation model taking ``(N, C, *spatial)``; its ``depth`` attribute
            (pooling steps, 0 if absent) sets the tile alignment.
        image: ``(N, C, *spatial)`` with 2 or 3 spatial axes, on any device; tiles are
            moved to the model's device and results gathered on the image's.
        tile_size: Input tile size, one int or one per spatial axis. Valid models need a
            valid input size (see :func:`~concatnets.models.unet.nearest_valid_input_sizes`);
            others need a multiple of ``2**depth``.
        overlap: Input overlap of neighbouring tiles for same-padding models (default a
            quarter of the tile). Must be ``None`` for valid models, whose overlap is
            fixed by their border.
        batch_size: Tiles per forward pass.
        progress: Show a tqdm progress bar over batches (when stderr is a terminal).
        blend: ``"gaussian"``, ``"linear"`` or ``"constant"`` tile weights (same padding).

    Returns:
        Logits ``(N, num_classes, *spatial)`` with the image's spatial size.
    """
    if image.ndim not in (4, 5):
        raise ValueError(
            f"image must be (N, C, H, W) or (N, C, D, H, W), got shape {tuple(image.shape)}; "
            "add the batch and channel axes, e.g. image[None, None]"
        )
    results = []
    for sample in image:
        bands = iter_tiled_logits(
            model,
            TensorSource(sample),
            tile_size=tile_size,
            overlap=overlap,
            batch_size=batch_size,
            progress=progress,
            blend=blend,
        )
        results.append(torch.cat([logits for _, logits in bands], dim=1))
    return torch.stack(results).to(image.device)


def _check_tile_output(
    logits: Tensor, tile: Sequence[int], expected: tuple[int, ...], valid: bool
) -> None:
    if tuple(logits.shape[2:]) != expected:
        kind = "a valid-padding U-Net" if valid else "a size-preserving model"
        raise ValueError(
            f"the model turned a tile of size {tuple(tile)} into logits of size "
            f"{tuple(logits.shape[2:])}, but {kind} should give {expected}; set "
            "model.padding ('same' or 'valid') and model.depth to describe the model"
        )


def _window(origin: Sequence[int], lengths: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(o, o + n) for o, n in zip(origin, lengths, strict=True))
