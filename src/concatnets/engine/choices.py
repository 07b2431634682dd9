"""The engine's timed choices as JSON rows: recorded with a run, restored when it resumes.

The layout (:mod:`concatnets.engine.layout_choice`) and the 1x1 convolution kernel
(:mod:`concatnets.engine.pointwise_choice`) are chosen by timing at first use. When the
candidates time within the probes' tolerance, a new process may choose the other one and
change the last bits of every result; a resumed run restores the choices its checkpoint
recorded, so it continues exactly as the uninterrupted run would have. Only probe results
are restored: an override (``CONCATNETS_LAYOUT``, ``set_layout``, ...) still wins.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch

from concatnets.engine import layout_choice, pointwise_choice

__all__ = ["engine_choice_rows", "key_from_row", "key_row", "restore_engine_choices"]

KeyT = TypeVar("KeyT", layout_choice.LayoutKey, pointwise_choice.PointwiseKey)


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"engine choice names an unknown dtype {name!r}")
    return dtype


# How each key field is read back from JSON, by its annotation.
_READERS: Mapping[str, Callable[[Any], Any]] = {
    "str": str,
    "int": int,
    "bool": bool,
    "torch.dtype": _dtype,
}


def key_row(key: layout_choice.LayoutKey | pointwise_choice.PointwiseKey) -> dict[str, Any]:
    """A decision key as JSON-ready fields (the dtype by name, e.g. ``"float32"``)."""
    row = dataclasses.asdict(key)
    row["dtype"] = str(key.dtype).removeprefix("torch.")
    return row


def key_from_row(cls: type[KeyT], row: Mapping[str, Any]) -> KeyT:
    """The ``cls`` key whose fields :func:`key_row` wrote into ``row``.

    Raises:
        KeyError: A field is missing.
        ValueError: The dtype is unknown.
    """
    fields = dataclasses.fields(cls)
    return cls(**{f.name: _READERS[str(f.type)](row[f.name]) for f in fields})


def engine_choice_rows() -> dict[str, list[dict[str, Any]]]:
    """The probe results of this process: ``{"layout": [...], "pointwise": [...]}``."""
    return {
        "layout": [
            {**key_row(key), "layout": decision.layout}
            for key, decision in layout_choice.probed_decisions().items()
        ],
        "pointwise": [
            {**key_row(key), "kernel": decision.kernel}
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
            key = key_from_row(layout_choice.LayoutKey, row)
            layout_choice.pin_probed(key, str(row["layout"]))
            restored += 1
        for row in rows.get("pointwise", []):
            key = key_from_row(pointwise_choice.PointwiseKey, row)
            pointwise_choice.pin_probed(key, str(row["kernel"]))
            restored += 1
    except (KeyError, TypeError) as error:
        raise ValueError(f"engine choice row is malformed ({error!r})") from error
    return restored
