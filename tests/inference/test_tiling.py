"""Overlap-tile inference: exact for valid U-Nets, bounded and exact away from seams for
same-padded ones; references are whole-image inference computed independently."""

from __future__ import annotations

import io
import itertools
import sys

import numpy as np
import pytest
import torch
from torch import nn

from concatnets.inference import predict_tiled
from concatnets.models.unet import UNet, unet_input_size_for_output, unet_valid_margin


def eval_unet(**config: object) -> UNet:
    """A tiny UNet in eval mode whose batch norms hold non-trivial running statistics."""
    torch.manual_seed(0)
    model = UNet(**{"depth": 2, "features": 4, **config})  # type: ignore[arg-type]
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm2d, nn.BatchNorm3d)):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def whole_valid(model: UNet, image: torch.Tensor) -> torch.Tensor:
    """Whole-image inference on the image mirrored (numpy 'reflect', as in the paper's
    Fig. 2) to a valid size, cropped to the image."""
    margin = unet_valid_margin(model.depth)
    spatial = image.shape[2:]
    padded = unet_input_size_for_output(tuple(s + 2**model.depth for s in spatial), model.depth)
    widths = [(0, 0), (0, 0)] + [
        (margin, p - s - margin) for s, p in zip(spatial, padded, strict=True)
    ]
    mirrored = torch.from_numpy(np.pad(image.numpy(), widths, mode="reflect"))
    with torch.no_grad():
        out = model(mirrored)
    return out[(..., *(slice(0, s) for s in spatial))]


@pytest.mark.parametrize(
    ("shape", "tile_size", "batch_size", "depth"),
    [
        ((2, 1, 37, 50), 52, 3, 2),  # not a multiple of the 12-pixel output tile
        ((1, 1, 30, 29), (48, 56), 1, 2),  # per-axis tile sizes
        ((1, 1, 5, 6), 52, 4, 2),  # smaller than one tile: mirrored more than the image size
        # Output tile 12 is not a multiple of 2**3: only 8 of it may be kept per step.
        ((1, 1, 20, 13), 100, 4, 3),
    ],
)
def test_valid_tiling_equals_whole_image_2d(
    shape: tuple[int, ...], tile_size: int | tuple[int, int], batch_size: int, depth: int
) -> None:
    model = eval_unet(padding="valid", depth=depth)
    image = torch.randn(shape)
    tiled = predict_tiled(model, image, tile_size=tile_size, batch_size=batch_size)
    assert tiled.shape == (shape[0], 2, *shape[2:])
    torch.testing.assert_close(tiled, whole_valid(model, image), atol=1e-5, rtol=1e-5)


def test_valid_tiling_equals_whole_image_3d() -> None:
    model = eval_unet(padding="valid", spatial_dims=3, depth=1)
    image = torch.randn(1, 1, 9, 11, 7)
    tiled = predict_tiled(model, image, tile_size=20, batch_size=8)
    torch.testing.assert_close(tiled, whole_valid(model, image), atol=1e-5, rtol=1e-5)


def test_valid_tiling_errors() -> None:
    model = eval_unet(padding="valid")
    image = torch.randn(1, 1, 30, 30)
    with pytest.raises(ValueError, match=r"size 50 in spatial dim 0.*48 or 52"):
        predict_tiled(model, image, tile_size=50)
    with pytest.raises(ValueError, match="overlap must be None for a valid-padding model"):
        predict_tiled(model, image, tile_size=52, overlap=8)
    deep = eval_unet(padding="valid", depth=3)
    # 92 is a valid input size for depth 3, but its 4-pixel output holds no 8-aligned step.
    with pytest.raises(ValueError, match=r"tile_size 92 .* too small.*Use tile_size >= 100"):
        predict_tiled(deep, torch.randn(1, 1, 40, 40), tile_size=92)


@pytest.mark.parametrize("blend", ["gaussian", "linear", "constant"])
@pytest.mark.parametrize(
    ("shape", "tile_size", "overlap"),
    [((2, 2, 23, 31), 8, 3), ((1, 2, 7, 9, 10), (4, 5, 6), (1, 2, 3))],
)
def test_stitching_is_exact_for_a_pointwise_model(
    blend: str, shape: tuple[int, ...], tile_size: object, overlap: object
) -> None:
    # A 1x1 convolution has no context to lose, so any error would come from stitching.
    torch.manual_seed(0)
    conv = nn.Conv2d if len(shape) == 4 else nn.Conv3d
    model = conv(2, 3, 1).eval()
    image = torch.randn(shape)
    tiled = predict_tiled(
        model, image, tile_size=tile_size, overlap=overlap, blend=blend, batch_size=5
    )
    with torch.no_grad():
        torch.testing.assert_close(tiled, model(image), atol=1e-5, rtol=1e-5)


def receptive_radius(depth: int) -> int:
    # Two 3x3 convolutions per block at every scale, plus up to 2**depth - 1 pixels of
    # pooling-window slack (measured by gradients: 9, 23, 51 for depths 1, 2, 3).
    convs = sum(2 * 2 * 2**level for level in range(depth)) + 2 * 2**depth
    return convs + 2**depth - 1


