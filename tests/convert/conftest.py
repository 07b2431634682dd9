"""Shared checks for converted models: the same network, exactly, in float64."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import Tensor, nn

import concatnets
from concatnets.convert import ConversionReport


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Two threads on two loaded cores spin against each other (40x slower batch norms).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _first_tensor(output: object) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, list | tuple):
        return _first_tensor(output[0])
    raise TypeError(f"model output {type(output).__name__} holds no tensor")


def _convert_copy(model: nn.Module, x: Tensor) -> tuple[nn.Module, ConversionReport]:
    """A converted deep copy of ``model`` (probed on ``x``) and its report."""
    return concatnets.memory_efficient(copy.deepcopy(model), example_input=x, report=True)


def _assert_same_network(original: nn.Module, converted: nn.Module, x: Tensor) -> None:
    """Outputs, input and parameter gradients, running statistics after one training step
    and eval outputs agree (float64), and each state dict loads strict into the other."""
    assert list(original.state_dict()) == list(converted.state_dict())
    assert [n for n, _ in original.named_parameters()] == [
        n for n, _ in converted.named_parameters()
    ]
    original.train()
    converted.train()
    results = []
    for model in (original, converted):
        model.zero_grad(set_to_none=True)
        inp = x.clone().requires_grad_()
        torch.manual_seed(1)
        out = _first_tensor(model(inp))
        weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)
        (out * weights).sum().backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        results.append((out.detach(), inp.grad, grads))
    (out_a, gin_a, grads_a), (out_b, gin_b, grads_b) = results
    torch.testing.assert_close(out_b, out_a, rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(gin_b, gin_a, rtol=1e-7, atol=1e-8)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-7, atol=1e-8, msg=name)
    buffers_b = dict(converted.named_buffers())
    for name, buffer in original.named_buffers():
        torch.testing.assert_close(buffers_b[name], buffer, rtol=1e-9, atol=1e-12, msg=name)
    original.eval()
    converted.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            _first_tensor(converted(x)), _first_tensor(original(x)), rtol=1e-7, atol=1e-8
        )
    converted.load_state_dict(original.state_dict(), strict=True)
    original.load_state_dict(converted.state_dict(), strict=True)


@pytest.fixture
def convert_copy() -> Callable[[nn.Module, Tensor], tuple[nn.Module, ConversionReport]]:
    return _convert_copy


@pytest.fixture
def assert_same_network() -> Callable[[nn.Module, nn.Module, Tensor], None]:
    return _assert_same_network
