"""One hooked forward that records every module call: who called whom, in order, with what.

Conversion reads the model's structure from how it runs, not from class names: a dense
block is a module whose calls are all dense layers, a chain is what a traced graph shows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

__all__ = ["Call", "default_example_input", "preserved_state", "probe_calls"]


@dataclass
class Call:
    """One module call seen in the probe forward."""

    module: nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    children: list[Call] = field(default_factory=list)
    output: Any = None


@contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Run a block with buffers (running statistics), modes and the RNG left as they were."""
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    modes = [(m, m.training) for m in model.modules()]
    devices = [p.device for p in model.parameters() if p.device.type == "cuda"][:1]
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        try:
            yield
        finally:
            for buffer, saved in buffers:
                buffer.copy_(saved)
            for module, mode in modes:
                module.training = mode


def default_example_input(model: nn.Module) -> Tensor:
    """A batch of 2 random inputs shaped for the model's first convolution (64 per 2-D side)."""
    conv = next((m for m in model.modules() if isinstance(m, _ConvNd)), None)
    if conv is None:
        raise ValueError(
            "memory_efficient found no convolution to infer the input shape from; "
            "pass example_input=<a batch the model accepts>"
        )
    dims = conv.weight.dim() - 2
    side = {1: 256, 2: 64, 3: 32}.get(dims, 16)
    weight = conv.weight
    return torch.randn(
        (2, int(conv.in_channels), *([side] * dims)), dtype=weight.dtype, device=weight.device
    )


def probe_calls(model: nn.Module, example_input: Any) -> Call:
    """The call tree of ``model(example_input)`` (the model's state is left as it was)."""
    root = Call(model, (example_input,), {})
    stack: list[Call] = [root]

    def before(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if module is model:
            return
        call = Call(module, args, dict(kwargs))
        stack[-1].children.append(call)
        stack.append(call)

    def after(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        if module is model:
            root.output = output
            return
        stack.pop().output = output

    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(before, with_kwargs=True))
        handles.append(module.register_forward_hook(after, with_kwargs=True))
    try:
        with preserved_state(model):
            if isinstance(example_input, tuple):
                model(*example_input)
            else:
                model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    return root
