"""Spatial size arithmetic of the valid-convolution U-Net (Ronneberger et al. 2015).

In the original network (arXiv 1505.04597, Fig. 1) every block applies two unpadded 3x3
convolutions, each losing one pixel per side; the encoder halves the size with 2x2 max
pooling, the decoder doubles it with 2x2 up-convolutions. Pooling needs an even size, or
the skip map and the upsampled map would not line up. Following one size through the
network gives ``x_l = 2 * x_(l+1) + 4`` for the encoder, so the valid input sizes of a
network of depth ``D`` are exactly ``2**D * k + 4 * (2**D - 1)`` for ``k`` at least some
small minimum that keeps every map non-empty. Depth 4: 572 -> 388, as in the paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

__all__ = [
    "check_valid_input_size",
    "nearest_valid_input_sizes",
    "unet_input_size_for_output",
    "unet_output_size",
    "unet_valid_margin",
]

# Two unpadded 3x3 convolutions per block lose 2 pixels each along every axis.
_BLOCK_LOSS = 4


def _check_depth(depth: int) -> None:
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1 (pooling steps), got {depth!r}")


def _as_sizes(size: int | Sequence[int], name: str) -> tuple[int, ...]:
    sizes = (size,) if isinstance(size, int) else tuple(size)
    if not sizes or any(not isinstance(s, int) or isinstance(s, bool) for s in sizes):
        raise TypeError(f"{name} must be an int or a sequence of ints, got {size!r}")
    return sizes


def _trace(size: int, depth: int) -> tuple[int | None, str]:
    """Follow one spatial size through the valid network.

    Returns:
        ``(output_size, "")`` when every map stays non-empty and every pooled size is
        even, else ``(None, reason)``.
    """
    s = size
    for level in range(depth):
        s -= _BLOCK_LOSS
        if s < 1:
            return None, f"the convolutions of encoder level {level} leave {s} pixel(s)"
        if s % 2:
            return None, (
                f"encoder level {level} leaves odd size {s} before 2x2 max pooling, "
                "so its skip map cannot be centre-cropped to the upsampled map"
            )
        s //= 2
    s -= _BLOCK_LOSS
    if s < 1:
        return None, f"the bottleneck convolutions leave {s} pixel(s)"
    for level in reversed(range(depth)):
        s = 2 * s - _BLOCK_LOSS
        if s < 1:
            return None, f"the convolutions of decoder level {level} leave {s} pixel(s)"
    return s, ""


def _offset(depth: int) -> int:
    # Unrolling x_l = 2 * x_(l+1) + 4 over `depth` levels gives 4 * (2**depth - 1).
    return _BLOCK_LOSS * (2**depth - 1)


@cache
def _smallest_valid_input(depth: int) -> int:
    period, offset = 2**depth, _offset(depth)
    k = 1
    while _trace(period * k + offset, depth)[0] is None:
        k += 1
    return period * k + offset


def unet_valid_margin(depth: int) -> int:
    """Pixels a valid U-Net of ``depth`` pooling steps loses on each side (92 for depth 4).

    This is also how far the overlap-tile strategy mirrors the image beyond its border.

    >>> unet_valid_margin(4)
    92
    """
    _check_depth(depth)
    smallest = _smallest_valid_input(depth)
    output, _ = _trace(smallest, depth)
    assert output is not None
    return (smallest - output) // 2


def nearest_valid_input_sizes(size: int, depth: int) -> tuple[int | None, int]:
    """The valid input sizes nearest to ``size``, for one spatial axis.

    Args:
        size: Any axis length.
        depth: Pooling steps of the valid U-Net.

    Returns:
        ``(below, above)``: the largest valid size ``<= size`` (``None`` when there is
        none) and the smallest valid size ``>= size``. Both equal ``size`` when it is valid.

    >>> nearest_valid_input_sizes(570, 4)
    (556, 572)
    """
    _check_depth(depth)
    period, smallest = 2**depth, _smallest_valid_input(depth)
    if size <= smallest:
        return (smallest if size == smallest else None), smallest
    steps_below = (size - smallest) // period
    below = smallest + steps_below * period
    above = below if below == size else below + period
    return below, above


def check_valid_input_size(spatial_size: Sequence[int], depth: int) -> None:
    """Raise a ``ValueError`` naming the axis and the nearest sizes that work, if any
    axis of ``spatial_size`` cannot pass through a valid U-Net of ``depth``."""
    _check_depth(depth)
    for dim, size in enumerate(spatial_size):
        _, reason = _trace(size, depth)
        if reason:
            below, above = nearest_valid_input_sizes(size, depth)
            nearest = f"{below} or {above}" if below is not None else f"{above} or larger"
            raise ValueError(
                f"a valid-padding U-Net of depth {depth} cannot take size {size} in spatial "
                f"dim {dim}: {reason}. Nearest input sizes that work: {nearest}. Crop or "
                "mirror-pad the image to one of them, use concatnets.inference.predict_tiled, "
                "or build the model with padding='same'."
            )


def unet_output_size(
    input_size: int | Sequence[int], depth: int, padding: str = "valid"
) -> tuple[int, ...]:
    """Spatial output size of a U-Net for ``input_size``.

    Args:
        input_size: One axis length or one per spatial axis.
        depth: Pooling steps.
        padding: ``"valid"`` (the paper's unpadded convolutions) or ``"same"``.

    Raises:
        ValueError: for a size the valid network cannot take; the message lists the
            nearest sizes that work.

    >>> unet_output_size((572, 572), 4)
    (388, 388)
    """
    sizes = _as_sizes(input_size, "input_size")
    _check_depth(depth)
    if padding == "same":
        if any(s < 1 for s in sizes):
            raise ValueError(f"input sizes must be >= 1, got {sizes}")
        return sizes
    if padding != "valid":
        raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
    check_valid_input_size(sizes, depth)
    margin = unet_valid_margin(depth)
    # Every map size is affine in the input size, so the loss is the same for all valid sizes.
    return tuple(s - 2 * margin for s in sizes)


def unet_input_size_for_output(output_size: int | Sequence[int], depth: int) -> tuple[int, ...]:
    """Smallest valid input size whose valid U-Net output is at least ``output_size``.

    Args:
        output_size: Wanted output length, one axis or one per spatial axis.
        depth: Pooling steps.

    >>> unet_input_size_for_output(388, 4)
    (572,)
    >>> unet_input_size_for_output(389, 4)
    (588,)
    """
    sizes = _as_sizes(output_size, "output_size")
    _check_depth(depth)
    margin = 2 * unet_valid_margin(depth)
    return tuple(nearest_valid_input_sizes(max(s, 1) + margin, depth)[1] for s in sizes)
