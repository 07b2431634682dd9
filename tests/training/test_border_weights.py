from __future__ import annotations

import numpy as np

from concatnets.training.border_weights import connected_components, unet_weight_map


def test_connected_components_are_four_connected():
    grid = np.array(
        [
            [1, 1, 0, 1],
            [0, 1, 0, 1],
            [1, 0, 0, 0],
            [1, 1, 0, 1],
        ],
        dtype=bool,
    )
    labels, count = connected_components(grid)
    assert count == 4  # the diagonal touch at (1,1)-(2,0) does not connect
    assert labels[0, 0] == labels[1, 1]
    assert labels[2, 0] == labels[3, 1]
    assert labels[2, 0] != labels[1, 1]


def test_u_shape_is_one_component():
    grid = np.zeros((5, 5), dtype=bool)
    grid[:, 0] = grid[:, 4] = grid[4, :] = True
    _, count = connected_components(grid)
    assert count == 1


def test_border_weights_are_largest_on_thin_borders_between_cells():
    mask = np.zeros((20, 40), dtype=np.int64)
    mask[2:18, 2:15] = 1  # cell A
    mask[2:18, 16:25] = 1  # cell B, one pixel from A: a thin border at column 15
    mask[2:18, 37:39] = 1  # cell C, far from B: a wide gap at columns 25..36
    weights = unet_weight_map(mask, w0=10.0, sigma=5.0)
    thin = weights[10, 15]
    wide = weights[10, 31]
    outside = weights[0, 8]  # background next to only one cell
    assert thin > 8.0  # w_c plus almost the full w0 = 10 (d1 = d2 = 1)
    assert thin > wide > 0
    assert thin > outside
    assert np.all(weights[mask == 1] == weights[10, 5])  # cells keep only w_c


def test_border_weights_follow_the_formula_for_two_cells():
    mask = np.zeros((5, 9), dtype=np.int64)
    mask[:, :3] = 1
    mask[:, 6:] = 1  # a 3-px gap: columns 3, 4, 5
    weights = unet_weight_map(mask, w0=10.0, sigma=5.0, balance_classes=False)
    # Column 4 is 2 px from both cells' boundary pixels: d1 + d2 = 4.
    assert np.isclose(weights[2, 4], 1 + 10 * np.exp(-(4**2) / (2 * 25)), atol=1e-4)
    assert np.all(weights[mask == 1] == 1.0)


def test_ignored_pixels_get_zero_weight_and_single_cell_no_border_term():
    mask = np.zeros((6, 6), dtype=np.int64)
    mask[1:4, 1:4] = 1
    mask[5, 5] = -1
    weights = unet_weight_map(mask, balance_classes=False)
    assert weights[5, 5] == 0.0
    assert np.allclose(weights[mask == 0], 1.0)
