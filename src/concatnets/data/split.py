"""Deterministic train/validation splits."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["MIN_VALIDATION_SAMPLES", "small_validation_message", "split_indices"]

MIN_VALIDATION_SAMPLES = 10
"""Fewer validation samples than this get a notice: their metrics move in big steps."""


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


def small_validation_message(
    val_count: int,
    total: int,
    val_fraction: float,
    *,
    val_folder: str | None = None,
    kind: str = "image",
) -> str | None:
    """A notice for a validation set below :data:`MIN_VALIDATION_SAMPLES`, else None.

    An empty one (``--val-fraction 0``) was asked for and gets none.

    >>> small_validation_message(2, 8, 0.2)[:52]
    'the validation split holds only 2 of 8 images (--val'

    Args:
        val_count: Validation samples.
        total: Samples of the training data (validation split included).
        val_fraction: The ``--val-fraction`` used for the split.
        val_folder: The ``--val-data`` folder, when validation has its own.
        kind: ``'image'`` or ``'volume'``.
    """
    if val_count == 0 or val_count >= MIN_VALIDATION_SAMPLES:
        return None
    consequence = "its metrics move in big steps and choose the best checkpoint on little evidence"
    if val_folder is not None:
        return (
            f"--val-data {val_folder} holds only {val_count} {kind}(s): {consequence}; "
            f"add {kind}s to it (at least {MIN_VALIDATION_SAMPLES} are advised)"
        )
    advice = f"add {kind}s or pass --val-data FOLDER"
    needed = MIN_VALIDATION_SAMPLES / max(total, 1)
    if needed <= 0.5:
        advice = f"raise --val-fraction (e.g. {math.ceil(needed * 20) / 20:g}), {advice}"
    return (
        f"the validation split holds only {val_count} of {total} {kind}s (--val-fraction "
        f"{val_fraction:g}): {consequence}; {advice}"
    )
