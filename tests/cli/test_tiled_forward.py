"""evaluate's tiling: large inputs tile by tile, with the logits of an untiled pass."""

from __future__ import annotations

import torch

from concatnets.cli.tiled_forward import TiledForward
from concatnets.inference import predict_tiled
from concatnets.models.unet import UNet, nearest_valid_input_sizes


def _unet(padding: str) -> UNet:
    torch.manual_seed(0)
    return UNet(depth=2, features=4, padding=padding).eval()


@torch.no_grad()
def test_small_inputs_run_whole_and_large_ones_tiled() -> None:
    model = _unet("same")
    forward = TiledForward(model, tile_size=32, batch_size=3)
    small = torch.randn(2, 1, 32, 24)
    torch.testing.assert_close(forward(small), model(small), rtol=0, atol=0)
    assert forward.tiled == 0
    large = torch.randn(2, 1, 80, 40)
    logits = forward(large)
    assert forward.tiled == 2
    torch.testing.assert_close(logits, predict_tiled(model, large, tile_size=32), rtol=0, atol=0)
    assert logits.shape == model(large).shape  # blended tiles (tests/inference bound them)


@torch.no_grad()
def test_valid_unets_tiled_give_the_whole_image_logits() -> None:
    model = _unet("valid")
    side, _ = nearest_valid_input_sizes(150, model.depth)
    assert side is not None
    image = torch.randn(1, 1, side, side)
    forward = TiledForward(model, tile_size=64)
    logits = forward(image)
    assert forward.tiled == 1
    whole = model(image)
    assert logits.shape == whole.shape  # cropped to what the untiled pass scores
    torch.testing.assert_close(logits, whole, rtol=1e-4, atol=1e-5)
