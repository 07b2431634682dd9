"""Argument and shape checks for ``concatenate``, with numpy's exception types.

The checks run in the order numpy's C implementation runs its own, so that for any call
the first problem reported here is the one numpy reports, with the same exception class
but a message that names the offending array, dimension and sizes, and says what to do.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

from numpy.exceptions import AxisError

from concatnets.ops._dtypes import CASTING_RULES

__all__ = [
    "as_array_list",
    "casting_error",
    "check_casting_rule",
    "check_out_shape",
    "check_shapes",
    "parse_axis",
    "reject_out_with_dtype",
]

Shape = tuple[int, ...]

# Feature maps are (N, C, *spatial): 4-D for images, 5-D for volumes.
_FEATURE_MAP_NDIMS = (4, 5)
_FIRST_SPATIAL_DIM = 2


def as_array_list(arrays: object) -> list[object]:
    """The inputs as a list, accepting what numpy accepts: any sequence, not a generator.

    Args:
        arrays: the ``arrays`` argument of ``concatenate``.
    """
    if isinstance(arrays, list):
        return arrays
    if hasattr(arrays, "__len__") and hasattr(arrays, "__iter__"):
        try:
            return list(arrays)  # type: ignore[call-overload]
        except TypeError:  # a 0-d array or tensor has __len__ but cannot be iterated
            pass
    kind = type(arrays).__name__
    if getattr(arrays, "ndim", None) == 0:
        kind = f"a zero-dimensional {kind}"
    raise TypeError(
        f"concatenate: `arrays` must be a sequence of arrays, got {kind}; "
        "pass a list or tuple such as concatenate((a, b)) (materialize generators with list())."
    )


def parse_axis(axis: object) -> int | None:
    """``axis`` as an int or None; TypeError (as numpy) for floats, strings and bools."""
    if axis is None:
        return None
    if isinstance(axis, bool):
        raise TypeError(f"concatenate: axis must be an integer or None, got the bool {axis}.")
    try:
        return operator.index(axis)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"concatenate: axis must be an integer or None, got {axis!r} of type "
            f"{type(axis).__name__}; pass e.g. axis=1 (or axis=None to flatten)."
        ) from None


def check_casting_rule(casting: object) -> str:
    """``casting`` itself, after checking it names one of numpy's rules (ValueError)."""
    if casting not in CASTING_RULES:
        choices = ", ".join(repr(rule) for rule in CASTING_RULES)
        raise ValueError(f"concatenate: casting must be one of {choices}, got {casting!r}.")
    return casting  # type: ignore[return-value]


def reject_out_with_dtype(out: object, dtype: object) -> None:
    """TypeError, as numpy, when both ``out`` and ``dtype`` are given."""
    if out is not None and dtype is not None:
        raise TypeError(
            "concatenate: pass either `out` or `dtype`, not both: with `out` the result "
            f"takes out's dtype ({getattr(out, 'dtype', '?')}); drop `dtype`, or drop `out`."
        )


def _normalize_axis(axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise AxisError(
            f"concatenate: axis {axis} is out of bounds for arrays of {ndim} dimensions; "
            f"use an axis in [{-ndim}, {ndim - 1}], or axis=None to flatten the arrays first."
        )
    return axis % ndim


def _size_mismatch_message(index: int, dim: int, size: int, expected: int, axis: int) -> str:
    message = (
        f"concatenate: array {index} has size {size} in dimension {dim} but array 0 has size "
        f"{expected}; all dimensions except the concatenation axis ({axis}) must match."
    )
    return message


def check_shapes(shapes: Sequence[Shape], axis: int | None) -> tuple[int | None, Shape]:
    """Check that arrays of these shapes can be concatenated along ``axis``.

    Args:
        shapes: shape of every input, in order.
        axis: the parsed axis; None flattens every input first.

    Returns:
        The axis made non-negative (None stays None) and the shape of the result.
    """
    if not shapes:
        raise ValueError(
            "concatenate: need at least one array to concatenate, got an empty sequence."
        )
    if axis is None:
        total = 0
        for shape in shapes:
            size = 1
            for extent in shape:
                size *= extent
            total += size
        return None, (total,)
    reference = shapes[0]
    ndim = len(reference)
    if ndim == 0:
        raise ValueError(
            "concatenate: array 0 is zero-dimensional (a scalar) and scalars have no axis to "
            "concatenate along; give it one with x.reshape(1), or pass axis=None to flatten "
            "every input."
        )
    axis = _normalize_axis(axis, ndim)
    for index, shape in enumerate(shapes[1:], start=1):
        if len(shape) != ndim:
            raise ValueError(
                f"concatenate: array {index} has {len(shape)} dimensions but array 0 has "
                f"{ndim}; all arrays must have the same number of dimensions. Add or remove "
                "axes first (x[None], x.reshape(...), x.squeeze(...)), or pass axis=None to "
                "flatten them."
            )
        if shape[:axis] == reference[:axis] and shape[axis + 1 :] == reference[axis + 1 :]:
            continue  # the common case, checked without a Python loop over dimensions
        for dim, (size, expected) in enumerate(zip(shape, reference, strict=True)):
            if dim == axis or size == expected:
                continue
            message = _size_mismatch_message(index, dim, size, expected, axis)
            if ndim in _FEATURE_MAP_NDIMS and dim >= _FIRST_SPATIAL_DIM:
                message += (
                    " For (N, C, *spatial) feature maps crop or pad to a common size: "
                    "concatnets.center_crop_to(x, ref) or concatnets.pad_to(x, ref)."
                )
            else:
                message += (
                    f" Slice or pad array {index} to size {expected} in dimension {dim}, or "
                    "concatenate along a different axis."
                )
            raise ValueError(message)
    result = list(reference)
    result[axis] = sum(shape[axis] for shape in shapes)
    return axis, tuple(result)


def check_out_shape(out_shape: Shape, result_shape: Shape, axis: int | None) -> None:
    """ValueError unless ``out`` has exactly the result's shape (numpy never resizes it).

    Args:
        out_shape: shape of the ``out`` argument.
        result_shape: shape of the concatenation.
        axis: the parsed axis; None means the result is 1-D.
    """
    if out_shape == result_shape:
        return
    if axis is None:
        raise ValueError(
            f"concatenate: with axis=None the result is 1-D of size {result_shape[0]}, but "
            f"`out` has shape {out_shape}; pass a 1-D `out` of that size (a flat view of a "
            "contiguous buffer works: buf.reshape(-1))."
        )
    raise ValueError(
        f"concatenate: `out` has shape {out_shape} but the result has shape {result_shape}; "
        f"`out` must have exactly the result's shape, e.g. allocate it with empty({result_shape})."
    )


def casting_error(index: int, source: str, target: str, casting: str) -> TypeError:
    """The TypeError numpy raises when an input may not be cast to the result's dtype.

    Args:
        index: position of the offending input.
        source: name of its dtype.
        target: name of the result's dtype.
        casting: the casting rule in force.
    """
    return TypeError(
        f"concatenate: cannot cast array {index} from {source} to {target} under "
        f"casting={casting!r}; pass casting='unsafe' to allow it, or choose a result dtype "
        f"(dtype=... or an `out` of a dtype) that holds {source} values."
    )
