"""The probe's calls read as a sequence of operations: norm, relu, conv, dropout, other."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.dropout import _DropoutNd

from concatnets.convert.probe import Call

__all__ = ["Op", "operations"]


@dataclass(frozen=True)
class Op:
    """One operation: ``kind`` is "norm", "relu", "conv", "drop" or "other <Class>"."""

    kind: str
    module: nn.Module


def _kind(module: nn.Module) -> str | None:
    if isinstance(module, _BatchNorm):
        return "norm"
    if isinstance(module, _ConvNd):
        return "other transposed conv" if module.transposed else "conv"
    if isinstance(module, nn.ReLU):
        return "relu"
    if isinstance(module, nn.Dropout):
        return "drop"
    if isinstance(module, _DropoutNd):  # Dropout2d/3d drop whole channels: another operation
        return f"other {type(module).__name__}"
    if isinstance(module, nn.Identity):
        return None
    return f"other {type(module).__name__}"


def operations(call: Call) -> list[Op]:
    """The operations ``call`` ran, in execution order (containers flattened).

    A batch norm that calls an activation itself (timm's ``BatchNormAct2d``) reads as the
    norm followed by its activation.
    """
    kind = _kind(call.module)
    if kind is not None and not kind.startswith("other"):
        inner = [op for child in call.children for op in operations(child)]
        return [Op(kind, call.module), *inner]
    if call.children:
        return [op for child in call.children for op in operations(child)]
    return [] if kind is None else [Op(kind, call.module)]
