"""The engine's timed choices as JSON rows: recorded with a run, restored when it resumes.

The layout (:mod:`concatnets.engine.layout_choice`) and the 1x1 convolution kernel
(:mod:`concatnets.engine.pointwise_choice`) are chosen by timing at first use. When the
candidates time within the probes' tolerance, a new process may choose the other one and
change the last bits of every result; a resumed run restores the choices its checkpoint
recorded, so it continues exactly as the uninterrupted run would have. Only probe results
are restored: an override (``CONCATNETS_LAYOUT``, ``set_layout``, ...) still wins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from concatnets.engine import layout_choice, pointwise_choice

__all__ = ["engine_choice_rows", "restore_engine_choices"]


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"engine choice names an unknown dtype {name!r}")
    return dtype


def engine_choice_rows() -> dict[str, list[dict[str, Any]]]:
    """The probe results of this process: ``{"layout": [...], "pointwise": [...]}``."""
    return {
        "layout": [
            {
                "device": key.device,
                "spatial_rank": key.spatial_rank,
                "dtype": str(key.dtype).removeprefix("torch."),
                "threads": key.threads,
                "layout": decision.layout,
            }
            for key, decision in layout_choice.probed_decisions().items()
        ],
        "pointwise": [
            {
                "device": key.device,
                "dtype": str(key.dtype).removeprefix("torch."),
                "channels_last": key.channels_last,
                "threads": key.threads,
                "kernel": decision.kernel,
            }
            for key, decision in pointwise_choice.probed_decisions().items()
        ],
    }


def restore_engine_choices(rows: Mapping[str, Sequence[Mapping[str, Any]]]) -> int:
    """Take the choices in ``rows`` (from :func:`engine_choice_rows`) as this process's
    probe results, so nothing is timed again for their keys; returns how many.

    Raises:
        ValueError: A row is malformed (names the field).
    """
    restored = 0
    try:
        for row in rows.get("layout", []):
            key = layout_choice.LayoutKey(
                str(row["device"]),
                int(row["spatial_rank"]),
                _dtype(row["dtype"]),
                int(row["threads"]),
            )
            layout_choice.pin_probed(key, str(row["layout"]))
            restored += 1
        for row in rows.get("pointwise", []):
            key = pointwise_choice.PointwiseKey(
                str(row["device"]),
                _dtype(row["dtype"]),
                bool(row["channels_last"]),
                int(row["threads"]),
            )
            pointwise_choice.pin_probed(key, str(row["kernel"]))
            restored += 1
    except (KeyError, TypeError) as error:
        raise ValueError(f"engine choice row is malformed ({error!r})") from error
    return restored
