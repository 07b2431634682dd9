"""1x1 convolutions as matrix products (engine.pointwise) equal ATen's convolution."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from concatnets.engine.pointwise import (
    as_matrices,
    is_pointwise,
    pointwise_backward,
    pointwise_forward,
)

_FORMATS = {4: torch.channels_last, 5: torch.channels_last_3d}


def _reference(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, grad: torch.Tensor
):
    x = x.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    b = None if bias is None else bias.detach().clone().requires_grad_()
    conv = F.conv2d if x.dim() == 4 else F.conv3d
    y = conv(x, w, b)
    y.backward(grad)
    return y.detach(), x.grad, w.grad, None if b is None else b.grad


def test_is_pointwise_only_for_plain_1x1_convolutions() -> None:
    assert is_pointwise(nn.Conv2d(4, 2, 1))
    assert is_pointwise(nn.Conv3d(4, 2, 1, dilation=2))
    assert is_pointwise(nn.Conv2d(4, 2, 1, padding="valid"))
    assert not is_pointwise(nn.Conv2d(4, 2, 3, padding=1))
    assert not is_pointwise(nn.Conv2d(4, 2, 1, stride=2))
    assert not is_pointwise(nn.Conv2d(4, 2, 1, padding=1))
    assert not is_pointwise(nn.Conv2d(4, 4, 1, groups=2))
    assert not is_pointwise(nn.ConvTranspose2d(4, 2, 1))


def test_matrix_forms_are_views_of_the_same_memory() -> None:
    buffer = torch.randn(2, 7, 3, 4)
    rows = as_matrices(buffer.narrow(1, 0, 5))  # a channel slice of the default layout
    assert rows is not None and rows.shape == (2, 5, 12)
    assert rows.data_ptr() == buffer.data_ptr()
    torch.testing.assert_close(rows[1, 4], buffer[1, 4].flatten())
    last = buffer.contiguous(memory_format=torch.channels_last)
    pixels = as_matrices(last.narrow(1, 2, 3))  # a channel slice of channels-last
    assert pixels is not None and pixels.shape == (24, 3)
    torch.testing.assert_close(pixels[13], last[1, 2:5, 0, 1])
    assert as_matrices(buffer.transpose(2, 3)) is None  # neither form without a copy
    assert as_matrices(torch.randn(2, 5, 3).transpose(1, 2).transpose(1, 2)) is not None
    assert as_matrices(torch.randn(2, 3, 5).transpose(1, 2)) is None  # 1-D maps: no such format
    assert as_matrices(buffer[:, :, ::2]) is None


@pytest.mark.parametrize("rank", [4, 5])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_forward_and_backward_match_the_convolution_float64(
    rank: int, channels_last: bool, with_bias: bool
) -> None:
    torch.manual_seed(0)
    spatial = (3, 4) if rank == 4 else (2, 3, 2)
    buffer = torch.randn(3, 9, *spatial, dtype=torch.float64)
    if channels_last:
        buffer = buffer.contiguous(memory_format=_FORMATS[rank])
    x = buffer.narrow(1, 1, 6)  # a strided slice, as the engine reads its buffer
    weight = torch.randn(5, 6, *(1,) * (rank - 2), dtype=torch.float64)
    bias = torch.randn(5, dtype=torch.float64) if with_bias else None
    grad = torch.randn(3, 5, *spatial, dtype=torch.float64)
    y_ref, gx_ref, gw_ref, gb_ref = _reference(x, weight, bias, grad)
    y = pointwise_forward(x, weight, bias)
    gx, gw, gb = pointwise_backward(grad, x, weight, has_bias=with_bias)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(gx, gx_ref)
    torch.testing.assert_close(gw, gw_ref)
    assert gw.shape == weight.shape
    if with_bias:
        torch.testing.assert_close(gb, gb_ref)
    else:
        assert gb is None


@pytest.mark.parametrize("channels_last", [False, True])
def test_chunks_accumulate_into_one_output_and_gradients_go_where_told(
    channels_last: bool,
) -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(4, 8, 1, 1, dtype=torch.float64)
    bias = torch.randn(4, dtype=torch.float64)
    out = pointwise_forward(x.narrow(1, 0, 5), weight.narrow(1, 0, 5), bias)
    same = pointwise_forward(
        x.narrow(1, 5, 3), weight.narrow(1, 5, 3), None, out=out, accumulate=True
    )
    assert same is out
    torch.testing.assert_close(out, F.conv2d(x, weight, bias))
    target = torch.full_like(
        x.narrow(1, 0, 5).contiguous(memory_format=torch.contiguous_format), 7.0
    )
    if channels_last:
        target = target.contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(out)
    gx, _, _ = pointwise_backward(
        grad, x.narrow(1, 0, 5), weight.narrow(1, 0, 5), has_bias=False, grad_input=target
    )
    assert gx is target
    torch.testing.assert_close(gx, F.conv_transpose2d(grad, weight.narrow(1, 0, 5)))


def test_gradient_in_the_other_layout_is_converted() -> None:
    torch.manual_seed(2)
    x = torch.randn(2, 6, 4, 4, dtype=torch.float64)
    weight = torch.randn(3, 6, 1, 1, dtype=torch.float64)
    grad = torch.randn(2, 3, 4, 4, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last
    )
    _, gx_ref, gw_ref, _ = _reference(x, weight, None, grad)
    gx, gw, _ = pointwise_backward(grad, x, weight, has_bias=False)
    torch.testing.assert_close(gx, gx_ref)
    torch.testing.assert_close(gw, gw_ref)


def test_bfloat16_runs_in_bfloat16_with_float32_weight_gradients() -> None:
    torch.manual_seed(3)
    x = torch.randn(4, 16, 5, 5)
    weight = torch.randn(8, 16, 1, 1) * 0.25
    grad = torch.randn(4, 8, 5, 5)
    y_ref, gx_ref, gw_ref, _ = _reference(x, weight, None, grad)
    y = pointwise_forward(x.bfloat16(), weight, None)  # weight cast as autocast casts it
    gx, gw, _ = pointwise_backward(grad.bfloat16(), x.bfloat16(), weight, has_bias=False)
    assert y.dtype == gx.dtype == torch.bfloat16 and gw.dtype == torch.float32
    # bfloat16 keeps 8 bits: a relative error of a few 2**-8 on sums of 16 to 100 terms.
    torch.testing.assert_close(y.float(), y_ref, atol=0.1, rtol=0.03)
    torch.testing.assert_close(gx.float(), gx_ref, atol=0.1, rtol=0.03)
    torch.testing.assert_close(gw, gw_ref, atol=0.5, rtol=0.03)


def test_mismatched_forms_are_refused() -> None:
    x = torch.randn(2, 4, 3, 3)
    out = torch.empty(2, 3, 3, 3).contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="same matrix form"):
        pointwise_forward(x, torch.randn(3, 4, 1, 1), None, out=out)


def test_weight_gradient_is_summed_a_group_of_samples_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from concatnets.engine import pointwise

    torch.manual_seed(4)
    x = torch.randn(7, 6, 3, 3, dtype=torch.float64)
    weight = torch.randn(5, 6, 1, 1, dtype=torch.float64)
    grad = torch.randn(7, 5, 3, 3, dtype=torch.float64)
    _, _, gw_ref, _ = _reference(x, weight, None, grad)
    matmuls: list[int] = []
    original = torch.matmul

    def counting(a: torch.Tensor, b: torch.Tensor, **kwargs: object) -> torch.Tensor:
        matmuls.append(a.shape[0])
        return original(a, b, **kwargs)

    monkeypatch.setattr(pointwise, "_WEIGHT_GRAD_ELEMENTS", 2 * 5 * 6)  # two samples a group
    monkeypatch.setattr(pointwise.torch, "matmul", counting)
    _, gw, _ = pointwise_backward(grad, x, weight, has_bias=False)
    monkeypatch.undo()
    torch.testing.assert_close(gw, gw_ref)
    assert matmuls[1:] == [2, 2, 2, 1]  # after the input gradient: groups of 2, 2, 2, 1
