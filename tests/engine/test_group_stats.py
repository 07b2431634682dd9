"""Group and instance norm from saved per-sample statistics equal PyTorch's own."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from concatnets.engine.group_stats import (
    group_norm_act,
    group_norm_backward,
    group_norm_forward,
    group_norm_groups,
    is_group_norm,
)

LAYOUTS = {
    "nchw": torch.contiguous_format,
    "nhwc": torch.channels_last,
}


def make_norm(kind: str, affine: bool) -> nn.Module:
    norm = (
        nn.GroupNorm(2, 6, affine=affine)
        if kind == "group"
        else nn.InstanceNorm2d(6, affine=affine)
    )
    if affine:
        nn.init.uniform_(norm.weight, 0.5, 1.5)
        nn.init.uniform_(norm.bias, -0.3, 0.3)
    return norm.double()


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("kind", ["group", "instance"])
def test_forward_recompute_and_backward_match_autograd(
    kind: str, affine: bool, layout: str
) -> None:
    torch.manual_seed(0)
    norm = make_norm(kind, affine)
    x = (torch.randn(3, 6, 5, 7, dtype=torch.float64) * 2 + 1).contiguous(
        memory_format=LAYOUTS[layout]
    )
    x_ref = x.clone().requires_grad_()
    expected = F.relu(norm(x_ref))
    grad_out = torch.randn_like(expected)
    params = list(norm.parameters())
    expected_grads = torch.autograd.grad(expected, [x_ref, *params], grad_out)

    weight = norm.weight if affine else None
    bias = norm.bias if affine else None
    with torch.no_grad():  # as inside the engine's autograd functions
        value, stats = group_norm_forward(norm, x, weight, bias)
        recomputed = group_norm_act(x, weight, bias, stats)
        grad_y = grad_out * (value > 0)
        grad_x, grad_w, grad_b = group_norm_backward(grad_y, x, weight, stats)
    torch.testing.assert_close(value, expected.detach())
    torch.testing.assert_close(recomputed, value)
    torch.testing.assert_close(grad_x, expected_grads[0])
    if affine:
        torch.testing.assert_close(grad_w, expected_grads[1])
        torch.testing.assert_close(grad_b, expected_grads[2])
    else:
        assert grad_w is None and grad_b is None


def test_recompute_reads_a_cropped_view() -> None:
    norm = make_norm("group", True)
    x = torch.randn(2, 6, 8, 8, dtype=torch.float64)
    crop = (slice(None), slice(None), slice(2, 6), slice(1, 7))
    with torch.no_grad():
        value, stats = group_norm_forward(norm, x, norm.weight, norm.bias)
        cropped = group_norm_act(x[crop], norm.weight, norm.bias, stats)
    torch.testing.assert_close(cropped, value[crop])


def test_groups_of_each_kind_and_the_running_statistics_refusal() -> None:
    assert group_norm_groups(nn.GroupNorm(4, 8)) == 4
    assert group_norm_groups(nn.InstanceNorm3d(5)) == 5
    assert is_group_norm(nn.InstanceNorm2d(3)) and not is_group_norm(nn.BatchNorm2d(3))
    with pytest.raises(ValueError, match="track_running_stats=False"):
        group_norm_groups(nn.InstanceNorm2d(3, track_running_stats=True))
