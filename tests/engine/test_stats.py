"""The engine's elementwise kernels: ReLU, its backward and the fixed-statistics norm-act."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from concatnets.engine.layout import layout_of
from concatnets.engine.stats import NormStats, norm_act, relu_, relu_backward_

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


def reference_norm_act(x: Tensor, weight: Tensor, bias: Tensor, stats: NormStats) -> Tensor:
    """``relu(batch_norm(x))`` with ``stats`` in float64, rounded to ``x``'s dtype once."""
    view = (-1,) + (1,) * (x.dim() - 2)
    scale = (stats.invstd * weight).double().view(view)
    shift = (bias - stats.mean * stats.invstd * weight).double().view(view)
    return torch.relu(x.double() * scale + shift).to(x.dtype)


def some_stats(channels: int) -> tuple[Tensor, Tensor, NormStats]:
    mean, var = torch.randn(channels), torch.rand(channels) + 0.5
    stats = NormStats(mean, var, torch.rsqrt(var + 1e-5), True, 1e-5)
    return torch.rand(channels) + 0.5, torch.randn(channels), stats


# Shapes that make norm_act run in one block, sample by sample, and (the last, a sample of
# more than 2**18 elements) in runs of channels within a sample.
SHAPES = [(3, 6, 5, 5), (4, 12, 48, 48), (2, 48, 96, 96)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("source", ["contiguous", "channel slice", "channels last", "crop"])
def test_norm_act_matches_batch_norm_relu(
    dtype: torch.dtype, shape: tuple[int, ...], source: str
) -> None:
    torch.manual_seed(0)
    n, c, h, w = shape
    full = torch.randn(n, c + 4, h + 2, w + 2).to(dtype)
    if source == "channels last":
        full = full.contiguous(memory_format=torch.channels_last)
    x = {
        "contiguous": full[:, :c, :h, :w].contiguous(),
        "channel slice": full[:, 2 : 2 + c, :h, :w].contiguous().narrow(1, 0, c),
        "channels last": full[:, :c, :h, :w].contiguous(memory_format=torch.channels_last),
        "crop": full[:, 1 : 1 + c, 1 : 1 + h, 1 : 1 + w],
    }[source]
    if source == "channel slice":
        buffer = torch.randn(n, c + 4, h, w).to(dtype)
        buffer.narrow(1, 0, c).copy_(x)
        x = buffer.narrow(1, 0, c)
    weight, bias, stats = some_stats(c)
    expected = reference_norm_act(x, weight, bias, stats)
    got = norm_act(x, weight, bias, stats)
    assert got.dtype == dtype and got.shape == x.shape
    # float32: rounding of the fused multiply-add; bfloat16: one rounding of a float32 value.
    tolerance = {"rtol": 2**-7, "atol": 2**-7} if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(got, expected, **tolerance)
    # Into a channel slice of a buffer, as the engine writes a concatenation; a strided
    # target may take the kernel's general path, which may round differently by an ulp.
    buffer = torch.full((n, c + 3, h, w), float("nan"), dtype=dtype)
    into = buffer.contiguous(memory_format=layout_of(x)).narrow(1, 3, c)
    assert norm_act(x, weight, bias, stats, out=into) is into
    torch.testing.assert_close(into, got)


def test_norm_act_without_activation_keeps_negative_values() -> None:
    x = torch.randn(4, 5, 7, 7)
    weight, bias, stats = some_stats(5)
    y = norm_act(x, weight, bias, stats, activation=False)
    view = (-1, 1, 1)
    expected = (x - stats.mean.view(view)) * (stats.invstd * weight).view(view) + bias.view(view)
    torch.testing.assert_close(y, expected)
    assert bool((y < 0).any())
