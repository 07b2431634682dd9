"""The memory modes of the models not yet on the engine (FC-DenseNet for now).

``memory_efficient=False`` is the plain reference and ``"checkpoint"`` the interim memory
mode (see :mod:`concatnets.models._memory_mode`); ``True`` (the memory engine) is refused
until the model has it.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from concatnets.models._memory_mode import (
    EngineModeUnavailableError,
    MemoryMode,
    MemoryModeModel,
    run_maybe_checkpointed,
)

__all__ = [
    "EngineModeUnavailableError",
    "InterimMemoryMode",
    "InterimMemoryModel",
    "run_maybe_checkpointed",
]

InterimMemoryMode = Literal[False, "checkpoint"]
_INTERIM_MODES: tuple[MemoryMode, ...] = (False, "checkpoint")


def _unavailable(model_name: str) -> str:
    return (
        f"{model_name} has no memory-engine mode yet (memory_efficient=True): the engine "
        "mode will come by converting the model with concatnets.memory_efficient(model). "
        "For now use memory_efficient='checkpoint' (torch.utils.checkpoint per dense "
        "layer/node) or False; from the CLI, drop --memory-efficient"
    )


class InterimMemoryModel(MemoryModeModel):
    """A model whose memory modes are ``False`` and ``"checkpoint"`` for now; assigning
    ``True`` raises :class:`EngineModeUnavailableError`."""

    memory_modes: ClassVar[tuple[MemoryMode, ...]] = _INTERIM_MODES

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls._unavailable_engine_message = _unavailable(cls.__name__)
