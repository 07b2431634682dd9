"""Pixel weight maps of the U-Net paper, which force the network to learn thin borders.

Ronneberger et al. 2015 (arXiv 1505.04597, Eq. 2)::

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))

``w_c`` balances class frequencies; ``d1`` and ``d2`` are the distances from ``x`` to the
border of the nearest and the second-nearest cell; the paper uses ``w0 = 10`` and
``sigma = 5`` pixels.

How it is computed here (scipy is not a dependency):

- Cells are the 4-connected components of each non-background class, found with a
  union-find over the runs of foreground pixels in each row (fast in numpy even for
  large masks).
- Distances are exact Euclidean distances, by brute force from background pixels to the
  boundary pixels of each cell, in chunks. Only pixels within ``R = sigma *
  sqrt(2 ln(1000 w0))`` of a cell are measured for it (about 21.5 px for the paper's
  values): beyond that ``d1 + d2 > R`` and the border term is below 1e-3, so the
  truncation changes no weight by more than that.
- As in common reimplementations the border term is added to background pixels only
  (the separating borders the network must learn); cell pixels keep ``w_c``.
- Pixels marked :data:`~concatnets.data.IGNORE_INDEX` (negative) get weight 0.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["connected_components", "unet_weight_map"]


def _row_runs(row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    padded = np.concatenate(([False], row, [False]))
    changes = np.flatnonzero(padded[1:] != padded[:-1])
    return changes[0::2], changes[1::2]


def connected_components(foreground: np.ndarray) -> tuple[np.ndarray, int]:
    """Label the 4-connected components of a 2-D boolean array.

    >>> labels, count = connected_components(np.array([[1, 0, 1], [1, 0, 1]], dtype=bool))
    >>> count, labels.tolist()
    (2, [[1, 0, 2], [1, 0, 2]])

    Args:
        foreground: ``(H, W)`` boolean array.

    Returns:
        ``(labels, count)``: int32 labels, 0 off the foreground, ``1..count`` on it.
    """
    foreground = np.asarray(foreground, dtype=bool)
    runs: list[tuple[int, int, int]] = []  # (row, start, stop)
    parent: list[int] = []

    def find(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    previous: list[tuple[int, int, int]] = []  # (start, stop, run id) in the row above
    for y in range(foreground.shape[0]):
        starts, stops = _row_runs(foreground[y])
        current: list[tuple[int, int, int]] = []
        cursor = 0
        for start, stop in zip(starts.tolist(), stops.tolist(), strict=True):
            run_id = len(runs)
            runs.append((y, start, stop))
            parent.append(run_id)
            # Advance past runs above that end before this one starts; they cannot touch later runs.
            while cursor < len(previous) and previous[cursor][1] <= start:
                cursor += 1
            probe = cursor
            while probe < len(previous) and previous[probe][0] < stop:
                root_a, root_b = find(run_id), find(previous[probe][2])
                if root_a != root_b:
                    parent[max(root_a, root_b)] = min(root_a, root_b)
                probe += 1
            current.append((start, stop, run_id))
        previous = current
    labels = np.zeros(foreground.shape, dtype=np.int32)
    component: dict[int, int] = {}
    for run_id, (y, start, stop) in enumerate(runs):
        root = find(run_id)
        labels[y, start:stop] = component.setdefault(root, len(component) + 1)
    return labels, len(component)


def _instance_labels(mask: np.ndarray, background: int) -> tuple[np.ndarray, int]:
    """Cells: components of each non-background class, numbered across classes."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    total = 0
    for value in np.unique(mask):
        if value == background or value < 0:
            continue
        component, count = connected_components(mask == value)
        labels[component > 0] = component[component > 0] + total
        total += count
    return labels, total


def _boundary(region: np.ndarray) -> np.ndarray:
    """Pixels of ``region`` with a 4-neighbour outside it (or on the image edge)."""
    padded = np.pad(region, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return region & ~interior


def _class_weights(mask: np.ndarray) -> np.ndarray:
    """``w_c``: each present class gets total / (classes present * its pixel count)."""
    weights = np.zeros(mask.shape, dtype=np.float64)
    valid = mask >= 0
    values, counts = np.unique(mask[valid], return_counts=True)
    total = counts.sum()
    for value, count in zip(values, counts, strict=True):
        weights[mask == value] = total / (len(values) * count)
    return weights


def unet_weight_map(
    mask: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    background: int = 0,
    balance_classes: bool = True,
) -> np.ndarray:
    """The U-Net paper's weight map for a class mask (see the module notes).

    Args:
        mask: ``(H, W)`` integer class mask; negative values are ignored pixels.
        w0: Height of the border term (paper: 10).
        sigma: Width of the border term in pixels (paper: 5).
        background: Class of borders and background; other classes form cells.
        balance_classes: Include the class-balancing term ``w_c``; else ``w_c = 1``.

    Returns:
        float32 ``(H, W)`` weights.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"unet_weight_map takes a 2-D mask, got shape {mask.shape}")
    weights = _class_weights(mask) if balance_classes else np.ones(mask.shape, np.float64)
    labels, count = _instance_labels(mask, background)
    outside = mask == background
    if count >= 2 and outside.any() and w0 > 0:
        reach = sigma * math.sqrt(2.0 * math.log(1000.0 * max(w0, 1e-3)))
        weights[outside] += w0 * np.exp(
            -((_two_nearest_sum(labels, count, outside, reach)) ** 2) / (2.0 * sigma**2)
        )
    weights[mask < 0] = 0.0
    return weights.astype(np.float32)


def _two_nearest_sum(
    labels: np.ndarray, count: int, outside: np.ndarray, reach: float
) -> np.ndarray:
    """``d1 + d2`` for every ``outside`` pixel (``inf`` where fewer than two cells are near)."""
    height, width = labels.shape
    out_y, out_x = np.nonzero(outside)
    nearest = np.full(out_y.size, np.inf)
    second = np.full(out_y.size, np.inf)
    margin = math.ceil(reach)
    for cell in range(1, count + 1):
        region = labels == cell
        edge = _boundary(region)
        by, bx = np.nonzero(edge)
        if by.size == 0:
            continue
        top, bottom = max(by.min() - margin, 0), min(by.max() + margin, height - 1)
        left, right = max(bx.min() - margin, 0), min(bx.max() + margin, width - 1)
        near = np.flatnonzero(
            (out_y >= top) & (out_y <= bottom) & (out_x >= left) & (out_x <= right)
        )
        if near.size == 0:
            continue
        points = np.stack([by, bx], axis=1).astype(np.float64)
        distance = np.empty(near.size)
        chunk = max(1, 2_000_000 // points.shape[0])
        for start in range(0, near.size, chunk):
            index = near[start : start + chunk]
            dy = out_y[index, None] - points[None, :, 0]
            dx = out_x[index, None] - points[None, :, 1]
            distance[start : start + chunk] = np.sqrt((dy * dy + dx * dx).min(axis=1))
        closer = distance < nearest[near]
        second[near] = np.where(closer, nearest[near], np.minimum(second[near], distance))
        nearest[near] = np.minimum(nearest[near], distance)
    return nearest + second
