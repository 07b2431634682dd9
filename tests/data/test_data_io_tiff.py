"""Uncompressed TIFFs above the pixel limit are memory-mapped through tifffile."""

from __future__ import annotations

import numpy as np
import pytest

from concatnets.data.io import MAX_IMAGE_PIXELS_ENV, PixelLimitError, probe_image, read_image

tifffile = pytest.importorskip("tifffile")


def test_an_uncompressed_tiff_above_the_limit_is_memory_mapped(tmp_path, monkeypatch):
    image = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "big.tif", image)
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "100")
    info = probe_image(tmp_path / "big.tif")
    assert (info.height, info.width, info.channels) == (30, 40, 3)
    read = read_image(tmp_path / "big.tif")
    assert isinstance(read, np.memmap) and np.array_equal(read, image)


def test_a_compressed_tiff_above_the_limit_is_refused_with_the_fix(tmp_path, monkeypatch):
    tifffile.imwrite(tmp_path / "big.tif", np.zeros((30, 40), np.uint8), compression="zlib")
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "100")
    with pytest.raises(PixelLimitError, match="or save it as an uncompressed TIFF"):
        read_image(tmp_path / "big.tif")
