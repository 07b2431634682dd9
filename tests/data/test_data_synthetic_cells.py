"""builtin:cells: work proportional to the image's area, same images as a search over all."""

from __future__ import annotations

import numpy as np
import pytest

from concatnets.data import synthetic
from concatnets.data.synthetic import _darken_spots, _nearest_seeds


def _grid_seeds(count: int, cell: float, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Seeds jittered to the extremes (+-0.4 cells), where the nearest is farthest off."""
    centres = (np.arange(count) - 0.5) * cell
    gy, gx = np.meshgrid(centres, centres, indexing="ij")
    jitter = rng.choice([-0.4, 0.4], size=(2, count, count)) * cell
    return (gy + jitter[0]).ravel(), (gx + jitter[1]).ravel()


def _nearest_of_all(ys, xs, seeds_y, seeds_x) -> np.ndarray:
    """Nearest seed of every pixel searched over every seed (first of equals)."""
    y = ys.ravel().astype(np.float64)[:, None]
    x = xs.ravel().astype(np.float64)[:, None]
    distance = (y - seeds_y[None]) ** 2 + (x - seeds_x[None]) ** 2
    return distance.argmin(1).reshape(ys.shape)


@pytest.mark.parametrize(("size", "cell", "seed"), [(48, 6.0, 0), (40, 14.0, 1), (33, 4.5, 2)])
def test_nearest_seeds_of_the_neighbourhood_are_the_nearest_of_all(size, cell, seed, monkeypatch):
    monkeypatch.setattr(synthetic, "_BAND_PIXELS", 700)  # several bands, one ragged
    rng = np.random.default_rng(seed)
    count = int(np.ceil(size / cell)) + 2
    seeds_y, seeds_x = _grid_seeds(count, cell, rng)
    axis = np.arange(size, dtype=np.float32)
    ys, xs = np.meshgrid(axis, axis, indexing="ij")
    ys = ys + rng.uniform(-3, 3, ys.shape).astype(np.float32)  # warped, some off the image
    xs = xs + rng.uniform(-3, 3, xs.shape).astype(np.float32)
    expected = _nearest_of_all(ys, xs, seeds_y, seeds_x)
    np.testing.assert_array_equal(_nearest_seeds(ys, xs, seeds_y, seeds_x, cell), expected)


def test_a_seed_two_cells_off_can_be_the_nearest():
    cell, count = 10.0, 6
    centres = (np.arange(count) - 0.5) * cell
    gy, gx = np.meshgrid(centres, centres, indexing="ij")
    jitter = np.zeros((2, count, count))
    # Pixel near the far corner of cell (2, 2); its own and next seeds pushed away, the
    # seed of cell (4, 2) pulled towards it.
    for (row, col), (dy, dx) in {
        (2, 2): (-0.4, -0.4),
        (3, 2): (0.4, -0.4),
        (3, 3): (0.4, 0.4),
        (2, 3): (-0.4, 0.4),
        (4, 2): (-0.4, 0.4),
    }.items():
        jitter[:, row, col] = (dy * cell, dx * cell)
    seeds_y, seeds_x = (gy + jitter[0]).ravel(), (gx + jitter[1]).ravel()
    pixel = np.full((1, 1), 19.9, np.float32)
    assert _nearest_of_all(pixel, pixel, seeds_y, seeds_x).item() == 4 * count + 2
    assert _nearest_seeds(pixel, pixel.copy(), seeds_y, seeds_x, cell).item() == 4 * count + 2


def test_equal_distances_go_to_the_lowest_seed_index():
    cell = 10.0
    seeds_y = np.array([-5.0, -5.0, 5.0, 5.0])  # 2 x 2 grid: (0,0) (0,1) (1,0) (1,1)
    seeds_x = np.array([-5.0, 5.0, -5.0, 5.0])
    ys = np.zeros((1, 1), np.float32)  # equidistant from all four
    assert _nearest_seeds(ys, ys.copy(), seeds_y, seeds_x, cell).item() == 0


def test_spots_update_only_their_box_as_a_whole_image_pass_would():
    size, count = 40, 60
    image = np.random.default_rng(3).random((size, size))
    expected = image.copy()
    rng = np.random.default_rng(4)
    ys, xs = np.mgrid[0:size, 0:size]
    for _ in range(count):
        cy, cx = rng.uniform(0, size, size=2)
        radius = rng.uniform(0.8, 2.2)
        expected = np.where((ys - cy) ** 2 + (xs - cx) ** 2 < radius**2, expected - 0.18, expected)
    _darken_spots(image, np.random.default_rng(4), count)
    np.testing.assert_array_equal(image, expected)
    assert np.count_nonzero(image != np.random.default_rng(3).random((size, size))) > 0
