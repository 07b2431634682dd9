"""How a converted module runs the engine: an instance ``forward``, removable by restore.

The module keeps its class, parameters, buffers and state-dict keys; only the instance
attribute ``forward`` (a plain object, not a submodule) is added, and deleting it brings
the class's own forward back.
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["EngineForward", "install", "is_converted", "uninstall"]


class EngineForward:
    """Base of the callables conversion installs as a module's ``forward``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


def is_converted(module: nn.Module) -> bool:
    return isinstance(module.__dict__.get("forward"), EngineForward)


def install(module: nn.Module, forward: EngineForward) -> None:
    object.__setattr__(module, "forward", forward)


def uninstall(module: nn.Module) -> bool:
    """Remove an installed engine forward; returns whether there was one."""
    if not is_converted(module):
        return False
    del module.__dict__["forward"]
    return True
