"""Streamed tiled prediction: equal to whole-tensor tiling, never reading more than a tile."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from concatnets.data.datasets import load_input_tensor
from concatnets.inference import iter_tiled_logits, predict_tiled
from concatnets.inference.preview import preview_pair
from concatnets.inference.source import ImageSource, image_source
from concatnets.inference.streaming import predict_classes
from concatnets.models.unet import UNet


def _unet(padding: str = "same") -> UNet:
    torch.manual_seed(0)
    return UNet(depth=2, features=4, padding=padding).eval()


def _image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize("normalization", ["image", "unit"])
@pytest.mark.parametrize("shape", [(37, 29), (20, 24, 3)])
def test_image_source_regions_match_the_whole_image_conversion(normalization, shape):
    raw = _image(shape)
    whole = load_input_tensor(raw, 1, normalization)
    source = ImageSource(raw, 1, normalization)
    assert source.spatial == shape[:2]
    torch.testing.assert_close(source.read((slice(0, 37), slice(0, 29))), whole, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        source.read((slice(5, 17), slice(3, 11))), whole[:, 5:17, 3:11], atol=1e-5, rtol=0
    )


def test_image_source_streams_wide_integers_at_their_fixed_scale():
    raw = np.arange(64, dtype=np.int32).reshape(8, 8) * 1000 - 5000  # 16-bit samples, signed
    whole = load_input_tensor(raw, 1, "unit")
    source = image_source(raw, 1, "unit")
    assert isinstance(source, ImageSource)
    torch.testing.assert_close(source.read((slice(2, 5), slice(1, 8))), whole[:, 2:5, 1:8])
    torch.testing.assert_close(whole[0], torch.from_numpy(raw.astype(np.float32) / 65535))


def test_image_source_falls_back_to_whole_conversion_for_other_dtypes():
    raw = np.arange(64, dtype=np.complex64).reshape(8, 8)
    with pytest.raises(ValueError, match="use image_source"):
        ImageSource(raw, 1, "image")


class _SpySource:
    """Records the largest region a tiled prediction reads."""

    def __init__(self, inner: ImageSource) -> None:
        self.inner = inner
        self.largest = 0

    @property
    def spatial(self) -> tuple[int, ...]:
        return self.inner.spatial

    def read(self, region: tuple[slice, ...]) -> torch.Tensor:
        self.largest = max(self.largest, int(np.prod([r.stop - r.start for r in region])))
        return self.inner.read(region)


@pytest.mark.parametrize(("padding", "tile"), [("same", 32), ("valid", 52)])
def test_streamed_bands_equal_whole_tensor_tiling_and_read_one_tile_at_most(padding, tile):
    model = _unet(padding)
    raw = _image((150, 70), seed=1)
    reference = predict_tiled(model, load_input_tensor(raw, 1, "image")[None], tile_size=tile)[0]
    spy = _SpySource(ImageSource(raw, 1, "image"))
    bands = list(iter_tiled_logits(model, spy, tile_size=tile, batch_size=3))
    assert len(bands) > 3  # finished rows come out while the image is still being tiled
    assert [first for first, _ in bands] == list(
        np.cumsum([0] + [b.shape[1] for _, b in bands[:-1]])
    )
    streamed = torch.cat([logits for _, logits in bands], dim=1)
    torch.testing.assert_close(streamed, reference, atol=1e-4, rtol=1e-4)
    assert spy.largest <= tile * tile
    classes = predict_classes(model, ImageSource(raw, 1, "image"), tile_size=tile)
    assert classes.dtype == np.uint8 and classes.shape == (150, 70)
    assert np.array_equal(classes, streamed.argmax(0).numpy())


def test_streamed_volume_bands_equal_whole_tensor_tiling():
    model = UNet(depth=1, features=2, spatial_dims=3).eval()
    raw = _image((20, 9, 11), seed=2)
    tensor = load_input_tensor(raw, 1, "image", spatial_dims=3)
    reference = predict_tiled(model, tensor[None], tile_size=8)[0]
    bands = iter_tiled_logits(model, ImageSource(raw, 1, "image", 3), tile_size=8)
    torch.testing.assert_close(torch.cat([b for _, b in bands], 1), reference, atol=1e-4, rtol=1e-4)


def test_preview_pair_shrinks_by_a_whole_factor_and_samples_classes():
    image = np.zeros((2500, 1000), np.uint8)
    image[:, 500:] = 200
    mask = np.zeros((2500, 1000), np.uint8)
    mask[1:, :] = 1  # row 0 differs: block-centre sampling skips it
    shown, shown_mask = preview_pair(image, mask, max_side=1024)
    assert shown.shape == shown_mask.shape == (833, 333)  # factor 3
    assert shown[0, 0] == 0 and shown[0, -1] == 200 and np.all(shown_mask == 1)
    small = np.ones((10, 12), np.uint8)
    assert preview_pair(small, small)[0].shape == (10, 12)
    volume = np.arange(4 * 3 * 3).reshape(4, 3, 3)
    picture, middle = preview_pair(volume, volume % 2)
    assert np.array_equal(picture, volume[2]) and np.array_equal(middle, volume[2] % 2)
