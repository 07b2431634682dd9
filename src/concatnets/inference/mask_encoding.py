"""Which pixel value each predicted class gets in a written mask.

Class indices 0, 1, ... look black in an image viewer, so PNG masks are written
*viewable* by default: with the training masks' own values where the run recorded a
value map that reaches the upper half of 0..255 (e.g. 0/255), otherwise with the classes
spread evenly over 0..255 (two classes: 0/255; three: 0/128/255). Class indices, or
the training masks' values whatever they are, are written on request.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["ENCODINGS", "class_value_table", "describe_table", "stored_value_table"]

ENCODINGS = ("viewable", "original", "indices")
_VISIBLE = 128  # stored values reaching this are told apart from black in a viewer


def stored_value_table(
    mask_values: Mapping[str, int] | None, num_classes: int
) -> np.ndarray | None:
    """Class -> smallest stored training-mask value mapping to it, or ``None`` without a map.

    Args:
        mask_values: The run's ``mask_values`` metadata (stored value -> class).
        num_classes: Classes the model predicts.
    """
    if not mask_values:
        return None
    table = np.arange(num_classes, dtype=np.int64)
    for stored, klass in sorted(((int(k), int(v)) for k, v in mask_values.items()), reverse=True):
        if 0 <= klass < num_classes:
            table[klass] = stored
    return table


def _spread(num_classes: int) -> np.ndarray:
    if num_classes > 256:
        return np.arange(num_classes, dtype=np.int64)  # no room to spread: 16-bit indices
    return np.round(np.arange(num_classes) * 255 / max(num_classes - 1, 1)).astype(np.int64)


def class_value_table(num_classes: int, stored: np.ndarray | None, encoding: str) -> np.ndarray:
    """Value written for each class, as the smallest unsigned dtype that holds them.

    Args:
        num_classes: Classes the model predicts.
        stored: :func:`stored_value_table` of the run, or ``None``.
        encoding: ``'viewable'`` (stored values when they reach 128, else spread over
            0..255), ``'original'`` (stored values, else class indices) or ``'indices'``.
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"mask encoding {encoding!r}: choose one of {', '.join(ENCODINGS)}")
    if encoding == "indices" or (encoding == "original" and stored is None):
        table = np.arange(num_classes, dtype=np.int64)
    elif encoding == "original" or (stored is not None and int(stored.max()) >= _VISIBLE):
        table = np.asarray(stored, dtype=np.int64)
    else:
        table = _spread(num_classes)
    if table.min(initial=0) < 0 or table.max(initial=0) > np.iinfo(np.uint16).max:
        return table  # unusual stored values: kept exactly
    return table.astype(np.uint8 if table.max(initial=0) < 256 else np.uint16)


def describe_table(table: np.ndarray, class_names: list[str]) -> str:
    """``'0=background, 255=cell'``; long lists are cut after eight classes."""
    pairs = [f"{int(v)}={name}" for v, name in zip(table, class_names, strict=False)]
    return ", ".join(pairs[:8]) + (f", ... ({len(pairs)} classes)" if len(pairs) > 8 else "")
