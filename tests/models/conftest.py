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
