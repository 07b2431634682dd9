"""Overlay panels: every part titled in the image, one legend of class colours."""

from __future__ import annotations

import numpy as np
from PIL import Image

from concatnets.training.plots import class_palette, panel_titles, save_overlay_panel


def _panel(tmp_path, with_truth: bool, names=None) -> np.ndarray:
    rng = np.random.default_rng(0)
    image = rng.random((32, 32))
    mask = np.zeros((32, 32), dtype=np.int64)
    mask[4:12, 4:12], mask[20:28, 20:28] = 1, 2
    path = save_overlay_panel(
        tmp_path / "panel.png",
        image,
        mask,
        3,
        target=mask if with_truth else None,
        class_names=names,
    )
    return np.asarray(Image.open(path).convert("RGB"))


def _has_dark_text(region: np.ndarray) -> bool:
    return bool((region.max(axis=-1) < 100).sum() > 20)


def test_titles_name_each_part_left_to_right():
    assert panel_titles(True) == ("image", "truth", "prediction")
    assert panel_titles(False) == ("image", "prediction")


def test_every_part_has_a_title_strip_above_it(tmp_path):
    panel = _panel(tmp_path, with_truth=True)
    rows_of_image = np.flatnonzero((panel != 255).any(axis=(1, 2)))
    # A white title strip with dark text sits above the enlarged parts (256 px high).
    assert panel.shape[0] > 256 + 20
    strip_height = next(
        r for r in range(panel.shape[0]) if (panel[r] != 255).all(axis=-1).mean() > 0.9
    )
    assert strip_height > 10 and rows_of_image[0] < strip_height  # text inside the strip
    thirds = np.array_split(panel[:strip_height], 3, axis=1)
    assert all(_has_dark_text(part) for part in thirds)


def test_legend_shows_each_coloured_class_in_the_overlay_palette(tmp_path):
    panel = _panel(tmp_path, with_truth=False, names=["background", "nucleus", "membrane"])
    legend = panel[-40:].reshape(-1, 3)
    colours = {tuple(c) for c in legend}
    for colour in class_palette(3)[1:]:
        assert tuple(int(v) for v in colour) in colours
    assert _has_dark_text(panel[-40:])


def test_volumes_and_old_positional_calls_still_work(tmp_path):
    volume = np.random.default_rng(1).random((1, 4, 16, 16))
    prediction = np.zeros((4, 16, 16), dtype=np.int64)
    path = save_overlay_panel(tmp_path / "v.png", volume, prediction, 2, prediction, 64)
    assert Image.open(path).size[0] > 2 * 64
