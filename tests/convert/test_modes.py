"""A converted model under no_grad, eval, autocast and torch.compile."""

from __future__ import annotations

import copy

import torch
from torch import nn

import concatnets


def _pair() -> tuple[nn.Module, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = concatnets.create_model("densenet_bc", depth=16, growth_rate=4, memory_efficient=False)
    x = torch.randn(2, 3, 8, 8)
    converted = concatnets.memory_efficient(copy.deepcopy(model), example_input=x)
    return model, converted, x


def test_no_grad_in_both_modes() -> None:
    model, converted, x = _pair()
    for training in (True, False):
        model.train(training)
        converted.train(training)
        with torch.no_grad():
            torch.testing.assert_close(converted(x), model(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        converted.state_dict()["features.denseblock1.denselayer1.norm1.running_mean"],
        model.state_dict()["features.denseblock1.denselayer1.norm1.running_mean"],
    )


def test_autocast_trains_and_stays_close() -> None:
    model, converted, x = _pair()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model(x)
        actual = converted(x)
    actual.float().sum().backward()
    assert all(p.grad is not None for p in converted.parameters())
    torch.testing.assert_close(actual.float(), expected.float(), rtol=0.1, atol=0.1)


def test_torch_compile_runs_the_converted_model() -> None:
    model, converted, x = _pair()
    torch._dynamo.reset()
    compiled = torch.compile(converted, backend="eager")  # dynamo's capture, no codegen
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-5)
    assert converted.features.denseblock1.denselayer1.conv1.weight.grad is not None
