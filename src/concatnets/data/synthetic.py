"""Built-in data that needs no download, generated deterministically from a seed.

``cells`` imitates the electron-microscopy stacks of the U-Net paper (Ronneberger et
al. 2015, arXiv 1505.04597): touching cells separated by thin dark membranes, with
textured interiors and noise; ``cells3d`` is its volumetric counterpart (3-D Voronoi
cells with one-voxel membranes). ``shapes`` is a three-class classification set of
circles, squares and triangles. Image ``i`` depends only on ``(seed, i)``, so a larger
``num_images`` extends a set without changing its first images.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "CELL_CLASSES",
    "SHAPE_CLASSES",
    "make_cell_image",
    "make_cell_volume",
    "make_cells",
    "make_cells3d",
    "make_shapes",
]

CELL_CLASSES: tuple[str, ...] = ("border", "cell")
SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle")


def _image_rng(seed: int, index: int, salt: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, salt])


def _smooth_noise(rng: np.random.Generator, size: int, cell: float) -> np.ndarray:
    """Zero-mean, unit-scale noise that varies over about ``cell`` pixels."""
    coarse = max(2, int(np.ceil(size / cell)) + 1)
    grid = torch.from_numpy(rng.standard_normal((1, 1, coarse, coarse)).astype(np.float32))
    fine = F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=True)
    return fine[0, 0].numpy()


def _box_blur(image: np.ndarray) -> np.ndarray:
    padded = np.pad(image, 1, mode="edge")
    height, width = image.shape
    total = sum(padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3))
    return total / 9.0


_SEED_REACH = 2
"""Grid cells either side of a pixel's own that can hold its nearest seed (see below)."""
_BAND_PIXELS = 1 << 21  # pixels labelled at once (temporaries of ~16 MB each)


def _nearest_seeds(
    ys: np.ndarray, xs: np.ndarray, seeds_y: np.ndarray, seeds_x: np.ndarray, cell_size: float
) -> np.ndarray:
    """Index of the nearest of the ``count x count`` jittered-grid seeds for each pixel.

    Seed ``(i, j)`` (flat index ``i * count + j``) lies within 0.4 cells of its centre
    ``((i - 0.5), (j - 0.5)) * cell_size``. The seed of the pixel's own cell is at most
    ``sqrt(2) * 0.9`` cells away and one ``_SEED_REACH + 1 = 3`` cells off along an axis
    at least 2.1, so only the 5 x 5 cells around the pixel's own are searched: work
    proportional to the area, not to area times seeds. Distances are those of a search
    over every seed, ties going to the lowest index, so labels are the same.

    Args:
        ys: Row coordinates of the pixels (any shape, float32).
        xs: Column coordinates, of the same shape.
        seeds_y: ``count * count`` seed rows (float64), row-major over the grid.
        seeds_x: Seed columns.
        cell_size: Grid spacing in pixels.
    """
    count = math.isqrt(seeds_y.size)
    flat_ys, flat_xs = ys.ravel(), xs.ravel()
    labels = np.zeros(flat_ys.size, dtype=np.int64)
    reach = range(-_SEED_REACH, _SEED_REACH + 1)
    for start in range(0, flat_ys.size, _BAND_PIXELS):
        band_y = flat_ys[start : start + _BAND_PIXELS].astype(np.float64)
        band_x = flat_xs[start : start + _BAND_PIXELS].astype(np.float64)
        home_y = np.floor(band_y / cell_size + 1.0).astype(np.int64)
        home_x = np.floor(band_x / cell_size + 1.0).astype(np.int64)
        best = np.full(band_y.size, np.inf)
        nearest = np.zeros(band_y.size, dtype=np.int64)
        for dy in reach:  # increasing seed index, so the first of equals is kept
            row = np.clip(home_y + dy, 0, count - 1) * count
            for dx in reach:
                index = row + np.clip(home_x + dx, 0, count - 1)
                distance = (band_y - seeds_y[index]) ** 2 + (band_x - seeds_x[index]) ** 2
                closer = distance < best
                np.copyto(best, distance, where=closer)
                np.copyto(nearest, index, where=closer)
        labels[start : start + band_y.size] = nearest
    return labels.reshape(ys.shape)


