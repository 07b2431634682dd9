"""parts_conv additions for converted models: a padded, strided max pooling stage, and a
part's value whose gradient autograd shares with another reader."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from concatnets.engine import NormActPart, norm_act_conv, norm_stats
from concatnets.engine.parts_conv import max_pool_backward, part_value


def _setup() -> tuple[nn.BatchNorm2d, nn.Conv2d, torch.Tensor]:
    torch.manual_seed(0)
    norm = nn.BatchNorm2d(4).double()
    conv = nn.Conv2d(4, 3, 3, padding=1).double()
    z = torch.randn(2, 4, 9, 9, dtype=torch.float64, requires_grad=True)
    return norm, conv, z


def _grads(loss: torch.Tensor, norm: nn.Module, conv: nn.Module, z: torch.Tensor) -> list:
    return list(torch.autograd.grad(loss, [z, norm.weight, norm.bias, conv.weight]))


def test_strided_padded_pooling_stage_is_exact() -> None:
    # A ResNet stem's MaxPool2d(3, stride 2, padding 1) between the ReLU and the conv.
    norm, conv, z = _setup()
    w = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    expected = _grads((conv(F.max_pool2d(torch.relu(norm(z)), 3, 2, 1)) * w).sum(), norm, conv, z)
    part = NormActPart(z, norm, norm_stats(norm, z), pool=3, pool_shape=(2, 1))
    out = norm_act_conv([part], conv)
    assert out.shape == (2, 3, 5, 5)
    for actual, exact in zip(_grads((out * w).sum(), norm, conv, z), expected, strict=True):
        torch.testing.assert_close(actual, exact, rtol=1e-10, atol=1e-12)


def test_a_value_and_a_conv_of_it_summed() -> None:
    # ``conv(y) + y``: autograd hands one gradient tensor to both readers of the part; the
    # part's backward must not change it in place for the other.
    norm, _, z = _setup()
    conv = nn.Conv2d(4, 4, 3, padding=1).double()
    w = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    y = torch.relu(norm(z))
    expected = _grads(((conv(y) + y) * w).sum(), norm, conv, z)
    part = NormActPart(z, norm, norm_stats(norm, z))
    loss = ((norm_act_conv([part], conv) + part_value(part)) * w).sum()
    for actual, exact in zip(_grads(loss, norm, conv, z), expected, strict=True):
        torch.testing.assert_close(actual, exact, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("dims", "pool", "pool_shape"), [(2, 2, None), (2, 3, (2, 1)), (3, 2, None), (3, 3, (2, 1))]
)
def test_max_pool_backward_is_autograds_pooling_gradient(dims, pool, pool_shape) -> None:
    torch.manual_seed(1)
    y = torch.randn(2, 3, *(7,) * dims, dtype=torch.float64, requires_grad=True)
    part = NormActPart(y.detach(), None, None, pool=pool, pool_shape=pool_shape)
    pooling = F.max_pool2d if dims == 2 else F.max_pool3d
    pooled, indices = pooling(y, *part.pool_geometry, return_indices=True)
    grad_pooled = torch.randn_like(pooled)
    (expected,) = torch.autograd.grad(pooled, y, grad_pooled)
    actual = max_pool_backward(part.shape_only(), grad_pooled, y.detach(), indices)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
