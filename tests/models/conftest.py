"""Fixtures shared by the model tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn


def _saved_storage_bytes(model: nn.Module, inputs: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves for backward during ``model(inputs)``."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(inputs)
    return sum(storages.values())


@pytest.fixture
def saved_storage_bytes() -> Callable[[nn.Module, torch.Tensor], int]:
    """``saved_storage_bytes(model, inputs)``: what a forward keeps for backward, in bytes."""
    return _saved_storage_bytes


def weighted_loss(out: torch.Tensor) -> torch.Tensor:
    """A loss whose gradient differs per output element (a plain sum hides permutations)."""
    return (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum()


def _assert_same_step(reference: nn.Module, other: nn.Module, x: torch.Tensor) -> None:
    """One forward and backward of each model on ``x``: the same output, input and
    parameter gradients, and buffers (running statistics) afterwards."""
    inputs = [x.clone().requires_grad_() for _ in range(2)]
    outputs = []
    for model, t in zip((reference, other), inputs, strict=True):
        torch.manual_seed(1)  # the same dropout masks in both
        outputs.append(model(t))
    for out in outputs:
        weighted_loss(out).backward()
    torch.testing.assert_close(outputs[1], outputs[0])
    torch.testing.assert_close(inputs[1].grad, inputs[0].grad)
    for (name, a), b in zip(reference.named_parameters(), other.parameters(), strict=True):
        assert b.grad is not None, f"{name} got no gradient"
        torch.testing.assert_close(b.grad, a.grad, msg=name)
    for (name, a), b in zip(reference.named_buffers(), other.buffers(), strict=True):
        torch.testing.assert_close(b, a, msg=name)


@pytest.fixture
def assert_same_step() -> Callable[[nn.Module, nn.Module, torch.Tensor], None]:
    """``assert_same_step(reference, other, x)``: one training step agrees exactly."""
    return _assert_same_step