def _voronoi_labels(rng: np.random.Generator, size: int, cell_size: float) -> np.ndarray:
    """Nearest-seed labels of jittered-grid seeds, on coordinates warped for wavy borders."""
    count = int(np.ceil(size / cell_size)) + 2
    centres = (np.arange(count) - 0.5) * cell_size
    gy, gx = np.meshgrid(centres, centres, indexing="ij")
    jitter = rng.uniform(-0.4, 0.4, size=(2, count, count)) * cell_size
    seeds_y = (gy + jitter[0]).ravel()
    seeds_x = (gx + jitter[1]).ravel()
    ys, xs = np.meshgrid(
        np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32), indexing="ij"
    )
    ys = ys + 1.5 * _smooth_noise(rng, size, cell_size)
    xs = xs + 1.5 * _smooth_noise(rng, size, cell_size)
    return _nearest_seeds(ys, xs, seeds_y, seeds_x, cell_size)


def _darken_spots(image: np.ndarray, rng: np.random.Generator, count: int) -> None:
    """Darken ``count`` random discs (radius 0.8 to 2.2 px) of ``image`` in place by 0.18.

    Each disc updates only its bounding box, so the cost is set by the spots, not by
    spots times the image's area.
    """
    height, width = image.shape
    for _ in range(count):
        cy, cx = rng.uniform(0, height, size=2)
        radius = rng.uniform(0.8, 2.2)
        top, left = max(0, int(cy - radius)), max(0, int(cx - radius))
        bottom = min(height, int(cy + radius) + 1)
        right = min(width, int(cx + radius) + 1)
        ys = np.arange(top, bottom)[:, None]
        xs = np.arange(left, right)[None, :]
        window = image[top:bottom, left:right]
        window[(ys - cy) ** 2 + (xs - cx) ** 2 < radius**2] -= 0.18


def _borders(labels: np.ndarray, thickness: int) -> np.ndarray:
    """Pixels whose label differs from a 4-neighbour: one side (1 px) or both sides (2 px)."""
    border = np.zeros(labels.shape, dtype=bool)
    right = labels[:, :-1] != labels[:, 1:]
    down = labels[:-1, :] != labels[1:, :]
    border[:, :-1] |= right
    border[:-1, :] |= down
    if thickness >= 2:
        border[:, 1:] |= right
        border[1:, :] |= down
    return border


