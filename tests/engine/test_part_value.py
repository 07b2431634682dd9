"""``part_value`` and the upsampling stage: one value, several consumers, exact gradients."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from concatnets.engine import NormActPart, norm_act_conv, norm_stats
from concatnets.engine.activation import Activation
from concatnets.engine.parts_conv import part_value


@pytest.mark.parametrize("stages", [{}, {"pool": 2}, {"upsample": 2}, {"then_conv": True}])
def test_value_with_two_consumers_equals_autograd(stages: dict[str, object]) -> None:
    torch.manual_seed(0)
    norm = nn.BatchNorm2d(4).double()
    nn.init.uniform_(norm.weight, 0.5, 1.5)
    then = nn.ConvTranspose2d(4, 4, 2, stride=2).double() if stages.get("then_conv") else None
    conv = nn.Conv2d(4, 3, 3, padding=1).double()
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    act = Activation("leaky_relu", 0.2)

    def stage(y: torch.Tensor) -> torch.Tensor:
        if stages.get("pool"):
            y = F.max_pool2d(y, 2)
        if stages.get("upsample"):
            y = F.interpolate(y, scale_factor=2, mode="nearest")
        return y if then is None else then(y)

    params = [norm.weight, norm.bias, conv.weight, *([] if then is None else [then.weight])]

    def reference() -> list[torch.Tensor]:
        inp = x.clone().requires_grad_()
        value = stage(F.leaky_relu(norm(inp), 0.2))
        loss = (conv(value) ** 2).sum() + (value * value.flip(-1)).sum()
        return [
            loss.detach(),
            *torch.autograd.grad(loss, [inp, *params]),
            norm.running_mean.clone(),
        ]

    def engine() -> list[torch.Tensor]:
        inp = x.clone().requires_grad_()
        part = NormActPart(
            inp,
            norm,
            norm_stats(norm, inp.detach()),
            activation=act,
            pool=stages.get("pool"),  # type: ignore[arg-type]
            upsample=stages.get("upsample"),  # type: ignore[arg-type]
            then_conv=then,
        )
        value = part_value(part)  # the residual-like consumer
        out = norm_act_conv([replace(part, result=value.detach())], conv)
        loss = (out**2).sum() + (value * value.flip(-1)).sum()
        return [
            loss.detach(),
            *torch.autograd.grad(loss, [inp, *params]),
            norm.running_mean.clone(),
        ]

    expected = reference()
    norm.running_mean.zero_()
    norm.running_var.fill_(1)
    norm.num_batches_tracked.zero_()
    for want, got in zip(expected, engine(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def test_part_value_without_grad_is_plain() -> None:
    norm = nn.BatchNorm2d(3).double().eval()
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        value = part_value(NormActPart(x, norm, norm_stats(norm, x), upsample=2))
    torch.testing.assert_close(value, F.interpolate(F.relu(norm(x)), scale_factor=2))
    assert value.grad_fn is None


def test_upsample_needs_a_positive_factor() -> None:
    with pytest.raises(ValueError, match="upsample must be a positive factor"):
        NormActPart(torch.zeros(1, 1, 2, 2), upsample=0)
