"""Images above the pixel limit are refused from their header with a one-line error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from concatnets.data.io import (
    MAX_IMAGE_PIXELS_ENV,
    PixelLimitError,
    max_image_pixels,
    probe_image,
    read_image,
    read_mask,
)


def _png(path: Path, side: int = 16) -> Path:
    Image.fromarray(np.zeros((side, side), np.uint8)).save(path)
    return path


@pytest.mark.parametrize("reader", [probe_image, read_image, read_mask])
def test_an_image_above_the_limit_names_file_size_limit_and_fix(tmp_path, monkeypatch, reader):
    path = _png(tmp_path / "big.png")
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "100")
    with pytest.raises(PixelLimitError) as caught:
        reader(path)
    message = str(caught.value)
    assert "\n" not in message
    assert "big.png: 16 x 16 = 256 pixels" in message
    assert "limit of 100 pixels" in message and f"{MAX_IMAGE_PIXELS_ENV}=256" in message


def test_the_default_limit_is_pillows_and_refuses_without_its_bomb_error(tmp_path, monkeypatch):
    path = _png(tmp_path / "bomb.png")
    monkeypatch.delenv(MAX_IMAGE_PIXELS_ENV, raising=False)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64)  # Pillow refuses above 128
    assert max_image_pixels() == 128
    with pytest.raises(PixelLimitError, match="256 pixels is above the limit of 128"):
        read_image(path)
    assert Image.MAX_IMAGE_PIXELS == 64  # Pillow's setting is left as it was


def test_raising_the_limit_reads_what_pillow_alone_refuses(tmp_path, monkeypatch):
    path = _png(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64)
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "256")
    assert read_image(path).shape == (16, 16)
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "0")  # no limit
    assert max_image_pixels() is None and probe_image(path).size == (16, 16)


def test_a_limit_that_is_no_number_is_refused_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "lots")
    with pytest.raises(PixelLimitError, match=f"{MAX_IMAGE_PIXELS_ENV}='lots' is not a pixel"):
        read_image(_png(tmp_path / "a.png"))
