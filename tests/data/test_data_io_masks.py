from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from concatnets.data.io import probe_image, read_image, read_mask, to_float_image, write_mask_png
from concatnets.data.masks import infer_mask_value_map, parse_mask_values
from concatnets.data.sources import open_labelled_data


def _write_segmentation_folder(root: Path, masks: list[np.ndarray], suffix: str = ".png") -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for index, mask in enumerate(masks):
        image = rng.integers(0, 256, size=mask.shape, dtype=np.uint8)
        Image.fromarray(image).save(root / "images" / f"img{index}.png")
        if suffix == ".npy":
            np.save(root / "masks" / f"img{index}.npy", mask)
        else:
            Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"img{index}{suffix}")


def test_binary_0_255_masks_are_mapped_to_0_1_with_one_notice(tmp_path, capsys):
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[2:5, 2:6] = 255
    _write_segmentation_folder(tmp_path, [mask, mask])
    data = open_labelled_data(str(tmp_path))
    notices = [line for line in capsys.readouterr().err.splitlines() if "0 and 255" in line]
    assert len(notices) == 1
    assert data.num_classes == 2
    _, loaded = data.load(0)
    assert set(np.unique(loaded)) == {0, 1}
    assert loaded.sum() == 12


def test_explicit_mask_values_map_and_unknown_value_error(tmp_path):
    mask = np.array([[0, 128], [255, 0]], dtype=np.uint8)
    _write_segmentation_folder(tmp_path, [mask])
    data = open_labelled_data(str(tmp_path), mask_values={0: 0, 128: 1, 255: 2})
    assert data.num_classes == 3
    assert data.load(0)[1].tolist() == [[0, 1], [2, 0]]
    with pytest.raises(ValueError, match=r"128.*--mask-values"):
        open_labelled_data(str(tmp_path), mask_values={0: 0, 255: 1})


def test_class_index_masks_are_used_as_they_are(tmp_path):
    mask = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    _write_segmentation_folder(tmp_path, [mask], suffix=".npy")
    data = open_labelled_data(str(tmp_path))
    assert data.num_classes == 3
    assert data.load(0)[1].tolist() == mask.tolist()


@pytest.mark.parametrize(
    ("text", "message"),
    [("0:0,255", "VALUE:CLASS"), ("a:1", "VALUE:CLASS"), ("1:0,1:1", "twice"), ("", "empty")],
)
def test_parse_mask_values_rejects_bad_input(text, message):
    with pytest.raises(ValueError, match=message):
        parse_mask_values(text)


def test_sparse_large_values_ask_for_a_map():
    with pytest.raises(ValueError, match="--mask-values"):
        infer_mask_value_map([0, 100, 200])


@pytest.mark.parametrize("suffix", [".png", ".tif", ".jpg", ".npy"])
def test_read_image_formats_grayscale_and_rgb(tmp_path, suffix):
    rgb = np.random.default_rng(1).integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    path = tmp_path / f"x{suffix}"
    if suffix == ".npy":
        np.save(path, rgb)
    else:
        Image.fromarray(rgb).save(path)
    image = read_image(path)
    assert image.shape == (6, 5, 3)
    assert probe_image(path).size == (6, 5)
    assert probe_image(path).channels == 3
    grey = Image.fromarray(rgb[..., 0])
    grey_path = tmp_path / f"g{suffix}"
    if suffix == ".npy":
        np.save(grey_path, rgb[..., 0])
    else:
        grey.save(grey_path)
    assert read_image(grey_path).shape == (6, 5)
    assert probe_image(grey_path).channels == 1


def test_sixteen_bit_images_scale_to_unit_range(tmp_path):
    array = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    Image.fromarray(array).save(tmp_path / "x.png")
    scaled = to_float_image(read_image(tmp_path / "x.png"))
    assert scaled.shape == (1, 2, 2)
    assert scaled.max() == pytest.approx(1.0)
    assert scaled.min() == 0.0


def test_colour_mask_is_rejected_and_palette_mask_gives_indices(tmp_path):
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[..., 1] = 20
    Image.fromarray(colour).save(tmp_path / "c.png")
    with pytest.raises(ValueError, match="one channel of class indices"):
        read_mask(tmp_path / "c.png")
    palette = Image.fromarray(np.array([[0, 1], [2, 1]], dtype=np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    palette.save(tmp_path / "p.png")
    assert read_mask(tmp_path / "p.png").tolist() == [[0, 1], [2, 1]]


def test_write_mask_png_round_trips(tmp_path):
    mask = np.array([[0, 1], [3, 2]])
    write_mask_png(tmp_path / "m.png", mask)
    assert read_mask(tmp_path / "m.png").tolist() == mask.tolist()
