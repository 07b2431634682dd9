"""``concatenate`` on torch tensors: numpy's semantics, devices, and autograd through ``out``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from numpy.exceptions import AxisError

from concatnets import concatenate
from concatnets.ops._dtypes import can_cast, result_type


def _double(*shape: int, requires_grad: bool = True) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, requires_grad=requires_grad)


def test_matches_torch_cat_without_out() -> None:
    a, b = torch.randn(2, 3), torch.randn(2, 5)
    torch.testing.assert_close(concatenate((a, b), axis=1), torch.cat((a, b), 1))


def test_axis_none_flattens_and_accepts_zero_dim() -> None:
    result = concatenate((torch.tensor(1), torch.arange(2, 4).view(2, 1)), axis=None)
    assert result.tolist() == [1, 2, 3]


def test_negative_axis() -> None:
    a, b = torch.randn(2, 3, 4), torch.randn(2, 3, 1)
    assert concatenate((a, b), axis=-1).shape == (2, 3, 5)


def test_zero_dim_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"zero-dimensional"):
        concatenate((torch.tensor(1.0), torch.tensor(2.0)))


def test_axis_out_of_range_raises_numpys_axis_error() -> None:
    with pytest.raises(AxisError, match=r"\[-2, 1\]"):
        concatenate((torch.zeros(2, 2), torch.zeros(2, 2)), axis=-3)


def test_empty_one_dimensional_tensor_is_not_silently_skipped() -> None:
    # torch.cat skips 1-D empty tensors for backward compatibility; numpy does not.
    with pytest.raises(ValueError, match=r"index 0 has 2 dimension\(s\) and the array at index 1"):
        concatenate((torch.zeros(2, 2), torch.zeros(0)))


def test_spatial_mismatch_message_suggests_crop_or_pad() -> None:
    skip, upsampled = torch.zeros(1, 8, 46, 46), torch.zeros(1, 8, 46, 45)
    with pytest.raises(ValueError) as info:
        concatenate((skip, upsampled), axis=1)
    message = str(info.value)
    assert "along dimension 3, the array at index 0 has size 46 and the array at index 1" in message
    assert "center_crop_to(x, ref)" in message


def test_promotion_follows_numpy_not_torch() -> None:
    result = concatenate((torch.ones(1, dtype=torch.int64), torch.ones(1, dtype=torch.float32)))
    assert result.dtype == torch.float64  # torch.cat would give float32


def test_dtype_argument_accepts_torch_and_numpy_dtypes() -> None:
    pair = (torch.ones(2), torch.ones(2))
    assert concatenate(pair, dtype=torch.float64).dtype == torch.float64
    assert concatenate(pair, dtype=np.float16).dtype == torch.float16
    assert concatenate(pair, dtype="complex64").dtype == torch.complex64


def test_dtype_casting_rules_are_numpys() -> None:
    pair = (torch.ones(2), torch.ones(2))
    with pytest.raises(TypeError, match=r"Array 0 \(float32\) may not become int32 under"):
        concatenate(pair, dtype=torch.int32)
    assert concatenate(pair, dtype=torch.int32, casting="unsafe").dtype == torch.int32


def test_out_and_dtype_together_raise_type_error() -> None:
    with pytest.raises(TypeError, match=r"^concatenate\(\) only takes `out` or `dtype`.*drop"):
        concatenate((torch.ones(2),), out=torch.empty(2), dtype=torch.float32)


def test_out_wrong_shape_is_not_resized() -> None:
    out = torch.empty(3, 3)
    with pytest.raises(ValueError, match=r"shape \(3, 3\) but the result has shape \(4, 3\)"):
        concatenate((torch.ones(2, 3), torch.ones(2, 3)), out=out)
    assert out.shape == (3, 3)


def test_out_casting_error_with_tensors() -> None:
    with pytest.raises(TypeError, match=r"Array 0 \(float32\) may not become int64"):
        concatenate((torch.ones(2),), out=torch.empty(2, dtype=torch.int64))


def test_out_with_unsafe_casting_truncates_like_numpy() -> None:
    out = torch.empty(2, dtype=torch.int8)
    concatenate((torch.tensor([1.7]), torch.tensor([-2.2])), out=out, casting="unsafe")
    assert out.tolist() == [1, -2]


def test_numpy_out_with_tensor_inputs_raises_type_error() -> None:
    with pytest.raises(TypeError, match=r"pass a torch tensor as `out`"):
        concatenate((torch.ones(2),), out=np.empty(2))


def test_device_mismatch_names_index_and_devices() -> None:
    cpu, meta = torch.ones(2), torch.ones(2, device="meta")
    with pytest.raises(ValueError, match=r"array 2 is on meta but array 0 is on cpu"):
        concatenate((cpu, cpu, meta))
    with pytest.raises(ValueError, match=r"`out` is on meta but the inputs are on cpu"):
        concatenate((cpu,), out=torch.empty(2, device="meta"))


def test_result_stays_on_the_inputs_device() -> None:
    tensors = (torch.ones(2, device="meta"), torch.ones(3, device="meta"))
    result = concatenate(tensors)
    assert result.device.type == "meta" and result.shape == (5,)


class TestBfloat16Rules:
    def test_small_integers_fit_in_bfloat16(self) -> None:
        assert result_type([torch.bfloat16, torch.int8, torch.uint8]) == torch.bfloat16
        assert can_cast(torch.int8, torch.bfloat16, "safe")
        assert not can_cast(torch.int16, torch.bfloat16, "safe")

    def test_float16_and_bfloat16_meet_in_float32(self) -> None:
        assert result_type([torch.bfloat16, torch.float16]) == torch.float32
        assert not can_cast(torch.float16, torch.bfloat16, "safe")
        assert not can_cast(torch.bfloat16, torch.float16, "safe")
        assert can_cast(torch.bfloat16, torch.float16, "same_kind")

    def test_bfloat16_widens_like_float32(self) -> None:
        assert result_type([torch.bfloat16, torch.int32]) == torch.float64
        assert can_cast(torch.bfloat16, torch.float32, "safe")
        assert not can_cast(torch.bfloat16, torch.int64, "same_kind")

    def test_concatenate_uses_these_rules(self) -> None:
        mixed = (torch.ones(1, dtype=torch.bfloat16), torch.ones(1, dtype=torch.float16))
        assert concatenate(mixed).dtype == torch.float32


def test_dtypes_without_numpy_twin_need_no_conversion_or_unsafe() -> None:
    fp8 = torch.zeros(2, dtype=torch.float8_e4m3fn)
    assert concatenate((fp8, fp8)).dtype == torch.float8_e4m3fn
    with pytest.raises(TypeError, match=r"float8_e4m3fn has no numpy equivalent"):
        concatenate((fp8, torch.zeros(2)))


class TestAutogradThroughOut:
    @pytest.mark.parametrize(
        ("axis", "out_shape"), [(0, (6, 3)), (1, (2, 9)), (-1, (2, 9)), (None, (18,))]
    )
    def test_gradcheck(self, axis: int | None, out_shape: tuple[int, ...]) -> None:
        inputs = (_double(2, 3), _double(2, 3), _double(2, 3))

        def function(*tensors: torch.Tensor) -> torch.Tensor:
            out = torch.empty(out_shape, dtype=torch.float64)
            return concatenate(tensors, axis=axis, out=out)

        assert torch.autograd.gradcheck(function, inputs)
        assert torch.autograd.gradgradcheck(function, inputs)

    def test_gradcheck_with_only_some_inputs_requiring_grad(self) -> None:
        constant = _double(2, 2, requires_grad=False)

        def function(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return concatenate((a, constant, b), axis=1, out=torch.empty(2, 7).double())

        assert torch.autograd.gradcheck(function, (_double(2, 1), _double(2, 4)))

    def test_torch_cat_refuses_what_we_allow(self) -> None:
        a = _double(2, 2)
        with pytest.raises(RuntimeError):
            torch.cat((a, a), out=torch.empty(4, 2, dtype=torch.float64))
        out = torch.empty(4, 2, dtype=torch.float64)
        assert concatenate((a, a), out=out) is out and out.requires_grad

    def test_out_as_view_of_a_shared_buffer(self) -> None:
        # The memory engine's pattern: features written side by side into one buffer.
        buffer = torch.zeros(2, 8, dtype=torch.float64)
        first, second = _double(2, 3), _double(2, 2)
        view = buffer[:, :5]
        assert concatenate((first, second), axis=1, out=view) is view
        weight = torch.arange(16, dtype=torch.float64).view(2, 8)
        (buffer * weight).sum().backward()
        torch.testing.assert_close(first.grad, weight[:, :3])
        torch.testing.assert_close(second.grad, weight[:, 3:5])

    def test_gradcheck_through_a_buffer_view(self) -> None:
        def function(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            buffer = torch.zeros(3, 9, dtype=torch.float64)
            concatenate((a, b), axis=1, out=buffer[:, 2:7])
            return buffer * 2

        assert torch.autograd.gradcheck(function, (_double(3, 2), _double(3, 3)))

    def test_inputs_already_in_place_in_the_buffer(self) -> None:
        buffer = torch.zeros(1, 6)
        grown = _double(1, 2).float()
        concatenate((grown,), axis=1, out=buffer[:, :2])
        new = torch.randn(1, 4, requires_grad=True)
        result = concatenate((buffer[:, :2], new), axis=1, out=buffer[:, :6])
        torch.testing.assert_close(result[:, :2], grown)
        result.sum().backward()
        torch.testing.assert_close(new.grad, torch.ones(1, 4))

    def test_inputs_overlapping_out_are_read_before_writing(self) -> None:
        buffer = torch.arange(6.0)
        # Writes shift the data; without a snapshot the second piece would be clobbered.
        concatenate((buffer[2:4], buffer[0:2]), out=buffer[0:4])
        assert buffer.tolist() == [2.0, 3.0, 0.0, 1.0, 4.0, 5.0]

    def test_leaf_gradients_do_not_pin_the_whole_gradient(self) -> None:
        a, b = torch.randn(1000, 4, requires_grad=True), torch.randn(1, 4, requires_grad=True)
        weight = torch.randn(1001, 4)  # a dense gradient (the gradient of .sum() is expanded)
        (concatenate((a, b), out=torch.empty(1001, 4)) * weight).sum().backward()
        assert b.grad.untyped_storage().nbytes() == b.numel() * b.element_size()
        torch.testing.assert_close(b.grad, weight[1000:])

    def test_gradient_is_cast_back_to_each_inputs_dtype(self) -> None:
        a = torch.randn(2, requires_grad=True)
        out = torch.empty(4, dtype=torch.float64)
        concatenate((a, torch.zeros(2)), out=out).sum().backward()
        assert a.grad.dtype == torch.float32

    def test_previous_history_of_out_gets_no_gradient(self) -> None:
        source = torch.randn(3, requires_grad=True)
        out = source * 2
        concatenate((_double(3).float(),), out=out).sum().backward()
        assert source.grad is None

    def test_leaf_out_that_requires_grad_is_rejected(self) -> None:
        out = torch.zeros(2, requires_grad=True)
        with pytest.raises(RuntimeError, match=r"leaf tensor that requires grad.*detach"):
            concatenate((torch.ones(2, requires_grad=True),), out=out)

    def test_view_made_under_no_grad_is_explained(self) -> None:
        buffer = torch.zeros(2, 4)
        with torch.no_grad():
            view = buffer[:, :2]
        with pytest.raises(RuntimeError, match=r"grad mode enabled"):
            concatenate((torch.ones(2, 2, requires_grad=True),), axis=1, out=view)

    def test_no_grad_mode_records_nothing(self) -> None:
        out = torch.empty(2)
        with torch.no_grad():
            concatenate((torch.ones(2, requires_grad=True),), out=out)
        assert not out.requires_grad

    def test_integer_out_stops_gradients(self) -> None:
        out = torch.empty(2, dtype=torch.int64)
        result = concatenate((torch.ones(2, requires_grad=True),), out=out, casting="unsafe")
        assert result is out and not result.requires_grad


_T = torch.tensor
TENSOR_BAD_CALLS: dict[str, tuple[Any, dict[str, Any]]] = {
    "empty": ((), {}),
    "zero_dim": ((np.array(1.0), np.array(2.0)), {}),
    "axis_too_big": ((np.zeros((2, 2)), np.zeros((1, 2))), {"axis": 2}),
    "ndim_mismatch": ((np.zeros(2), np.zeros((2, 2))), {}),
    "size_mismatch": ((np.zeros((2, 2)), np.zeros((1, 2))), {"axis": 1}),
    "feature_map": ((np.zeros((1, 2, 4, 4)), np.zeros((1, 2, 4, 3))), {"axis": 1}),
    "out_wrong_shape": ((np.zeros((2, 2)), np.zeros((1, 2))), {"out": np.zeros((2, 2))}),
    "out_wrong_ndim": ((np.zeros((2, 2)), np.zeros((1, 2))), {"out": np.zeros(6)}),
    "out_flat_size": ((np.zeros(2), np.zeros(2)), {"axis": None, "out": np.zeros(5)}),
    "out_flat_2d": ((np.zeros(2), np.zeros(2)), {"axis": None, "out": np.zeros((2, 2))}),
    "cast_dtype": ((np.zeros(2), np.zeros(2)), {"dtype": np.int64}),
    "cast_out": ((np.zeros(2),), {"out": np.zeros(2, dtype=np.int32)}),
    "casting_rule": ((np.zeros(2),), {"casting": "sometimes"}),
    "out_and_dtype": ((np.zeros(2),), {"out": np.zeros(2), "dtype": np.float64}),
}


@pytest.mark.parametrize("name", list(TENSOR_BAD_CALLS))
def test_tensor_errors_start_with_the_sentence_numpy_gives_for_the_same_call(name: str) -> None:
    arrays, kwargs = TENSOR_BAD_CALLS[name]
    with pytest.raises(Exception) as numpy_info:
        np.concatenate(arrays, **kwargs)
    tensor_kwargs = {k: _T(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    if "dtype" in tensor_kwargs and "out" not in kwargs:
        tensor_kwargs["casting"] = "same_kind"
    with pytest.raises(type(numpy_info.value)) as info:
        concatenate([_T(a) for a in arrays], **tensor_kwargs)
    assert str(info.value).startswith(str(numpy_info.value)), (info.value, numpy_info.value)
    assert len(str(info.value)) > len(str(numpy_info.value)) + 20
