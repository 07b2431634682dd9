"""The memory modes of the models not yet on the engine (FC-DenseNet, UNet++).

``memory_efficient=False`` is the plain reference. ``"checkpoint"`` is the interim
memory mode: ``torch.utils.checkpoint`` around each dense layer or node, which frees the
concatenation and its BN/ReLU outputs after the forward and recomputes them in backward
(Chen et al. 2016, arXiv 1604.06174). In training mode the recomputation runs batch norm
a second time, so its running statistics are updated twice per step (as in torchvision's
checkpointed DenseNet); outputs and gradients are those of the plain mode. ``True`` (the
memory engine) is refused: it will come through :func:`concatnets.memory_efficient`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.utils.checkpoint as cp
from torch import Tensor, nn

__all__ = [
    "EngineModeUnavailableError",
    "InterimMemoryMode",
    "InterimMemoryModel",
    "check_interim_mode",
    "run_maybe_checkpointed",
]

InterimMemoryMode = Literal[False, "checkpoint"]


class EngineModeUnavailableError(NotImplementedError, ValueError):
    """``memory_efficient=True`` on a model whose engine mode does not exist yet.

    A ``NotImplementedError`` (what it is) and a ``ValueError`` (a setting to change), so
    the CLI reports it as a user error rather than a crash.
    """


def check_interim_mode(model_name: str, memory_efficient: object) -> InterimMemoryMode:
    """Return ``memory_efficient`` when it is ``False`` or ``"checkpoint"``, else raise."""
    if memory_efficient is True:
        raise EngineModeUnavailableError(
            f"{model_name} has no memory-engine mode yet (memory_efficient=True): the engine "
            "mode will come by converting the model with concatnets.memory_efficient(model). "
            "For now use memory_efficient='checkpoint' (torch.utils.checkpoint per dense "
            "layer/node) or False; from the CLI, drop --memory-efficient"
        )
    if memory_efficient is False or memory_efficient == "checkpoint":
        return memory_efficient  # type: ignore[return-value]
    raise ValueError(
        f"{model_name} memory_efficient must be False (plain) or 'checkpoint', "
        f"got {memory_efficient!r}"
    )


class InterimMemoryModel(nn.Module):
    """A model whose memory modes are ``False`` and ``"checkpoint"`` for now.

    ``memory_efficient`` is read on every forward, so assigning it switches the mode at
    any time; assigning anything else (``True`` among it) raises.
    """

    _memory_efficient: InterimMemoryMode = False

    @property
    def memory_efficient(self) -> InterimMemoryMode:
        """``False`` or ``"checkpoint"``."""
        return self._memory_efficient

    @memory_efficient.setter
    def memory_efficient(self, mode: InterimMemoryMode) -> None:
        self._memory_efficient = check_interim_mode(type(self).__name__, mode)


def run_maybe_checkpointed(
    function: Callable[..., Tensor], inputs: list[Tensor], checkpoint: bool
) -> Tensor:
    """``function(*inputs)``, under ``torch.utils.checkpoint`` when ``checkpoint`` is set
    and a backward can follow (grad mode on and some input or parameter needs grad)."""
    if checkpoint and torch.is_grad_enabled():
        return cp.checkpoint(function, *inputs, use_reentrant=False)
    return function(*inputs)
