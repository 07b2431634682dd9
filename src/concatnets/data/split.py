"""Deterministic train/validation splits."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["split_indices"]


def split_indices(
    count: int,
    val_fraction: float,
    seed: int,
    labels: Sequence[int] | None = None,
) -> tuple[list[int], list[int]]:
    """Split ``range(count)`` into sorted train and validation indices.

    The same ``(count, val_fraction, seed, labels)`` always gives the same split.
    With ``labels`` the split is stratified: each class gives the same fraction.

    >>> split_indices(10, 0.2, seed=0) == split_indices(10, 0.2, seed=0)
    True

    Args:
        count: Number of samples.
        val_fraction: Fraction in [0, 1) held out for validation; at least one sample
            is held out when it is positive and there are two or more samples.
        seed: Seed of the permutation.
        labels: Optional class of each sample, for a stratified split.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"--val-fraction {val_fraction} must be in [0, 1); e.g. 0.2")
    if count == 0:
        return [], []
    rng = np.random.default_rng(seed)
    groups: list[np.ndarray]
    if labels is None:
        groups = [np.arange(count)]
    else:
        if len(labels) != count:
            raise ValueError(f"got {len(labels)} labels for {count} samples")
        values = np.asarray(labels)
        groups = [np.flatnonzero(values == v) for v in np.unique(values)]
    val: list[int] = []
    for group in groups:
        order = rng.permutation(group)
        take = round(len(order) * val_fraction)
        val.extend(int(i) for i in order[:take])
    if val_fraction > 0 and not val and count >= 2:
        val.append(int(rng.integers(count)))
    held = set(val)
    train = [i for i in range(count) if i not in held]
    if not train:
        raise ValueError(
            f"--val-fraction {val_fraction} leaves no training samples out of {count}; lower it"
        )
    return train, sorted(val)
