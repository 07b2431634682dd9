"""A pooled norm -> ReLU map read whole (a residual sum) is stored with its pooling indices."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

import concatnets


class _Stem(nn.Module):
    """ResNet's stem and first block: the pooled map feeds a convolution and a sum."""

    def __init__(self, dims: int, norm: str) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        pool = nn.MaxPool2d if dims == 2 else nn.MaxPool3d
        self.conv0 = conv(2, 4, 3, padding=1)
        self.norm0 = (
            (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(4)
            if norm == "batch"
            else nn.GroupNorm(2, 4)
        )
        self.act = nn.ReLU(inplace=True)
        self.pool = pool(3, stride=2, padding=1)
        self.conv1 = conv(4, 4, 3, padding=1)
        self.norm1 = nn.GroupNorm(2, 4)
        self.conv2 = conv(4, 4, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.act(self.norm0(self.conv0(x))))
        return x + self.conv2(self.act(self.norm1(self.conv1(x))))


@pytest.mark.parametrize("norm", ["batch", "group"])
@pytest.mark.parametrize("dims", [2, 3])
def test_stored_pooling_is_the_same_network(
    dims: int, norm: str, convert_copy, assert_same_network
) -> None:
    torch.manual_seed(0)
    model = _Stem(dims, norm).double()
    x = torch.randn(2, 2, *(9,) * dims, dtype=torch.float64)
    converted, report = convert_copy(model, x)
    text = str(report)
    assert "norm0 -> relu -> pool: stored with its pooling indices" in text, text
    assert "norm1 -> relu -> conv2" in text
    assert_same_network(model, converted, x)


def test_ties_in_a_window_take_the_gradient_once() -> None:
    # A ReLU's zeros tie in many windows: the indices say which one the gradient reaches.
    torch.manual_seed(0)
    model = _Stem(2, "batch").double()
    with torch.no_grad():
        model.norm0.bias.fill_(-3.0)  # almost everything is cut to 0 by the ReLU
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    converted, report = concatnets.memory_efficient(
        copy.deepcopy(model), example_input=x, report=True
    )
    assert "stored with its pooling indices" in str(report)
    grads = []
    for m in (model, converted):
        inp = x.clone().requires_grad_()
        m(inp).sum().backward()
        grads.append((inp.grad, m.norm0.weight.grad))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-7, atol=1e-9)
