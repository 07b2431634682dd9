"""What ``import concatnets`` does to the C allocator: by default nothing.

glibc serves a block at or above its mmap threshold (128 KiB at start) with its own
``mmap`` and returns it to the OS on ``free``. The threshold is dynamic: freeing such a
block raises it to that block's size (up to 32 MiB on 64-bit), so after a first training
step later blocks of that size come from the heap, whose freed pages stay resident
behind smaller live blocks (fragmentation): a process keeps more resident memory than
it has live tensors. ``CONCATNETS_MALLOC`` chooses what concatnets does about it:

- ``system`` (default): nothing; glibc as the user has it, for every model.
- ``pool``: the memory engine keeps its large CPU buffers in its own reused mappings
  (:mod:`concatnets.engine.buffer_pool`); glibc untouched.
- ``trim``: glibc untouched, but the memory engine gives glibc's free heap pages back
  (``malloc_trim``) at the start of a block's forward or backward when they have piled
  up (:mod:`concatnets.engine.heap_release`): a lower resident peak for a few percent of
  step time, spent on page faults.
- ``pinned``: glibc's mmap threshold pinned at 128 KiB with
  ``mallopt(M_MMAP_THRESHOLD, ...)``: large tensors go straight back to the OS, so the
  resident peak follows live tensors, at the price of page faults for every model in
  the process (1.5-2.5x the CPU time of a DenseNet step). The pool is not added: with
  the threshold pinned it only kept idle blocks resident (measured, see buffer_pool).

A threshold the user chose (``MALLOC_MMAP_THRESHOLD_``) is never overridden. Stdlib
only: it runs before torch is imported.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "CHOICES",
    "DEFAULT_CHOICE",
    "ENV_VARIABLE",
    "MMAP_THRESHOLD_BYTES",
    "AllocatorSetting",
    "allocator_setting",
    "configure_allocator",
]

ENV_VARIABLE = "CONCATNETS_MALLOC"
# glibc's own starting threshold: blocks of 128 KiB and above are mmap'ed, as before the
# first large free (CONCATNETS_MALLOC=pinned only).
MMAP_THRESHOLD_BYTES = 128 * 1024
_M_MMAP_THRESHOLD = -3  # glibc <malloc.h>
_USER_THRESHOLD_VARIABLE = "MALLOC_MMAP_THRESHOLD_"
#: ``system``: nothing (default); ``pool``: engine buffers pooled; ``trim``: the engine
#: returns piled-up free heap pages; ``pinned``: glibc's threshold pinned (see the module
#: docstring).
CHOICES = ("system", "pool", "trim", "pinned")
DEFAULT_CHOICE = "system"


@dataclass(frozen=True)
class AllocatorSetting:
    """What ``import concatnets`` did to the C allocator, and why.

    Args:
        applied: Whether the mmap threshold was pinned.
        detail: One sentence for reports, e.g. why nothing was done.
        choice: The ``CONCATNETS_MALLOC`` value in force (one of :data:`CHOICES`).
    """

    applied: bool
    detail: str
    choice: str = DEFAULT_CHOICE

    @property
    def pool(self) -> bool:
        """Whether the engine keeps its large CPU buffers in its own pool."""
        return self.choice == "pool"

    @property
    def trim(self) -> bool:
        """Whether the engine gives piled-up free heap pages back at its boundaries."""
        return self.choice == "trim"


_setting = AllocatorSetting(False, "not configured yet")


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        version = libc.gnu_get_libc_version
        libc.mallopt  # noqa: B018 - attribute lookup is the check
    except (OSError, AttributeError):
        return None  # musl and other C libraries: no glibc malloc to tune
    version.restype = ctypes.c_char_p
    return libc


def _choice(env: Mapping[str, str]) -> str:
    choice = env.get(ENV_VARIABLE, "").strip().lower() or DEFAULT_CHOICE
    if choice not in CHOICES:
        raise ValueError(
            f"{ENV_VARIABLE}={env[ENV_VARIABLE]!r} is not understood: set it to 'system' "
            "(the default: glibc left alone), 'pool' (the engine reuses its own CPU "
            "buffers), 'trim' (the engine gives piled-up free heap pages back) or 'pinned' "
            "(glibc's mmap threshold pinned for the process)"
        )
    return choice


def _pin(env: Mapping[str, str]) -> AllocatorSetting:
    if _USER_THRESHOLD_VARIABLE in env:
        detail = f"{_USER_THRESHOLD_VARIABLE}={env[_USER_THRESHOLD_VARIABLE]} set by the user"
        return AllocatorSetting(False, detail, "pinned")
    if (libc := _glibc()) is None:
        return AllocatorSetting(False, "not glibc: allocator left alone", "pinned")
    if libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) != 1:
        return AllocatorSetting(False, "glibc refused mallopt(M_MMAP_THRESHOLD)", "pinned")
    version = libc.gnu_get_libc_version().decode()
    detail = (
        f"{ENV_VARIABLE}=pinned: glibc {version} mmap threshold pinned at "
        f"{MMAP_THRESHOLD_BYTES} bytes"
    )
    return AllocatorSetting(True, detail, "pinned")


def configure_allocator(environ: Mapping[str, str] | None = None) -> AllocatorSetting:
    """Apply ``CONCATNETS_MALLOC`` (default ``system``); return (and remember) what happened.

    Args:
        environ: Environment to read; the process's own by default.

    Raises:
        ValueError: ``CONCATNETS_MALLOC`` holds something other than :data:`CHOICES`.
    """
    global _setting
    env = os.environ if environ is None else environ
    choice = _choice(env)
    if choice == "pinned":
        _setting = _pin(env)
    elif choice == "trim":
        detail = (
            f"{ENV_VARIABLE}=trim: glibc's own settings; the engine gives piled-up free heap "
            "pages back (malloc_trim) at its block boundaries"
        )
        _setting = AllocatorSetting(False, detail, "trim")
    elif choice == "pool":
        detail = f"{ENV_VARIABLE}=pool: glibc's own settings; engine CPU buffers pooled"
        _setting = AllocatorSetting(False, detail, "pool")
    else:
        _setting = AllocatorSetting(False, "glibc's own settings (nothing changed)", "system")
    return _setting


def allocator_setting() -> AllocatorSetting:
    """What the last :func:`configure_allocator` call did."""
    return _setting
