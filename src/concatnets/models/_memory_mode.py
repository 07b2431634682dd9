"""One memory-mode switch for every registered model: ``set_memory_efficient(mode)``.

The modes (each model offers a subset, in :attr:`MemoryModeModel.memory_modes`):

* ``False``: the naive reference, plain ``torch.cat`` and autograd.
* ``"checkpoint"``: ``torch.utils.checkpoint`` around each concatenation's consumer,
  which frees the concatenation after the forward and recomputes it in backward (Chen et
  al. 2016, arXiv 1604.06174). Batch norm then runs twice per training step, so its
  running statistics are updated twice (as in torchvision's checkpointed DenseNet).
* ``True``: concatnets' memory engine (shared buffers, normalisation recomputed from
  saved statistics; Pleiss et al. 2017, arXiv 1707.06990).

The mode is a property read on every forward, so ``model.set_memory_efficient(mode)`` and
``model.memory_efficient = mode`` are the same thing and work at any time; a mode the
model does not offer raises with the modes it does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Literal, TypeVar

import torch
import torch.utils.checkpoint as cp
from torch import Tensor, nn

__all__ = [
    "EngineModeUnavailableError",
    "MemoryMode",
    "MemoryModeModel",
    "check_memory_mode",
    "run_maybe_checkpointed",
]

MemoryMode = Literal[False, "checkpoint", True]
_MODE_NAMES = {False: "False (naive)", "checkpoint": "'checkpoint'", True: "True (engine)"}

Model = TypeVar("Model", bound="MemoryModeModel")


class EngineModeUnavailableError(NotImplementedError, ValueError):
    """``memory_efficient=True`` on a model whose engine mode does not exist yet.

    A ``NotImplementedError`` (what it is) and a ``ValueError`` (a setting to change), so
    the CLI reports it as a user error rather than a crash.
    """


def _is_mode(value: object) -> bool:
    return value is False or value is True or (isinstance(value, str) and value == "checkpoint")


def check_memory_mode(
    owner: str, mode: object, offered: tuple[MemoryMode, ...], *, unavailable: str = ""
) -> MemoryMode:
    """Return ``mode`` when ``owner`` offers it, else raise naming the modes it offers.

    Args:
        owner: The model's name, for the message.
        mode: The requested value.
        offered: The modes the model implements.
        unavailable: The message for ``True`` on a model without an engine mode (then an
            :class:`EngineModeUnavailableError`); empty for the generic message.
    """
    if _is_mode(mode) and mode in offered:
        return mode  # type: ignore[return-value]
    choices = " or ".join(_MODE_NAMES[m] for m in offered)
    if mode is True and unavailable:
        raise EngineModeUnavailableError(unavailable)
    if _is_mode(mode):
        missing = "no engine mode" if mode is True else f"no {mode!r} mode"
        raise ValueError(f"{owner} has {missing}: memory_efficient must be {choices}")
    raise ValueError(f"{owner} memory_efficient must be {choices}, got {mode!r}")


class MemoryModeModel(nn.Module):
    """A model whose memory mode switches at any time (see the module docstring).

    Subclasses list their modes in ``memory_modes`` and, when the mode lives in
    submodules too, override :meth:`_memory_mode_changed`.
    """

    memory_modes: ClassVar[tuple[MemoryMode, ...]] = (False, True)
    _unavailable_engine_message: ClassVar[str] = ""
    _memory_efficient: MemoryMode = False

    @property
    def memory_efficient(self) -> MemoryMode:
        """The current mode: ``False``, ``"checkpoint"`` or ``True``."""
        return self._memory_efficient

    @memory_efficient.setter
    def memory_efficient(self, mode: MemoryMode) -> None:
        checked = check_memory_mode(
            type(self).__name__,
            mode,
            self.memory_modes,
            unavailable=self._unavailable_engine_message,
        )
        self._memory_efficient = checked
        self._memory_mode_changed(checked)

    def set_memory_efficient(self: Model, mode: MemoryMode = True) -> Model:
        """Switch the memory mode (same as assigning ``memory_efficient``); returns the model."""
        self.memory_efficient = mode
        return self

    def _memory_mode_changed(self, mode: MemoryMode) -> None:
        """Hook for models that keep the mode in submodules too."""


def run_maybe_checkpointed(
    function: Callable[..., Tensor], inputs: list[Tensor], checkpoint: bool
) -> Tensor:
    """``function(*inputs)``, under ``torch.utils.checkpoint`` when ``checkpoint`` is set
    and a backward can follow (grad mode on)."""
    if checkpoint and torch.is_grad_enabled():
        return cp.checkpoint(function, *inputs, use_reentrant=False)
    return function(*inputs)
