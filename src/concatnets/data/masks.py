"""Turning stored mask values into class indices.

Masks are often saved as 0/255 images (a top U-Net complaint): such binary masks are
mapped to classes 0/1 with a notice. Any other value-to-class map can be given
explicitly, e.g. ``--mask-values 0:0,128:1,255:2``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from concatnets.data.notices import notice

__all__ = ["MaskValueMap", "format_mask_values", "infer_mask_value_map", "parse_mask_values"]


class MaskValueMap:
    """Maps stored mask values to class indices ``0..num_classes-1``.

    Args:
        mapping: Stored value -> class index; ``None`` means values are class indices.
        num_classes: Number of classes the masks encode.
    """

    def __init__(self, mapping: dict[int, int] | None, num_classes: int) -> None:
        self.mapping = dict(mapping) if mapping is not None else None
        self.num_classes = num_classes
        if self.mapping is not None:
            self._keys = np.array(sorted(self.mapping), dtype=np.int64)
            self._values = np.array([self.mapping[k] for k in self._keys], dtype=np.int64)

    def __call__(self, mask: np.ndarray, source: str = "mask") -> np.ndarray:
        """Return ``mask`` as int64 class indices; ``source`` names the file in errors."""
        mask = np.asarray(mask, dtype=np.int64)
        if self.mapping is None:
            low, high = int(mask.min(initial=0)), int(mask.max(initial=0))
            if low < 0 or high >= self.num_classes:
                raise ValueError(
                    f"{source}: value {low if low < 0 else high} is not a class index in "
                    f"0..{self.num_classes - 1}; pass --mask-values VALUE:CLASS,... to map it"
                )
            return mask
        positions = np.searchsorted(self._keys, mask)
        positions = np.clip(positions, 0, len(self._keys) - 1)
        known = self._keys[positions] == mask
        if not np.all(known):
            bad = int(mask[~known].flat[0])
            raise ValueError(
                f"{source}: mask value {bad} is not in --mask-values "
                f"{format_mask_values(self.mapping)}; add '{bad}:CLASS' to it"
            )
        return self._values[positions]

    def to_json(self) -> dict[str, int] | None:
        """The mapping with string keys, for configs and checkpoint metadata."""
        return None if self.mapping is None else {str(k): v for k, v in self.mapping.items()}


def format_mask_values(mapping: dict[int, int]) -> str:
    """Format a mapping as ``'0:0,255:1'``."""
    return ",".join(f"{k}:{v}" for k, v in sorted(mapping.items()))


def parse_mask_values(text: str) -> dict[int, int]:
    """Parse ``'0:0,255:1'`` into ``{0: 0, 255: 1}``.

    >>> parse_mask_values("0:0, 255:1")
    {0: 0, 255: 1}

    Args:
        text: Comma-separated ``VALUE:CLASS`` pairs.
    """
    mapping: dict[int, int] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        value, sep, klass = item.partition(":")
        try:
            if not sep:
                raise ValueError
            stored, index = int(value), int(klass)
        except ValueError:
            raise ValueError(
                f"--mask-values item {item!r} is not VALUE:CLASS; write e.g. '0:0,255:1'"
            ) from None
        if index < 0:
            raise ValueError(f"--mask-values item {item!r}: class indices start at 0")
        if stored in mapping:
            raise ValueError(f"--mask-values maps value {stored} twice; keep one entry")
        mapping[stored] = index
    if not mapping:
        raise ValueError("--mask-values is empty; write e.g. '0:0,255:1'")
    return mapping


def infer_mask_value_map(
    values: Iterable[int], explicit: dict[int, int] | None = None
) -> MaskValueMap:
    """Decide how a dataset's stored mask values become classes.

    With ``explicit`` the map is used as given. Masks holding only 0 and 255 are
    read as binary (255 -> class 1) with a notice. Otherwise values are class
    indices and the number of classes is the largest value plus one.

    Args:
        values: Every distinct value seen in the dataset's masks.
        explicit: A user-given value -> class map, or ``None``.
    """
    seen = sorted({int(v) for v in values})
    if explicit is not None:
        unknown = [v for v in seen if v not in explicit]
        if unknown:
            raise ValueError(
                f"masks hold value(s) {unknown} missing from --mask-values "
                f"{format_mask_values(explicit)}; add them as VALUE:CLASS"
            )
        return MaskValueMap(explicit, max(explicit.values()) + 1)
    if seen and seen[-1] == 255 and set(seen) <= {0, 255}:
        notice(
            "masks hold only 0 and 255: reading them as binary, 255 -> class 1 "
            "(pass --mask-values to choose another mapping)"
        )
        return MaskValueMap({0: 0, 255: 1}, 2)
    if seen and seen[0] < 0:
        raise ValueError(
            f"masks hold negative value {seen[0]}; pass --mask-values VALUE:CLASS,... to map it"
        )
    num_classes = max(seen[-1] + 1, 2) if seen else 2
    if num_classes > 64 and len(seen) <= 16:
        raise ValueError(
            f"masks hold values {seen}, which would make {num_classes} classes; "
            "pass --mask-values VALUE:CLASS,... to map them to 0..N-1"
        )
    return MaskValueMap(None, num_classes)
