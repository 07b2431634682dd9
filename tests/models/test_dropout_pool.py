"""dropout_max_pool == max_pool(dropout(x)), keeping half a byte per input element."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from concatnets.models._dropout_pool import dropout_max_pool

_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


def _both(x: torch.Tensor, p: float, training: bool, kernel: int) -> list[tuple[torch.Tensor, ...]]:
    results = []
    for fused in (False, True):
        leaf = x.clone().requires_grad_()
        torch.manual_seed(3)  # the same dropout draw in both
        if fused:
            out = dropout_max_pool(leaf, p, training, kernel)
        else:
            out = _POOL[x.dim() - 2](F.dropout(leaf, p, training), kernel)
        weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
        (out * weights).sum().backward()
        assert leaf.grad is not None
        results.append((out.detach(), leaf.grad))
    return results


@pytest.mark.parametrize(
    ("shape", "kernel"),
    [
        ((2, 3, 8, 6), 2),
        ((2, 3, 9, 7), 2),
        ((1, 2, 6, 4, 5), 2),
        ((2, 3, 12), 3),
        ((1, 2, 9, 9), 3),
    ],
)
@pytest.mark.parametrize(("p", "training"), [(0.2, True), (0.5, True), (0.2, False), (0.0, True)])
def test_matches_pooling_of_dropout_in_float64(
    shape: tuple[int, ...], kernel: int, p: float, training: bool
) -> None:
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64)
    (out_a, grad_a), (out_b, grad_b) = _both(x, p, training, kernel)
    torch.testing.assert_close(out_b, out_a, rtol=0, atol=0)
    torch.testing.assert_close(grad_b, grad_a, rtol=0, atol=0)
    assert (grad_b != 0).sum() > 0


def test_ties_and_dropped_maxima_follow_the_plain_pooling() -> None:
    # Dropped elements become zeros (the maximum of an all-negative window); equal values
    # in a window: both poolings pick the same element.
    x = torch.tensor([[[[-1.0, -2.0, 1.0, 1.0], [-3.0, -4.0, 1.0, 1.0]]]], dtype=torch.float64)
    (out_a, grad_a), (out_b, grad_b) = _both(x, 0.5, True, 2)
    torch.testing.assert_close(out_b, out_a, rtol=0, atol=0)
    torch.testing.assert_close(grad_b, grad_a, rtol=0, atol=0)


def test_channels_last_input_gets_a_channels_last_gradient() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8).to(memory_format=torch.channels_last)
    (out_a, grad_a), (out_b, grad_b) = _both(x, 0.2, True, 2)
    torch.testing.assert_close(out_b, out_a)
    torch.testing.assert_close(grad_b, grad_a)
    assert grad_b.is_contiguous(memory_format=torch.channels_last)


def test_keeps_half_a_byte_per_input_element() -> None:
    x = torch.randn(2, 8, 16, 16, requires_grad=True)
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        dropout_max_pool(x * 1, 0.2, True, 2)
    assert sum(saved) == x.numel() // 2  # int8 offset and bool bit per 2x2 window


def test_without_grad_it_is_the_plain_computation() -> None:
    x = torch.randn(1, 2, 6, 6)
    torch.manual_seed(5)
    expected = F.max_pool2d(F.dropout(x, 0.3, True), 2)
    torch.manual_seed(5)
    with torch.no_grad():
        torch.testing.assert_close(dropout_max_pool(x, 0.3, True, 2), expected)


def test_bad_arguments_name_the_fix() -> None:
    x = torch.randn(1, 1, 4, 4)
    with pytest.raises(ValueError, match="dropout probability"):
        dropout_max_pool(x, 1.0, True, 2)
    with pytest.raises(ValueError, match="kernel"):
        dropout_max_pool(torch.randn(1, 1, 12, 12, 12), 0.2, True, 6)
