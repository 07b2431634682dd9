"""Autocast handling for the engine's custom autograd functions.

The engine calls ATen kernels directly and recomputes activations in backward, where
autocast is not active; mixing a half-precision forward with a recompute in another
precision would make backward disagree with forward. Under autocast the engine therefore
runs its own operations in float32 (autocast still applies to the model's other layers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor

__all__ = ["in_full_precision"]

T = TypeVar("T")


def in_full_precision(device: torch.device, run: Callable[[Callable[[Tensor], Tensor]], T]) -> T:
    """Call ``run(cast)`` with autocast off when it is on for ``device``.

    ``cast`` turns a low-precision floating tensor into float32 (differentiably) and leaves
    others alone; without autocast it is the identity.
    """
    if not torch.is_autocast_enabled(device.type):
        return run(lambda t: t)

    def cast(t: Tensor) -> Tensor:
        return t.float() if t.is_floating_point() and t.dtype != torch.float64 else t

    with torch.autocast(device_type=device.type, enabled=False):
        return run(cast)
