"""``norm_act_conv`` over parts equals plain autograd on the same chain of modules."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from concatnets.engine import NormActPart, norm_act_conv, norm_stats

# One part's stages: source conv -> batch norm -> ReLU -> crop -> pool -> upsample -> then conv.
STAGES = {
    "plain": {},
    "crop": {"crop": (slice(1, 5), slice(2, 6))},
    "pool": {"pool": 2},
    "then_conv": {"then_conv": "transpose"},
    "pool_then_conv": {"pool": 2, "then_conv": "same"},
    "upsample": {"upsample": 2},
    "pool_upsample": {"pool": 2, "upsample": 4},
    "source_conv": {"source_conv": True},
    "source_conv_pool": {"source_conv": True, "pool": 2},
    "crop_pool": {"crop": (slice(1, 7), slice(0, 6)), "pool": 2},
    "crop_then_conv": {"crop": (slice(1, 5), slice(2, 6)), "then_conv": "same"},
    "crop_pool_then_conv": {
        "crop": (slice(2, 8), slice(1, 7)),
        "pool": 2,
        "then_conv": "transpose",
    },
}


class Chain(nn.Module):
    """One part as ordinary modules, the reference the engine must equal."""

    def __init__(self, channels: int, stages: dict[str, object], *, norm: bool) -> None:
        super().__init__()
        self.stages = stages
        self.source = nn.Conv2d(2, channels, 3, padding=1) if stages.get("source_conv") else None
        self.norm = nn.BatchNorm2d(channels) if norm else None
        if self.norm is not None:
            nn.init.uniform_(self.norm.weight, 0.5, 1.5)
            nn.init.uniform_(self.norm.bias, -0.2, 0.2)
        kind = stages.get("then_conv")
        self.then: nn.modules.conv._ConvNd | None = None
        if kind == "transpose":
            self.then = nn.ConvTranspose2d(channels, 3, 2, stride=2)
        elif kind == "same":
            self.then = nn.Conv2d(channels, 3, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        z = x if self.source is None else self.source(x)
        y = F.relu(z if self.norm is None else self.norm(z))
        crop = self.stages.get("crop")
        if crop is not None:
            y = y[(slice(None), slice(None), *crop)]  # type: ignore[misc]
        if self.stages.get("pool"):
            y = F.max_pool2d(y, 2)
        factor = self.stages.get("upsample")
        if factor:
            y = F.interpolate(y, scale_factor=factor, mode="nearest")
        return y if self.then is None else self.then(y)

    def part(self, x: Tensor) -> NormActPart:
        z = x if self.source is None else self.source(x).detach()
        stats = None if self.norm is None else norm_stats(self.norm, z)
        return NormActPart(
            x,
            self.norm,
            stats,
            source_conv=self.source,
            crop=self.stages.get("crop"),  # type: ignore[arg-type]
            pool=self.stages.get("pool"),  # type: ignore[arg-type]
            upsample=self.stages.get("upsample"),  # type: ignore[arg-type]
            then_conv=self.then,
        )


def make_case(
    stage: str, *, norm: bool, layout: torch.memory_format
) -> tuple[list[Chain], nn.Conv2d, list[Tensor]]:
    """Two parts (the stage under test, then a plain one) read by one 3x3 convolution."""
    torch.manual_seed(0)
    chains = [Chain(4, STAGES[stage], norm=norm), Chain(3, {}, norm=norm)]
    first_input = torch.randn(3, 2 if chains[0].source is not None else 4, 8, 8)
    value = chains[0](first_input)
    second_input = torch.randn(3, 3, *value.shape[2:])
    conv = nn.Conv2d(value.shape[1] + 3, 5, 3, padding=1)
    for module in [*chains, conv]:
        module.double()
    inputs = [t.double().contiguous(memory_format=layout) for t in (first_input, second_input)]
    return chains, conv, inputs


def reference(chains: list[Chain], conv: nn.Conv2d, inputs: list[Tensor]) -> Tensor:
    return conv(torch.cat([chain(t) for chain, t in zip(chains, inputs, strict=True)], 1))


def engine(chains: list[Chain], conv: nn.Conv2d, inputs: list[Tensor]) -> Tensor:
    return norm_act_conv([chain.part(t) for chain, t in zip(chains, inputs, strict=True)], conv)


def grads(out: Tensor, tensors: list[Tensor]) -> tuple[Tensor | None, ...]:
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    return torch.autograd.grad((out * weights).sum(), tensors, allow_unused=True)


@pytest.mark.parametrize(
    "layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"]
)
@pytest.mark.parametrize("norm", [True, False], ids=["batch", "none"])
@pytest.mark.parametrize("stage", list(STAGES))
def test_matches_plain_autograd(stage: str, norm: bool, layout: torch.memory_format) -> None:
    chains, conv, inputs = make_case(stage, norm=norm, layout=layout)
    for t in inputs:
        t.requires_grad_()
    params = [p for module in [*chains, conv] for p in module.parameters()]
    expected = reference(chains, conv, inputs)
    expected_grads = grads(expected, [*inputs, *params])
    got = engine(chains, conv, inputs)
    got_grads = grads(got, [*inputs, *params])
    torch.testing.assert_close(got, expected)
    for index, (a, b) in enumerate(zip(got_grads, expected_grads, strict=True)):
        assert (a is None) == (b is None), index
        if a is not None:
            torch.testing.assert_close(a, b, msg=f"gradient {index}")


@pytest.mark.parametrize("stage", ["plain", "pool", "source_conv", "pool_then_conv"])
def test_gradcheck_through_batch_statistics(stage: str) -> None:
    chains, conv, inputs = make_case(stage, norm=True, layout=torch.contiguous_format)
    inputs = [t.requires_grad_() for t in inputs]

    def run(*xs: Tensor) -> Tensor:
        return engine(chains, conv, list(xs))

    assert torch.autograd.gradcheck(run, tuple(inputs), fast_mode=True)


def test_eval_mode_uses_running_statistics() -> None:
    chains, conv, inputs = make_case("pool", norm=True, layout=torch.contiguous_format)
    for chain in chains:
        assert chain.norm is not None
        chain.norm.running_mean.uniform_(-0.5, 0.5)  # type: ignore[union-attr]
        chain.norm.running_var.uniform_(0.5, 2.0)  # type: ignore[union-attr]
        chain.eval()
    inputs = [t.requires_grad_() for t in inputs]
    expected = reference(chains, conv, inputs)
    got = engine(chains, conv, inputs)
    torch.testing.assert_close(got, expected)
    for a, b in zip(grads(got, inputs), grads(expected, inputs), strict=True):
        torch.testing.assert_close(a, b)


def test_running_statistics_are_updated_once_per_part() -> None:
    chains, conv, inputs = make_case("plain", norm=True, layout=torch.contiguous_format)
    norm = chains[0].norm
    assert norm is not None
    before = int(norm.num_batches_tracked)
    out = engine(chains, conv, inputs)
    assert int(norm.num_batches_tracked) == before + 1  # norm_stats in part()
    grads(out, list(conv.parameters()))
    assert int(norm.num_batches_tracked) == before + 1  # backward does not update again


def test_channels_last_inputs_give_channels_last_outputs() -> None:
    chains, conv, inputs = make_case("crop", norm=True, layout=torch.channels_last)
    out = engine(chains, conv, inputs)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_input_gradient_of_a_source_conv_is_skipped_when_not_needed() -> None:
    chains, conv, inputs = make_case("source_conv", norm=True, layout=torch.contiguous_format)
    source = chains[0].source
    assert source is not None
    out = engine(chains, conv, inputs)  # inputs do not require grad
    (grad_weight,) = grads(out, [source.weight])
    assert grad_weight is not None and grad_weight.abs().sum() > 0


def test_part_refuses_a_bad_pool_kernel() -> None:
    with pytest.raises(ValueError, match="positive kernel size"):
        NormActPart(torch.randn(1, 2, 4, 4), pool=0)


def test_channel_mismatch_names_the_fix() -> None:
    part = NormActPart(torch.randn(1, 2, 4, 4), pool=2)
    with pytest.raises(ValueError, match="in_channels=2"):
        norm_act_conv([part], nn.Conv2d(3, 1, 1))


def test_parts_with_a_given_value_skip_the_forward_normalisation() -> None:
    chains, _, inputs = make_case("plain", norm=True, layout=torch.contiguous_format)
    part = chains[0].part(inputs[0])
    value = torch.full_like(inputs[0], 7.0)  # deliberately not relu(bn(x))
    out = norm_act_conv([replace(part, value=value)], nn.Conv2d(4, 1, 1).double())
    out = out.detach()
    assert torch.allclose(out, out.new_full(out.shape, float(out.flatten()[0])))
