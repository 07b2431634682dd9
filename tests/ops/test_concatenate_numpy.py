"""``concatenate`` on numpy inputs: numpy's documented behaviour, clearer messages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from numpy.exceptions import AxisError

from concatnets import concatenate

A = np.array([[1, 2], [3, 4]])
B = np.array([[5, 6]])


def test_article_examples() -> None:
    rows = concatenate((A, B), axis=0)
    np.testing.assert_array_equal(rows, [[1, 2], [3, 4], [5, 6]])
    columns = concatenate((A, B.T), axis=1)
    np.testing.assert_array_equal(columns, [[1, 2, 5], [3, 4, 6]])
    assert isinstance(rows, np.ndarray)


def test_axis_none_flattens_arrays_of_any_shape() -> None:
    result = concatenate((A, np.array([7, 8, 9])), axis=None)
    np.testing.assert_array_equal(result, [1, 2, 3, 4, 7, 8, 9])


def test_axis_none_accepts_scalars() -> None:
    np.testing.assert_array_equal(concatenate((np.array(1), 2.5), axis=None), [1.0, 2.5])


@pytest.mark.parametrize("axis", [-1, -2])
def test_negative_axis_counts_from_the_end(axis: int) -> None:
    x = np.arange(6).reshape(2, 3)
    np.testing.assert_array_equal(concatenate((x, x), axis=axis), np.concatenate((x, x), axis))


def test_lists_and_nested_sequences_are_accepted() -> None:
    np.testing.assert_array_equal(concatenate(([1, 2], (3,))), [1, 2, 3])
    np.testing.assert_array_equal(concatenate([[[1]], [[2.5]]]), [[1.0], [2.5]])


def test_a_2d_array_is_a_sequence_of_rows() -> None:
    np.testing.assert_array_equal(concatenate(A), [1, 2, 3, 4])


def test_out_is_returned_and_filled() -> None:
    out = np.zeros((3, 2))
    result = concatenate((A, B), out=out)
    assert result is out
    np.testing.assert_array_equal(out, [[1, 2], [3, 4], [5, 6]])


def test_dtype_argument_sets_result_dtype() -> None:
    result = concatenate((A, B), dtype=np.float32)
    assert result.dtype == np.float32


def test_unsafe_casting_into_smaller_out() -> None:
    out = np.zeros(2, dtype=np.int8)
    concatenate((np.array([1.7]), np.array([-2.2])), out=out, casting="unsafe")
    np.testing.assert_array_equal(out, [1, -2])


def _numpy_error(call: Callable[[Any], Any]) -> Exception:
    with pytest.raises(Exception) as info:
        call(np.concatenate)
    return info.value


BAD_CALLS: dict[str, Callable[[Any], Any]] = {
    "empty": lambda f: f(()),
    "zero_dim": lambda f: f((np.array(1), np.array(2))),
    "axis_too_big": lambda f: f((A, B), axis=2),
    "axis_too_negative": lambda f: f((A, B), axis=-3),
    "ndim_mismatch": lambda f: f((A, B[0])),
    "size_mismatch": lambda f: f((A, B), axis=1),
    "out_wrong_shape": lambda f: f((A, B), out=np.zeros((2, 2))),
    "out_wrong_ndim": lambda f: f((A, B), out=np.zeros(6)),
    "out_wrong_size_flat": lambda f: f((A, B), axis=None, out=np.zeros(5)),
    "out_2d_flat": lambda f: f((A, B), axis=None, out=np.zeros((2, 3))),
    "out_not_array": lambda f: f((A, B), out=[0] * 6),
    "out_and_dtype": lambda f: f((A, B), out=np.zeros((3, 2)), dtype=float),
    "cast_to_out": lambda f: f((A.astype(float), B), out=np.zeros((3, 2), dtype=int)),
    "cast_to_dtype": lambda f: f((A, B), dtype=np.int8, casting="safe"),
    "cast_no": lambda f: f((A, B.astype(np.float32)), casting="no"),
    "bad_casting_rule": lambda f: f((A, B), casting="sometimes"),
    "float_axis": lambda f: f((A, B), axis=1.0),
    "generator": lambda f: f(x for x in (A, B)),
    "not_a_sequence": lambda f: f(5),
    "bad_dtype": lambda f: f((A, B), dtype="floaty"),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_errors_have_numpys_type(name: str) -> None:
    call = BAD_CALLS[name]
    expected = _numpy_error(call)
    with pytest.raises(type(expected)) as info:
        call(concatenate)
    assert type(info.value) is type(expected)


@pytest.mark.parametrize(
    "name", [name for name in BAD_CALLS if name not in ("bad_dtype", "not_a_sequence")]
)
def test_errors_keep_numpys_sentence_first_then_add_the_fix(name: str) -> None:
    # Code that matches numpy's messages (numpy's own tests do) must keep matching.
    numpy_message = str(_numpy_error(BAD_CALLS[name]))
    with pytest.raises(Exception) as info:
        BAD_CALLS[name](concatenate)
    message = str(info.value)
    assert message.startswith(numpy_message), (message, numpy_message)
    assert len(message) > len(numpy_message) + 20  # a fix follows numpy's sentence


def test_ndim_mismatch_starts_with_numpys_exact_sentence() -> None:
    with pytest.raises(ValueError) as info:
        concatenate((np.zeros(2), np.zeros((2, 2))))
    assert str(info.value).startswith(
        "all the input arrays must have same number of dimensions, but the array at index 0 "
        "has 1 dimension(s) and the array at index 1 has 2 dimension(s)"
    )
    assert "x[None]" in str(info.value)


def test_bad_casting_rule_starts_with_numpys_sentence() -> None:
    with pytest.raises(ValueError, match=r"^casting must be one of 'no', 'equiv'.*Pass one of"):
        concatenate((A, B), casting="sometimes")


def test_size_mismatch_names_array_dimension_and_sizes() -> None:
    x = np.zeros((2, 3))
    with pytest.raises(ValueError) as info:
        concatenate((x, x, np.zeros((2, 3)), np.zeros((4, 3))), axis=1)
    message = str(info.value)
    assert "along dimension 0, the array at index 0 has size 2 and the array at index 3" in message
    assert "has size 4" in message
    assert "center_crop_to" not in message  # not a feature map
    assert "Slice or pad array 3 to size 2 in dimension 0" in message


@pytest.mark.parametrize("spatial", [(46, 46), (8, 46, 46)])
def test_feature_map_spatial_mismatch_suggests_crop_or_pad(spatial: tuple[int, ...]) -> None:
    skip = np.zeros((1, 4, *spatial))
    upsampled = np.zeros((1, 4, *spatial[:-1], 45))
    with pytest.raises(ValueError) as info:
        concatenate((skip, upsampled), axis=1)
    message = str(info.value)
    last = len(spatial) + 1
    assert f"along dimension {last}, the array at index 0 has size 46" in message
    assert "the array at index 1 has size 45" in message
    assert "center_crop_to(x, ref)" in message
    assert "pad_to(x, ref)" in message


def test_feature_map_channel_mismatch_has_no_crop_hint() -> None:
    with pytest.raises(ValueError) as info:
        concatenate((np.zeros((2, 3, 4, 4)), np.zeros((1, 3, 4, 4))), axis=1)
    assert "center_crop_to" not in str(info.value)


def test_ndim_mismatch_names_both_counts() -> None:
    with pytest.raises(ValueError, match=r"index 0 has 2 dimension\(s\) and the array at index 1"):
        concatenate((A, B[0]))


def test_axis_error_says_the_valid_range() -> None:
    with pytest.raises(AxisError, match=r"axis 2 is out of bounds .* \[-2, 1\]"):
        concatenate((A, B), axis=2)


def test_zero_dimensional_error_suggests_axis_none() -> None:
    with pytest.raises(ValueError, match=r"zero-dimensional.*axis=None"):
        concatenate((np.array(1), np.array(2)))


def test_casting_error_names_array_and_dtypes() -> None:
    out = np.zeros((3, 2), dtype=np.int64)
    with pytest.raises(TypeError, match=r"^Cannot cast array data.*Array 1 \(float64\) may not"):
        concatenate((A, B.astype(np.float64)), out=out)


def test_out_shape_error_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"shape \(2, 2\) but the result has shape \(3, 2\)"):
        concatenate((A, B), out=np.zeros((2, 2)))


def test_torch_dtype_with_numpy_inputs_is_rejected() -> None:
    with pytest.raises(TypeError, match=r"numpy.float32"):
        concatenate((A, B), dtype=torch.float32)


@pytest.mark.parametrize(
    "arrays",
    [(A, torch.tensor([[5, 6]])), (torch.tensor([[1, 2]]), B)],
    ids=["numpy_then_tensor", "tensor_then_numpy"],
)
def test_mixed_numpy_and_torch_inputs_raise_type_error(arrays: tuple[Any, ...]) -> None:
    with pytest.raises(TypeError, match=r"torch.as_tensor"):
        concatenate(arrays)


def test_tensor_out_with_numpy_inputs_raises_type_error() -> None:
    with pytest.raises(TypeError, match=r"`out` is a torch tensor"):
        concatenate((A, B), out=torch.zeros(3, 2, dtype=torch.int64))
