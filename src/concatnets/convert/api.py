"""``memory_efficient(model)`` and ``restore(model)``: bring your own network to the engine."""

from __future__ import annotations

from typing import Any, Literal, overload

from torch import nn

from concatnets.convert.chains import convert_chains
from concatnets.convert.dense import convert_dense_blocks
from concatnets.convert.installed import uninstall
from concatnets.convert.probe import default_example_input, probe_calls
from concatnets.convert.report import ConversionReport
from concatnets.engine import BottleneckPolicy

__all__ = ["memory_efficient", "restore"]


@overload
def memory_efficient(
    model: nn.Module,
    *,
    example_input: Any = None,
    report: Literal[False] = False,
    policy: BottleneckPolicy = "keep",
    chains: bool = True,
) -> nn.Module: ...


@overload
def memory_efficient(
    model: nn.Module,
    *,
    example_input: Any = None,
    report: Literal[True],
    policy: BottleneckPolicy = "keep",
    chains: bool = True,
) -> tuple[nn.Module, ConversionReport]: ...


def memory_efficient(
    model: nn.Module,
    *,
    example_input: Any = None,
    report: bool = False,
    policy: BottleneckPolicy = "keep",
    chains: bool = True,
) -> nn.Module | tuple[nn.Module, ConversionReport]:
    """Run ``model``'s concatenation sites on the engine; returns the same model object.

    One probe forward on ``example_input`` (default: a random batch of 2 shaped for the
    first convolution) shows how the model runs. Every dense block found there runs on one
    shared buffer (:func:`concatnets.engine.dense_block`); then the outermost module whose
    forward can be recorded (:mod:`concatnets.convert.replayed`) is replayed with every
    norm -> activation kept as its input and statistics, pooled, upsampled, transposed-
    convolved and concatenated lazily until a convolution reads it through
    :func:`concatnets.engine.norm_act_conv` (``torch.fx`` rewriting where a module traces
    but cannot be recorded). Each site is checked
    numerically against the module's own forward before it is installed; what cannot be
    converted is left as it was. Parameters, buffers and state-dict keys do not change, so
    weights, optimizers and checkpoints keep working; converting twice is harmless and
    :func:`restore` undoes it.

    Args:
        model: Any ``nn.Module``.
        example_input: A batch the model accepts (a tuple for several arguments).
        report: Also return a :class:`ConversionReport` of the sites converted and not.
        policy: The dense blocks' bottleneck policy (see :func:`concatnets.engine.dense_block`).
        chains: Also convert ``cat -> conv`` and ``norm -> act -> conv`` chains outside
            dense blocks (see :mod:`concatnets.convert.chains`).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"memory_efficient expects an nn.Module, got {type(model).__name__}")
    if policy not in ("keep", "recompute"):
        raise ValueError(f"policy must be 'keep' or 'recompute', got {policy!r}")
    if example_input is None:
        example_input = default_example_input(model)
    names = {id(module): name for name, module in model.named_modules()}
    found = ConversionReport()
    convert_dense_blocks(probe_calls(model, example_input), names, found, policy)
    if chains:
        # A second probe: the converted dense blocks are leaves of the traced graphs.
        convert_chains(probe_calls(model, example_input), names, found)
    return (model, found) if report else model


def restore(model: nn.Module) -> nn.Module:
    """Undo :func:`memory_efficient`: every module runs its own forward again (same object)."""
    for module in model.modules():
        uninstall(module)
    return model
