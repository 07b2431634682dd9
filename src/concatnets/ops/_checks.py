"""Argument and shape checks for ``concatenate``, with numpy's exceptions and sentences.

The checks run in the order numpy's C implementation runs its own, so that for any call
the first problem reported here is the one numpy reports, with the same exception class.
Each message starts with numpy's own sentence (code that matches numpy's messages keeps
working, for tensors too) and goes on with what to do; the added part is kept on the
exception as ``fix`` so numpy inputs can append it to the message numpy itself raised.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import TypeVar

from numpy.exceptions import AxisError

from concatnets.ops._dtypes import CASTING_RULES

__all__ = [
    "add_fix",
    "as_array_list",
    "casting_error",
    "check_casting_rule",
    "check_out_shape",
    "check_shapes",
    "numpy_error_with_fix",
    "parse_axis",
    "reject_out_with_dtype",
]

Shape = tuple[int, ...]

# Feature maps are (N, C, *spatial): 4-D for images, 5-D for volumes.
_FEATURE_MAP_NDIMS = (4, 5)
_FIRST_SPATIAL_DIM = 2

ErrorT = TypeVar("ErrorT", bound=Exception)


def numpy_error_with_fix(kind: type[ErrorT], numpy_sentence: str, fix: str) -> ErrorT:
    """``kind`` with numpy's sentence first and ``fix`` after it (also kept as ``.fix``).

    Args:
        kind: The exception class numpy raises for this problem.
        numpy_sentence: numpy's message for it, word for word.
        fix: What to do, in our words.
    """
    error = kind(_joined(numpy_sentence, fix))
    error.fix = fix  # type: ignore[attr-defined]
    return error


def _joined(sentence: str, fix: str) -> str:
    return f"{sentence} {fix}" if sentence.endswith(".") else f"{sentence}. {fix}"


def add_fix(numpy_error: Exception, diagnosis: Exception) -> Exception:
    """numpy's own exception text followed by the fix our diagnosis found.

    Args:
        numpy_error: What ``numpy.concatenate`` raised.
        diagnosis: The same problem found by the checks here (carrying ``fix``).
    """
    fix = getattr(diagnosis, "fix", None)
    if fix is None:
        return diagnosis
    return type(numpy_error)(_joined(str(numpy_error), fix))


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
    raise numpy_error_with_fix(
        TypeError,
        "The first input argument needs to be a sequence",
        f"concatenate got {kind}; pass a list or tuple such as concatenate((a, b)) "
        "(materialize generators with list()).",
    )


def parse_axis(axis: object) -> int | None:
    """``axis`` as an int or None; TypeError (as numpy) for floats, strings and bools."""
    if axis is None:
        return None
    if isinstance(axis, bool):
        raise numpy_error_with_fix(
            TypeError,
            "an integer is required for the axis",
            f"concatenate got the bool {axis}; pass e.g. axis=1 (or axis=None to flatten).",
        )
    try:
        return operator.index(axis)  # type: ignore[arg-type]
    except TypeError as not_an_index:
        raise numpy_error_with_fix(
            TypeError,
            str(not_an_index),
            f"The axis must be an integer or None, got {axis!r}; pass e.g. axis=1 "
            "(or axis=None to flatten).",
        ) from None


def check_casting_rule(casting: object) -> str:
    """``casting`` itself, after checking it names one of numpy's rules (ValueError)."""
    if casting not in CASTING_RULES:
        choices = ", ".join(repr(rule) for rule in CASTING_RULES)
        raise numpy_error_with_fix(
            ValueError,
            f"casting must be one of {choices} (got {casting!r})",
            "Pass one of these names; the default, 'same_kind', allows float64 -> float32 but "
            "not float -> int.",
        )
    return casting  # type: ignore[return-value]


def reject_out_with_dtype(out: object, dtype: object) -> None:
    """TypeError, as numpy, when both ``out`` and ``dtype`` are given."""
    if out is not None and dtype is not None:
        raise numpy_error_with_fix(
            TypeError,
            "concatenate() only takes `out` or `dtype` as an argument, but both were provided.",
            f"With `out` the result takes out's dtype ({getattr(out, 'dtype', '?')}); "
            "drop `dtype`, or drop `out`.",
        )


