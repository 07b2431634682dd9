"""Integer images scale by their stored type, never by their own values."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from concatnets.data.io import (
    check_integer_range,
    integer_full_scale,
    read_image,
    read_mask,
    to_float_image,
)
from concatnets.data.transforms import match_channels


def test_uint8_and_uint16_divide_by_their_full_scale():
    eight = np.array([[0, 51], [200, 255]], dtype=np.uint8)
    sixteen = np.array([[0, 200], [13107, 65535]], dtype=np.uint16)
    np.testing.assert_array_equal(to_float_image(eight)[0], eight.astype(np.float32) / 255)
    np.testing.assert_array_equal(to_float_image(sixteen)[0], sixteen.astype(np.float32) / 65535)


def test_bools_become_zero_and_one():
    np.testing.assert_array_equal(to_float_image(np.array([[True, False]]))[0], [[1.0, 0.0]])


def test_sixteen_bit_pngs_share_one_scale_whatever_their_maximum(tmp_path):
    dim = np.array([[0, 100], [200, 50]], dtype=np.uint16)  # an 8-bit-looking 16-bit image
    bright = np.array([[0, 100], [200, 60000]], dtype=np.uint16)
    Image.fromarray(dim).save(tmp_path / "dim.png")
    Image.fromarray(bright).save(tmp_path / "bright.png")
    dim_read, bright_read = read_image(tmp_path / "dim.png"), read_image(tmp_path / "bright.png")
    assert dim_read.dtype == np.uint16
    np.testing.assert_array_equal(dim_read, dim)
    scaled_dim, scaled_bright = to_float_image(dim_read), to_float_image(bright_read)
    assert scaled_dim[0, 1, 0] == pytest.approx(200 / 65535)
    np.testing.assert_array_equal(scaled_dim[0, 0], scaled_bright[0, 0])


def test_a_sixteen_bit_png_opened_as_32_bit_keeps_its_declared_depth(tmp_path, monkeypatch):
    array = np.array([[0, 200], [300, 65535]], dtype=np.uint16)
    Image.fromarray(array).save(tmp_path / "x.png")
    # Pillow < 10.3 opens 16-bit grayscale PNGs as 32-bit "I" images of "I;16B" samples.
    monkeypatch.setitem(PngImagePlugin._MODES, (16, 0), ("I", "I;16B"))
    with Image.open(tmp_path / "x.png") as image:
        assert image.mode == "I"
    read = read_image(tmp_path / "x.png")
    assert read.dtype == np.uint16
    np.testing.assert_array_equal(read, array)
    assert read_mask(tmp_path / "x.png").tolist() == array.tolist()


def test_wide_integers_are_16_bit_samples_whatever_their_maximum():
    small = np.array([[0, 200]], dtype=np.int32)
    large = np.array([[0, 200], [0, 60000]], dtype=np.int64)
    assert to_float_image(small)[0, 0, 1] == pytest.approx(200 / 65535)
    assert to_float_image(large)[0, 0, 1] == to_float_image(small)[0, 0, 1]
    assert integer_full_scale(np.dtype(np.uint32)) == 65535.0
    assert integer_full_scale(np.dtype(np.int8)) == 255.0


def test_negative_values_keep_their_sign():
    signed16 = np.array([[-32768, -1], [0, 32767]], dtype=np.int16)
    np.testing.assert_array_equal(to_float_image(signed16)[0], signed16.astype(np.float32) / 65535)
    assert to_float_image(np.array([[-128, 127]], dtype=np.int8))[0, 0, 0] == pytest.approx(
        -128 / 255
    )
    assert to_float_image(np.array([[-65535, 5]], dtype=np.int32))[0, 0, 0] == -1.0


@pytest.mark.parametrize("value", [65536, -70000])
def test_wide_integers_beyond_16_bits_are_refused_naming_the_file(tmp_path, value):
    path = tmp_path / "wide.npy"
    np.save(path, np.array([[0, value]], dtype=np.int32))
    with pytest.raises(ValueError, match=r"wide\.npy: int32 image holds values .* float32"):
        read_image(path)
    with pytest.raises(ValueError, match="16-bit range"):
        to_float_image(np.load(path))
    check_integer_range(np.array([[float(value)]]))  # floats carry their own scale


def test_a_32_bit_tiff_in_16_bit_range_reads_as_16_bit_samples(tmp_path):
    array = np.array([[0, -5], [300, 65535]], dtype=np.int32)
    Image.fromarray(array).save(tmp_path / "x.tif")
    read = read_image(tmp_path / "x.tif")
    assert read.dtype == np.int32
    np.testing.assert_array_equal(to_float_image(read)[0], array.astype(np.float32) / 65535)
    Image.fromarray(np.array([[0, 70000]], dtype=np.int32)).save(tmp_path / "y.tif")
    with pytest.raises(ValueError, match=r"y\.tif: int32 image"):
        read_image(tmp_path / "y.tif")


def test_grayscale_of_signed_colour_keeps_negatives():
    colour = np.full((2, 2, 3), -1000, dtype=np.int16)
    assert match_channels(colour, 1).tolist() == [[-1000, -1000], [-1000, -1000]]
