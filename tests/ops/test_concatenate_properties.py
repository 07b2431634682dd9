"""Property tests: ``concatenate`` agrees with ``numpy.concatenate`` on generated cases."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from concatnets import concatenate

DTYPES = [
    np.bool_,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.float16,
    np.float32,
    np.float64,
    np.complex64,
]
CASTINGS = ["no", "equiv", "safe", "same_kind", "unsafe"]
TORCH_DTYPES = {
    np.dtype(np.bool_): torch.bool,
    np.dtype(np.int8): torch.int8,
    np.dtype(np.int16): torch.int16,
    np.dtype(np.int32): torch.int32,
    np.dtype(np.int64): torch.int64,
    np.dtype(np.uint8): torch.uint8,
    np.dtype(np.float16): torch.float16,
    np.dtype(np.float32): torch.float32,
    np.dtype(np.float64): torch.float64,
    np.dtype(np.complex64): torch.complex64,
    np.dtype(np.complex128): torch.complex128,
}


@dataclass
class Case:
    arrays: list[np.ndarray]
    axis: int | None
    out: np.ndarray | None
    dtype: Any
    casting: str


def _values(shape: tuple[int, ...], dtype: Any, offset: int) -> np.ndarray:
    # Small non-negative integers convert exactly between all tested dtypes, so even
    # "unsafe" casts are well defined (no overflow, no negative-to-unsigned).
    count = math.prod(shape)
    return ((np.arange(count) + offset) % 5).reshape(shape).astype(dtype)


def _result_shape(arrays: list[np.ndarray], axis: int | None) -> tuple[int, ...] | None:
    try:
        return np.concatenate(arrays, axis=axis, casting="unsafe").shape
    except Exception:
        return None


@st.composite
def cases(draw: st.DrawFn) -> Case:
    ndim = draw(st.integers(0, 3))
    base = draw(st.lists(st.integers(0, 3), min_size=ndim, max_size=ndim))
    axis = draw(st.one_of(st.none(), st.integers(-ndim - 1, ndim)))
    count = draw(st.integers(1, 3))
    arrays = []
    for index in range(count):
        shape = list(base)
        if axis is not None and -ndim <= axis < ndim:
            shape[axis] = draw(st.integers(0, 3))
        mutation = draw(st.sampled_from(["keep"] * 6 + ["resize"] * 2 + ["drop_dim", "add_dim"]))
        if mutation == "resize" and shape:
            shape[draw(st.integers(0, len(shape) - 1))] = draw(st.integers(0, 3))
        elif mutation == "drop_dim" and shape:
            shape.pop()
        elif mutation == "add_dim":
            shape.append(draw(st.integers(1, 2)))
        arrays.append(_values(tuple(shape), draw(st.sampled_from(DTYPES)), index))
    casting = draw(st.sampled_from(CASTINGS))
    target = draw(st.sampled_from(["none", "none", "dtype", "out", "out", "bad_out", "both"]))
    dtype = draw(st.sampled_from(DTYPES)) if target in ("dtype", "both") else None
    out = None
    if target in ("out", "bad_out", "both"):
        shape = _result_shape(arrays, axis) or (2,)
        if target == "bad_out":
            shape = (*shape[:-1], shape[-1] + 1) if shape else (1,)
        out = np.full(shape, 1, dtype=draw(st.sampled_from(DTYPES)))
    return Case(arrays, axis, out, dtype, casting)


def _call(function: Any, arrays: list[Any], case: Case, out: Any, dtype: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # complex -> real casts warn in numpy and torch
        try:
            return function(arrays, axis=case.axis, out=out, dtype=dtype, casting=case.casting)
        except Exception as error:
            return error


def _numpy_reference(case: Case) -> tuple[Any, np.ndarray | None]:
    out = None if case.out is None else case.out.copy()
    return _call(np.concatenate, case.arrays, case, out, case.dtype), out


def _assert_same_error(ours: Any, expected: Exception) -> None:
    assert isinstance(ours, Exception), f"numpy raised {expected!r}, we returned {ours!r}"
    assert type(ours) is type(expected), f"numpy: {expected!r}; ours: {ours!r}"
    # numpy's sentence comes first (code matching numpy's messages keeps working, for
    # tensors too); our checks find every problem numpy reports, so a fix always follows.
    assert str(ours).startswith(str(expected)), (str(ours), str(expected))
    assert len(str(ours)) > len(str(expected)) + 20, str(ours)


@settings(max_examples=300, deadline=None)
@given(case=cases())
def test_numpy_inputs_match_numpy(case: Case) -> None:
    expected, expected_out = _numpy_reference(case)
    out = None if case.out is None else case.out.copy()
    ours = _call(concatenate, case.arrays, case, out, case.dtype)
    if isinstance(expected, Exception):
        _assert_same_error(ours, expected)
        return
    assert not isinstance(ours, Exception), f"numpy returned a result, we raised {ours!r}"
    assert ours.dtype == expected.dtype
    np.testing.assert_array_equal(ours, expected)
    if out is not None:
        assert ours is out
        np.testing.assert_array_equal(out, expected_out)


@settings(max_examples=300, deadline=None)
@given(case=cases(), torch_dtype_argument=st.booleans())
def test_tensor_inputs_match_numpy(case: Case, torch_dtype_argument: bool) -> None:
    expected, _ = _numpy_reference(case)
    tensors = [torch.from_numpy(array.copy()) for array in case.arrays]
    out = None if case.out is None else torch.from_numpy(case.out.copy())
    dtype = case.dtype
    if dtype is not None and torch_dtype_argument:
        dtype = TORCH_DTYPES[np.dtype(dtype)]
    ours = _call(concatenate, tensors, case, out, dtype)
    if isinstance(expected, Exception):
        _assert_same_error(ours, expected)
        return
    assert isinstance(ours, torch.Tensor), f"numpy returned a result, we gave {ours!r}"
    assert ours.dtype == TORCH_DTYPES[expected.dtype]
    np.testing.assert_array_equal(ours.numpy(), expected)
    if out is not None:
        assert ours is out


@pytest.mark.parametrize("axis", [0, 1, -1, None])
@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 3), min_size=1, max_size=4),
    other=st.integers(1, 3),
    flags=st.lists(st.booleans(), min_size=4, max_size=4),
)
def test_out_gradient_equals_torch_cat_gradient(
    axis: int | None, sizes: list[int], other: int, flags: list[bool]
) -> None:
    cat_axis = 0 if axis is None else axis
    shapes = [(size, other) if cat_axis == 0 else (other, size) for size in sizes]
    inputs = [
        torch.randn(shape, dtype=torch.float64, requires_grad=flag)
        for shape, flag in zip(shapes, flags, strict=False)
    ]
    reference = torch.cat([x.reshape(-1) for x in inputs] if axis is None else inputs, cat_axis)
    weight = torch.randn(reference.shape, dtype=torch.float64)
    out = torch.empty(reference.shape, dtype=torch.float64)
    result = concatenate(inputs, axis=axis, out=out)
    assert result is out
    torch.testing.assert_close(result.detach(), reference.detach())
    if not result.requires_grad:
        assert not any(flags[: len(inputs)])
        return
    ours = torch.autograd.grad((result * weight).sum(), [x for x in inputs if x.requires_grad])
    theirs = torch.autograd.grad((reference * weight).sum(), [x for x in inputs if x.requires_grad])
    for mine, expected in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, expected)
