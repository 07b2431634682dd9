"""Activations the engine recomputes exactly from saved statistics, and their backward.

The engine rebuilds ``act(norm(x))`` in backward from the stored ``x`` and the statistics
(Pleiss et al. 2017, arXiv 1707.06990), so the activation's backward must need only its
output: ReLU, LeakyReLU with a non-negative slope (Maas et al. 2013) and ELU with a
non-negative alpha (Clevert et al. 2016, arXiv 1511.07289) are monotonic, so the sign of
the output tells the branch and PyTorch's own backward kernels take the output directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from concatnets.engine.stats import relu_, relu_backward_

__all__ = [
    "ELU_KIND",
    "LEAKY_RELU_KIND",
    "RELU",
    "RELU_KIND",
    "Activation",
    "activation_backward_",
    "activation_of_module",
    "apply_activation_",
    "as_activation",
]

RELU_KIND = "relu"
LEAKY_RELU_KIND = "leaky_relu"
ELU_KIND = "elu"
ActivationKind = Literal["relu", "leaky_relu", "elu"]


@dataclass(frozen=True)
class Activation:
    """An elementwise activation recomputable from its output.

    Attributes:
        kind: ``"relu"``, ``"leaky_relu"`` or ``"elu"``.
        param: LeakyReLU's negative slope or ELU's alpha (unused for ReLU).
    """

    kind: ActivationKind = "relu"
    param: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in (RELU_KIND, LEAKY_RELU_KIND, ELU_KIND):
            raise ValueError(f"Activation kind must be relu, leaky_relu or elu, got {self.kind!r}")
        if self.kind != RELU_KIND and self.param < 0:
            name = "negative_slope" if self.kind == LEAKY_RELU_KIND else "alpha"
            raise ValueError(
                f"{self.kind} with {name}={self.param} cannot be recomputed from its output; "
                f"the engine takes {name} >= 0"
            )

    def __str__(self) -> str:
        return self.kind if self.kind == RELU_KIND else f"{self.kind}({self.param:g})"


RELU = Activation()


def as_activation(activation: bool | Activation | None) -> Activation | None:
    """``True`` (the engine's historical flag) means ReLU; ``False``/None means none."""
    if isinstance(activation, Activation):
        return activation
    return RELU if activation else None


def activation_of_module(module: nn.Module) -> Activation | None:
    """The :class:`Activation` an ``nn.ReLU``/``nn.LeakyReLU``/``nn.ELU`` applies, else None."""
    if isinstance(module, nn.ReLU):
        return RELU
    if isinstance(module, nn.LeakyReLU) and module.negative_slope >= 0:
        return Activation(LEAKY_RELU_KIND, float(module.negative_slope))
    if isinstance(module, nn.ELU) and module.alpha >= 0:
        return Activation(ELU_KIND, float(module.alpha))
    return None


def apply_activation_(y: Tensor, activation: bool | Activation | None) -> Tensor:
    """Apply ``activation`` to ``y`` in place (nothing for None/False); returns ``y``."""
    act = as_activation(activation)
    if act is None:
        return y
    if act.kind == RELU_KIND:
        return relu_(y)
    if act.kind == LEAKY_RELU_KIND:
        return F.leaky_relu_(y, act.param)
    return F.elu_(y, act.param)


def activation_backward_(grad_y: Tensor, y: Tensor, activation: bool | Activation | None) -> Tensor:
    """``grad_y`` turned in place into the gradient of the activation's input.

    Args:
        grad_y: Gradient of the activation's output ``y``.
        y: The activation's output (recomputed).
        activation: The activation applied (None/False: nothing to do).
    """
    act = as_activation(activation)
    if act is None:
        return grad_y
    if act.kind == RELU_KIND:
        return relu_backward_(grad_y, y)
    if act.kind == LEAKY_RELU_KIND:
        grad = torch.ops.aten.leaky_relu_backward(grad_y, y, act.param, True)
    else:
        grad = torch.ops.aten.elu_backward(grad_y, act.param, 1.0, 1.0, True, y)
    return grad_y.copy_(grad)
