"""Activations recomputed from saved statistics equal plain autograd (float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from concatnets.engine import NormActPart, norm_act_conv, norm_stats
from concatnets.engine.activation import (
    Activation,
    activation_backward_,
    activation_of_module,
    apply_activation_,
)
from concatnets.engine.group_stats import group_norm_forward

ACTIVATIONS = {
    "relu": (Activation("relu"), nn.ReLU()),
    "leaky": (Activation("leaky_relu", 0.1), nn.LeakyReLU(0.1)),
    "leaky0": (Activation("leaky_relu", 0.0), nn.LeakyReLU(0.0)),
    "elu": (Activation("elu", 1.0), nn.ELU()),
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_backward_from_output_equals_autograd(name: str) -> None:
    act, module = ACTIVATIONS[name]
    x = torch.randn(64, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(64, dtype=torch.float64)
    module(x).backward(grad)
    y = apply_activation_(x.detach().clone(), act)
    torch.testing.assert_close(y, module(x.detach()))
    torch.testing.assert_close(activation_backward_(grad.clone(), y, act), x.grad)


def test_module_mapping_and_refusals() -> None:
    assert activation_of_module(nn.LeakyReLU(0.2)) == Activation("leaky_relu", 0.2)
    assert activation_of_module(nn.LeakyReLU(-0.5)) is None  # sign of the output is ambiguous
    assert activation_of_module(nn.GELU()) is None
    with pytest.raises(ValueError, match="negative_slope >= 0"):
        Activation("leaky_relu", -0.1)


@pytest.mark.parametrize("name", ["leaky", "elu"])
@pytest.mark.parametrize("norm_kind", ["batch", "instance"])
@pytest.mark.parametrize("pool", [None, 2])
def test_norm_act_conv_with_activation(name: str, norm_kind: str, pool: int | None) -> None:
    act, act_module = ACTIVATIONS[name]
    torch.manual_seed(0)
    norm: nn.Module = (
        nn.BatchNorm2d(4) if norm_kind == "batch" else nn.InstanceNorm2d(4, affine=True)
    )
    nn.init.uniform_(norm.weight, 0.5, 1.5)
    nn.init.uniform_(norm.bias, -0.3, 0.3)
    conv = nn.Conv2d(4, 3, 3, padding=1)
    for m in (norm, conv):
        m.double()
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    grad = torch.randn(2, 3, *((4, 4) if pool else (8, 8)), dtype=torch.float64)

    def reference() -> tuple[torch.Tensor, ...]:
        inp = x.clone().requires_grad_()
        y = act_module(norm(inp))
        out = conv(F.max_pool2d(y, 2) if pool else y)
        params = [inp, norm.weight, norm.bias, conv.weight, conv.bias]
        return (out.detach(), *torch.autograd.grad(out, params, grad))

    def engine() -> tuple[torch.Tensor, ...]:
        inp = x.clone().requires_grad_()
        if norm_kind == "batch":
            stats = norm_stats(norm, inp.detach())
        else:
            _, stats = group_norm_forward(norm, inp.detach(), norm.weight, norm.bias)
        part = NormActPart(inp, norm, stats, activation=act, pool=pool)
        out = norm_act_conv([part], conv)
        params = [inp, norm.weight, norm.bias, conv.weight, conv.bias]
        return (out.detach(), *torch.autograd.grad(out, params, grad))

    for expected, actual in zip(reference(), engine(), strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-10)
