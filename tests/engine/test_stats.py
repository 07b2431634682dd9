"""The engine's elementwise kernels: ReLU, its backward and the fixed-statistics norm-act."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from concatnets.engine.stats import relu_, relu_backward_

REDUCED = [torch.bfloat16, torch.float16]


def every_value(dtype: torch.dtype) -> Tensor:
    """All 65536 bit patterns of a 16-bit float: numbers, zeros, infinities and NaNs."""
    return torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)


def assert_same_values(got: Tensor, expected: Tensor) -> None:
    """Equal values elementwise, NaN where NaN (``-0.0`` and ``+0.0`` count as equal)."""
    both_nan = got.isnan() & expected.isnan()
    assert bool(((got == expected) | both_nan).all())


@pytest.mark.parametrize("dtype", REDUCED)
def test_relu_matches_torch_on_every_value(dtype: torch.dtype) -> None:
    x = every_value(dtype)
    got = relu_(x.clone())
    assert_same_values(got, torch.relu(x))
    assert not bool((got.view(torch.int16) < 0).logical_and(~got.isnan()).any())  # no -0.0


@pytest.mark.parametrize("dtype", [*REDUCED, torch.float32])
def test_relu_works_in_place_on_a_strided_view(dtype: torch.dtype) -> None:
    buffer = torch.randn(3, 8, 5, 5).to(dtype)
    expected = buffer.clone()
    expected[:, 2:6] = torch.relu(expected[:, 2:6])
    view = buffer.narrow(1, 2, 4)
    assert relu_(view) is view
    assert torch.equal(buffer, expected)


@pytest.mark.parametrize("dtype", REDUCED)
def test_relu_backward_matches_torch_except_at_nan(dtype: torch.dtype) -> None:
    y = torch.relu(every_value(dtype))
    grad = torch.randn(y.shape).to(dtype)
    expected = torch.ops.aten.threshold_backward(grad, y, 0)
    got = relu_backward_(grad.clone(), y)
    differs = got.view(torch.int16) != expected.view(torch.int16)
    assert bool(y[differs].isnan().all())  # bit for bit wherever y is a number
    assert int((~y.isnan()).sum()) > 63000  # all but the NaN patterns


def test_relu_backward_float32_is_threshold_backward() -> None:
    y = torch.relu(torch.randn(4, 3, 6, 6))
    grad = torch.randn(y.shape)
    got = relu_backward_(grad.clone(), y)
    assert torch.equal(got, torch.ops.aten.threshold_backward(grad, y, 0))