def _normalize_axis(axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise numpy_error_with_fix(
            AxisError,
            f"axis {axis} is out of bounds for array of dimension {ndim}",
            f"Use an axis in [{-ndim}, {ndim - 1}], or axis=None to flatten the arrays first.",
        )
    return axis % ndim


def _size_mismatch(
    index: int, dim: int, size: int, expected: int, axis: int, ndim: int
) -> Exception:
    sentence = (
        "all the input array dimensions except for the concatenation axis must match exactly, "
        f"but along dimension {dim}, the array at index 0 has size {expected} and the array "
        f"at index {index} has size {size}"
    )
    if ndim in _FEATURE_MAP_NDIMS and dim >= _FIRST_SPATIAL_DIM:
        fix = (
            f"Array {index} differs from array 0 in spatial dimension {dim} (the concatenation "
            f"axis is {axis}); for (N, C, *spatial) feature maps crop or pad to a common size: "
            "concatnets.center_crop_to(x, ref) or concatnets.pad_to(x, ref)."
        )
    else:
        fix = (
            f"Slice or pad array {index} to size {expected} in dimension {dim}, or "
            f"concatenate along a different axis than {axis}."
        )
    return numpy_error_with_fix(ValueError, sentence, fix)


def check_shapes(shapes: Sequence[Shape], axis: int | None) -> tuple[int | None, Shape]:
    """Check that arrays of these shapes can be concatenated along ``axis``.

    Args:
        shapes: shape of every input, in order.
        axis: the parsed axis; None flattens every input first.

    Returns:
        The axis made non-negative (None stays None) and the shape of the result.
    """
    if not shapes:
        raise numpy_error_with_fix(
            ValueError,
            "need at least one array to concatenate",
            "concatenate got an empty sequence; pass a list or tuple of arrays.",
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
        raise numpy_error_with_fix(
            ValueError,
            "zero-dimensional arrays cannot be concatenated",
            "Array 0 is a scalar, which has no axis to join along; give it one with "
            "x.reshape(1), or pass axis=None to flatten every input.",
        )
    axis = _normalize_axis(axis, ndim)
    for index, shape in enumerate(shapes[1:], start=1):
        if len(shape) != ndim:
            raise numpy_error_with_fix(
                ValueError,
                "all the input arrays must have same number of dimensions, but the array at "
                f"index 0 has {ndim} dimension(s) and the array at index {index} has "
                f"{len(shape)} dimension(s)",
                "Add or remove axes first (x[None], x.reshape(...), x.squeeze(...)), or pass "
                "axis=None to flatten them.",
            )
        if shape[:axis] == reference[:axis] and shape[axis + 1 :] == reference[axis + 1 :]:
            continue  # the common case, checked without a Python loop over dimensions
        for dim, (size, expected) in enumerate(zip(shape, reference, strict=True)):
            if dim == axis or size == expected:
                continue
            raise _size_mismatch(index, dim, size, expected, axis, ndim)
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
        raise numpy_error_with_fix(
            ValueError,
            "Output array must be 1D" if len(out_shape) != 1 else "Output array is the wrong size",
            f"With axis=None the result is 1-D of size {result_shape[0]}, but `out` has shape "
            f"{out_shape}; pass a 1-D `out` of that size (a flat view of a contiguous buffer "
            "works: buf.reshape(-1)).",
        )
    raise numpy_error_with_fix(
        ValueError,
        "Output array has wrong dimensionality"
        if len(out_shape) != len(result_shape)
        else "Output array is the wrong shape",
        f"`out` has shape {out_shape} but the result has shape {result_shape}; `out` must "
        f"have exactly the result's shape, e.g. allocate it with empty({result_shape}).",
    )


def casting_error(
    index: int, source: str, target: str, casting: str, *, scalar: bool = False
) -> TypeError:
    """The TypeError numpy raises when an input may not be cast to the result's dtype.

    Args:
        index: position of the offending input.
        source: name of its dtype.
        target: name of the result's dtype.
        casting: the casting rule in force.
        scalar: the input is zero-dimensional (numpy then says "scalar", not "array data").
    """
    return numpy_error_with_fix(
        TypeError,
        f"Cannot cast {'scalar' if scalar else 'array data'} from dtype('{source}') to "
        f"dtype('{target}') according to the rule {casting!r}",
        f"Array {index} ({source}) may not become {target} under casting={casting!r}; pass "
        "casting='unsafe' to allow it, or choose a result dtype (dtype=... or an `out` of a "
        f"dtype) that holds {source} values.",
    )
