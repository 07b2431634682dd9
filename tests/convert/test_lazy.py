"""Replaying with lazy activations: residual sums, what stays plain, and autocast (CPU bf16)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

import concatnets


class _Residual(nn.Module):
    """conv -> BN -> ReLU read by a convolution and by a residual sum (ResNet's identity)."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(2, 4, 3, padding=1)
        self.norm0 = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(dropout)
        self.act = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.norm1 = nn.InstanceNorm2d(4, affine=True)
        self.leaky = nn.LeakyReLU(0.1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.drop(self.norm0(self.conv0(x))))
        out = self.norm1(self.conv1(x))
        out += x  # one gradient tensor reaches both readers of x
        return self.head(self.leaky(out))


def test_residual_sum_of_a_lazy_map(convert_copy, assert_same_network) -> None:
    torch.manual_seed(0)
    model = _Residual().double()
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    converted, report = convert_copy(model, x)
    text = str(report)
    assert "norm0 -> relu -> conv1" in text
    # The LeakyReLU of the sum stays plain (kept lazily it would store the sum instead).
    assert "1 convolution(s) read maps not stored" in text
    # Its norm is read by the sum only: it stays plain (stored as the original stores it).
    assert "norm1: left plain: no reader keeps it unstored" in text
    assert_same_network(model, converted, x)


def test_dropout_between_norm_and_activation_stays_plain(convert_copy) -> None:
    torch.manual_seed(0)
    model = _Residual(dropout=0.2).double()
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    converted, report = convert_copy(model, x)
    assert "norm0 read by drop: materialised" in str(report), str(report)
    assert "norm0 -> relu -> conv1" not in str(report)
    for m in (model, converted):
        torch.manual_seed(3)
        m.train()
    torch.manual_seed(3)
    expected = model(x)
    torch.manual_seed(3)
    torch.testing.assert_close(converted(x), expected, rtol=1e-7, atol=1e-8)


def _densenet() -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    model = concatnets.create_model("densenet_bc", depth=16, growth_rate=4, memory_efficient=False)
    return model, torch.randn(4, 3, 16, 16)


def _basic_unet() -> tuple[nn.Module, Tensor]:
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    model = nets.BasicUNet(spatial_dims=2, in_channels=1, out_channels=2, features=(8,) * 6)
    return model, torch.randn(2, 1, 32, 32)


def _step(model: nn.Module, x: Tensor, amp: bool) -> tuple[Tensor, dict[str, Tensor]]:
    model.zero_grad(set_to_none=True)
    inp = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out = model(inp)
    (
        out.double() * torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view(out.shape)
    ).sum().backward()
    assert inp.grad is not None
    grads = {n: p.grad.double() for n, p in model.named_parameters() if p.grad is not None}
    return inp.grad.double(), grads


def _flat(grads: dict[str, Tensor]) -> Tensor:
    return torch.cat([g.flatten() for g in grads.values()])


@pytest.mark.parametrize("build", [_densenet, _basic_unet], ids=["densenet", "basic_unet"])
def test_autocast_bf16_gradients_as_close_to_float64_as_the_original(build) -> None:
    """Under CPU bf16 autocast the converted model's gradients are no further from the
    float64 gradients than the original model's under the same autocast: twice its error
    plus one bf16 rounding step (2**-8) of the true gradient. The engine rounds at other
    places (bf16 activations rebuilt from float32 statistics), so equality is not expected,
    but it must not lose more precision than autocast itself does. Per parameter the
    rounding step is of the larger of its own gradient and the average parameter's: a conv
    bias before an instance norm has a true gradient of zero, and only rounding noise."""
    model, x = build()
    truth_model = copy.deepcopy(model).double()
    converted = concatnets.memory_efficient(copy.deepcopy(model), example_input=x)
    truth_in, truth = _step(truth_model, x.double(), amp=False)
    orig_in, orig = _step(model, x, amp=True)
    conv_in, conv = _step(converted, x, amp=True)
    assert conv.keys() == truth.keys()
    pairs = [("input", conv_in, orig_in, truth_in), ("all", _flat(conv), _flat(orig), _flat(truth))]
    average = float(_flat(truth).norm()) / len(truth) ** 0.5
    pairs += [(n, conv[n], orig[n], truth[n]) for n in truth]
    for name, actual, plain, exact in pairs:
        scale = max(float(exact.norm()), average if name not in ("input", "all") else 0.0)
        bound = 2 * float((plain - exact).norm()) + 2**-8 * scale
        assert float((actual - exact).norm()) <= bound, name


class _Plain(nn.Module):
    """conv -> conv (a stored map) -> BN -> ReLU -> conv: the second conv runs plain."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(channels, 4, 3, padding=1)
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(torch.relu(self.norm(self.conv1(self.conv0(x)))))


# One input channel: the first output changes layout; three: the input does.
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
def test_convolutions_run_in_the_engine_layout_and_the_output_in_the_original(
    layout: str, channels: int, convert_copy, assert_same_network
) -> None:
    from concatnets.engine import use_layout

    torch.manual_seed(0)
    model = _Plain(channels).double()
    x = torch.randn(2, channels, 8, 8, dtype=torch.float64)
    seen: list[bool] = []
    with use_layout(layout):
        converted, _ = convert_copy(model, x)
        assert_same_network(model, converted, x)
        for conv in (converted.conv0, converted.conv1):
            conv.register_forward_pre_hook(
                lambda _, args: seen.append(
                    args[0].is_contiguous(memory_format=torch.channels_last)
                    and not args[0].is_contiguous()
                )
            )
        out = converted(x)
    assert seen == [layout == "channels_last" and channels > 1, layout == "channels_last"]
    assert out.is_contiguous()