def tile_starts(size: int, tile: int, stride: int, align: int) -> list[int]:
    """The documented same-padding plan: tiles at multiples of ``stride`` over the axis
    zero-padded to a multiple of ``align``, the last one flush with its end."""
    padded = -(-size // align) * align
    return [*range(0, padded - tile, stride), padded - tile]


def safe_mask(size: int, tile: int, stride: int, align: int, radius: int) -> torch.Tensor:
    """Pixels of one axis that every covering tile sees with full context (or up to the
    image border, which whole-image inference pads the same way)."""
    padded = -(-size // align) * align
    safe = torch.ones(size, dtype=torch.bool)
    for p in range(size):
        for a in tile_starts(size, tile, stride, align):
            if a <= p < a + tile:
                left_ok = a == 0 or p - a >= radius
                right_ok = a + tile == padded or a + tile - 1 - p >= radius
                safe[p] &= left_ok and right_ok
    return safe


def test_same_tiling_2d_exact_away_from_seams_and_a_convex_blend() -> None:
    model = eval_unet(padding="same")
    image = torch.randn(1, 1, 100, 130)
    tile, stride = 64, 32
    tiled = predict_tiled(model, image, tile_size=tile, overlap=tile - stride, batch_size=4)
    with torch.no_grad():
        whole = model(image)
    assert tiled.shape == whole.shape

    radius = receptive_radius(2)
    masks = [safe_mask(s, tile, stride, 4, radius) for s in image.shape[2:]]
    safe = masks[0][:, None] & masks[1][None, :]
    assert safe.float().mean() > 0.1
    torch.testing.assert_close(tiled[..., safe], whole[..., safe], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(tiled, whole, atol=1e-3)  # seams do differ: the test has teeth

    # Blending is a convex combination: every pixel lies between the lowest and highest
    # prediction of the tiles covering it.
    padded = nn.functional.pad(image, (0, 2))  # width 130 -> 132, a multiple of 4
    origins = list(
        itertools.product(tile_starts(100, tile, stride, 4), tile_starts(130, tile, stride, 4))
    )
    crops = [padded[0, :, top : top + tile, left : left + tile] for top, left in origins]
    with torch.no_grad():
        preds = model(torch.stack(crops))  # (tiles, 2, tile, tile)
    low = torch.full((2, 100, 132), float("inf"))
    high = torch.full((2, 100, 132), float("-inf"))
    for (top, left), pred in zip(origins, preds, strict=True):
        region = (slice(None), slice(top, top + tile), slice(left, left + tile))
        low[region] = torch.minimum(low[region], pred)
        high[region] = torch.maximum(high[region], pred)
    assert (tiled[0] >= low[..., :130] - 1e-5).all()
    assert (tiled[0] <= high[..., :130] + 1e-5).all()


def test_same_tiling_3d_exact_away_from_seams() -> None:
    model = eval_unet(padding="same", spatial_dims=3, depth=1)
    image = torch.randn(1, 1, 30, 26, 34)
    tile, overlap = 24, 8
    tiled = predict_tiled(model, image, tile_size=tile, overlap=overlap, batch_size=2)
    with torch.no_grad():
        whole = model(image)
    radius = receptive_radius(1)
    masks = [safe_mask(s, tile, tile - overlap, 2, radius) for s in image.shape[2:]]
    safe = masks[0][:, None, None] & masks[1][None, :, None] & masks[2][None, None, :]
    assert safe.any()
    torch.testing.assert_close(tiled[..., safe], whole[..., safe], atol=1e-5, rtol=1e-5)
    # Near seams the blend is inexact but stays within the logits' own range.
    assert (tiled - whole).abs().max() < whole.abs().max()


def test_same_tiling_image_smaller_than_tile_is_whole_image_inference() -> None:
    model = eval_unet(padding="same", depth=3)
    image = torch.randn(2, 1, 13, 21)
    with torch.no_grad():
        whole = model(image)
    tiled = predict_tiled(model, image, tile_size=32, progress=True)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-5)


def test_same_tiling_errors() -> None:
    model = eval_unet(padding="same", depth=2)
    image = torch.randn(1, 1, 40, 40)
    with pytest.raises(ValueError, match=r"tile_size 30 .* multiple of 2\*\*depth = 4.*28 or 32"):
        predict_tiled(model, image, tile_size=30)
    with pytest.raises(ValueError, match=r"overlap 16 in spatial dim 0 must be in \[0, "):
        predict_tiled(model, image, tile_size=16, overlap=16)
    with pytest.raises(ValueError, match=r"tile_size 2 .* use 4 or larger"):
        predict_tiled(model, image, tile_size=2)
    with pytest.raises(ValueError, match="tile_size must be an int or 2 ints"):
        predict_tiled(model, image, tile_size=(16, 16, 16))
    with pytest.raises(ValueError, match="blend must be one of"):
        predict_tiled(model, image, tile_size=16, blend="max")
    with pytest.raises(ValueError, match=r"image must be \(N, C, H, W\)"):
        predict_tiled(model, image[0], tile_size=16)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("stream", "shown"), [(io.StringIO, False), (_Terminal, True)])
def test_progress_bar_is_shown_only_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, stream: type[io.StringIO], shown: bool
) -> None:
    """Logs and pipes get no bar redraws; a terminal gets the bar."""
    err = stream()
    monkeypatch.setattr(sys, "stderr", err)
    model = eval_unet(padding="same", depth=2)
    predict_tiled(model, torch.randn(1, 1, 40, 40), tile_size=16, progress=True)
    assert ("tiles" in err.getvalue()) is shown