def make_cell_image(
    seed: int, index: int, image_size: int = 64, cell_size: float = 14.0
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic microscopy image and its mask.

    Args:
        seed: Seed of the whole set.
        index: Position of the image in the set.
        image_size: Side length in pixels.
        cell_size: Typical cell diameter in pixels.

    Returns:
        ``(image, mask)``: uint8 ``(H, W)`` grayscale image and uint8 mask with
        0 = border or extracellular background, 1 = cell.
    """
    rng = _image_rng(seed, index, 1)
    labels = _voronoi_labels(rng, image_size, cell_size)
    border = _borders(labels, thickness=int(rng.integers(1, 3)))
    num_labels = int(labels.max()) + 1
    extracellular = rng.random(num_labels) < 0.08
    inside = ~border & ~extracellular[labels]

    base = rng.uniform(0.55, 0.85, size=num_labels)
    image = base[labels] + 0.07 * _smooth_noise(rng, image_size, cell_size / 3)
    image = np.where(
        extracellular[labels], 0.42 + 0.05 * _smooth_noise(rng, image_size, 4.0), image
    )
    spots = int(rng.poisson(image_size * image_size / (cell_size * cell_size) * 0.8))
    _darken_spots(image, rng, spots)
    image = np.where(
        border, rng.uniform(0.1, 0.25) + 0.04 * rng.standard_normal(border.shape), image
    )
    image = _box_blur(image) * 0.6 + image * 0.4
    image = image + 0.045 * rng.standard_normal(image.shape)
    pixels = np.clip(image * 255.0, 0, 255).round().astype(np.uint8)
    return pixels, inside.astype(np.uint8)


def make_cells(
    num_images: int, image_size: int = 64, seed: int = 0
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The built-in ``cells`` segmentation set: touching cells and thin borders.

    Args:
        num_images: How many images.
        image_size: Side length in pixels (at least 16).
        seed: Seed; the same seed always gives the same images.
    """
    if image_size < 16:
        raise ValueError(f"--image-size {image_size} is too small for builtin:cells; use >= 16")
    pairs = [make_cell_image(seed, i, image_size) for i in range(num_images)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _smooth_noise_3d(rng: np.random.Generator, size: int, cell: float) -> np.ndarray:
    """Zero-mean, unit-scale 3-D noise that varies over about ``cell`` voxels."""
    coarse = max(2, int(np.ceil(size / cell)) + 1)
    grid = rng.standard_normal((1, 1, coarse, coarse, coarse)).astype(np.float32)
    fine = F.interpolate(
        torch.from_numpy(grid), size=(size,) * 3, mode="trilinear", align_corners=True
    )
    return fine[0, 0].numpy()


def _box_blur_3d(volume: np.ndarray) -> np.ndarray:
    """3x3x3 mean filter with edge padding, as three separable 1-D passes."""
    for axis in range(3):
        padded = np.pad(volume, [(1, 1) if a == axis else (0, 0) for a in range(3)], mode="edge")
        length = volume.shape[axis]
        volume = sum(np.take(padded, np.arange(k, k + length), axis=axis) for k in range(3)) / 3.0
    return volume


def _voronoi_labels_3d(rng: np.random.Generator, size: int, cell_size: float) -> np.ndarray:
    """Nearest-seed labels of jittered-grid seeds in a cube, on warped coordinates.

    One seed per grid cell, jittered by at most 0.4 cells, so a voxel's nearest seed
    lies in its own or a neighbouring cell: 27 candidates instead of every seed.
    """
    count = int(np.ceil(size / cell_size)) + 2
    cells = np.arange(count, dtype=np.float32)
    centres = np.stack(np.meshgrid(cells, cells, cells, indexing="ij")).reshape(3, -1) - 0.5
    jitter = rng.uniform(-0.4, 0.4, size=centres.shape)
    seeds = ((centres + jitter) * cell_size).astype(np.float32)  # (3, count**3)
    axis = np.arange(size, dtype=np.float32)
    coords = [
        (c + 1.5 * _smooth_noise_3d(rng, size, cell_size)).ravel()
        for c in np.meshgrid(axis, axis, axis, indexing="ij")
    ]
    home = [np.floor(c / cell_size + 0.5).astype(np.int32) for c in coords]
    best = np.full(size**3, np.inf, dtype=np.float32)
    labels = np.zeros(size**3, dtype=np.int32)
    for offset in np.ndindex(3, 3, 3):
        z, y, x = (np.clip(h + d - 1, 0, count - 1) for h, d in zip(home, offset, strict=True))
        flat = (z * count + y) * count + x
        distance = sum((coords[a] - seeds[a].take(flat)) ** 2 for a in range(3))
        closer = distance < best
        np.copyto(best, distance, where=closer)
        np.copyto(labels, flat, where=closer)
    return labels.reshape((size,) * 3).astype(np.int64)


def _borders_3d(labels: np.ndarray) -> np.ndarray:
    """Voxels whose label differs from the next voxel along any axis (1-voxel membranes)."""
    border = np.zeros(labels.shape, dtype=bool)
    border[:-1] |= labels[:-1] != labels[1:]
    border[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    border[:, :, :-1] |= labels[:, :, :-1] != labels[:, :, 1:]
    return border


def make_cell_volume(
    seed: int, index: int, volume_size: int = 32, cell_size: float = 10.0
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic 3-D microscopy volume and its mask.

    Args:
        seed: Seed of the whole set.
        index: Position of the volume in the set.
        volume_size: Side length in voxels.
        cell_size: Typical cell diameter in voxels.

    Returns:
        ``(volume, mask)``: uint8 ``(D, H, W)`` volume and uint8 mask with
        0 = border or extracellular background, 1 = cell.
    """
    rng = _image_rng(seed, index, 3)
    labels = _voronoi_labels_3d(rng, volume_size, cell_size)
    border = _borders_3d(labels)
    num_labels = int(labels.max()) + 1
    extracellular = rng.random(num_labels) < 0.08
    inside = ~border & ~extracellular[labels]

    base = rng.uniform(0.55, 0.85, size=num_labels)
    volume = base[labels] + 0.07 * _smooth_noise_3d(rng, volume_size, cell_size / 3)
    volume = np.where(extracellular[labels], 0.42, volume)
    volume = np.where(border, rng.uniform(0.1, 0.25), volume)
    volume = _box_blur_3d(volume) * 0.5 + volume * 0.5
    volume = volume + 0.045 * rng.standard_normal(volume.shape)
    voxels = np.clip(volume * 255.0, 0, 255).round().astype(np.uint8)
    return voxels, inside.astype(np.uint8)


def make_cells3d(
    num_volumes: int, volume_size: int = 32, seed: int = 0
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The built-in ``cells3d`` segmentation set: 3-D cells separated by thin membranes.

    Args:
        num_volumes: How many volumes.
        volume_size: Side length in voxels (at least 8).
        seed: Seed; the same seed always gives the same volumes.
    """
    if volume_size < 8:
        raise ValueError(f"--image-size {volume_size} is too small for builtin:cells3d; use >= 8")
    pairs = [make_cell_volume(seed, i, volume_size) for i in range(num_volumes)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _shape_mask(kind: int, size: int, rng: np.random.Generator) -> np.ndarray:
    radius = rng.uniform(0.22, 0.34) * size
    margin = radius * 1.05
    cy, cx = rng.uniform(margin, size - 1 - margin, size=2)
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dy, dx = ys - cy, xs - cx
    u = np.cos(angle) * dx + np.sin(angle) * dy
    v = -np.sin(angle) * dx + np.cos(angle) * dy
    if kind == 0:
        return u**2 + v**2 <= radius**2
    if kind == 1:
        half = radius * 0.8
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    inside = np.ones((size, size), dtype=bool)
    for k in range(3):
        theta = 2 * np.pi * k / 3
        # Edge normals of an equilateral triangle; the inradius is half the circumradius.
        inside &= np.cos(theta) * u + np.sin(theta) * v <= radius * 0.55
    return inside


def make_shapes(
    num_images: int, image_size: int = 32, seed: int = 0
) -> tuple[list[np.ndarray], list[int]]:
    """The built-in ``shapes`` classification set: circles, squares, triangles.

    Classes cycle 0, 1, 2 so the set is balanced; sizes, positions, rotations and
    colours are random.

    Args:
        num_images: How many images.
        image_size: Side length in pixels (at least 12).
        seed: Seed; the same seed always gives the same images.

    Returns:
        ``(images, labels)``: uint8 ``(H, W, 3)`` images and class indices into
        :data:`SHAPE_CLASSES`.
    """
    if image_size < 12:
        raise ValueError(f"--image-size {image_size} is too small for builtin:shapes; use >= 12")
    images: list[np.ndarray] = []
    labels: list[int] = []
    for index in range(num_images):
        rng = _image_rng(seed, index, 2)
        kind = index % len(SHAPE_CLASSES)
        inside = _shape_mask(kind, image_size, rng)
        background = rng.uniform(0.0, 0.45, size=3)
        foreground = np.clip(background + rng.uniform(0.35, 0.55, size=3), 0, 1)
        image = np.where(inside[..., None], foreground, background)
        image = image + 0.06 * rng.standard_normal(image.shape)
        images.append(np.clip(image * 255.0, 0, 255).round().astype(np.uint8))
        labels.append(kind)
    return images, labels
