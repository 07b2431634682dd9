"""Pin glibc's mmap threshold at ``import concatnets`` so freed feature maps leave the heap.

glibc serves a block at or above its mmap threshold (128 KiB at start) with its own
``mmap`` and returns it to the OS on ``free``. But the threshold is dynamic: freeing such
a block raises the threshold to that block's size (up to 32 MiB on 64-bit). After the
first training step has freed its large feature maps, later blocks of that size come
from the heap instead, and when they are freed the heap keeps their pages resident
behind smaller live blocks (fragmentation). The process then stays far above its live
tensor bytes. Setting the threshold once with ``mallopt(M_MMAP_THRESHOLD, ...)`` turns
the dynamic adjustment off, so large tensors keep going straight back to the OS.

Left alone when the platform is not glibc, when the user already chose a threshold
(``MALLOC_MMAP_THRESHOLD_`` in the environment) or when ``CONCATNETS_MALLOC=system``.
Stdlib only: it runs before torch is imported.
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass

__all__ = [
    "ENV_VARIABLE",
    "MMAP_THRESHOLD_BYTES",
    "AllocatorSetting",
    "allocator_setting",
    "configure_allocator",
]

ENV_VARIABLE = "CONCATNETS_MALLOC"
# glibc's own starting threshold: blocks of 128 KiB and above are mmap'ed, as before the
# first large free. Measured against 1 MiB and 4 MiB (see bench memory's report).
MMAP_THRESHOLD_BYTES = 128 * 1024
_M_MMAP_THRESHOLD = -3  # glibc <malloc.h>
_USER_THRESHOLD_VARIABLE = "MALLOC_MMAP_THRESHOLD_"
_CHOICES = ("pinned", "system")


@dataclass(frozen=True)
class AllocatorSetting:
    """What ``import concatnets`` did to the C allocator, and why.

    Args:
        applied: Whether the mmap threshold was pinned.
        detail: One sentence for reports, e.g. why nothing was done.
    """

    applied: bool
    detail: str


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


def configure_allocator(environ: dict[str, str] | None = None) -> AllocatorSetting:
    """Pin glibc's mmap threshold unless opted out; return (and remember) what happened.

    Args:
        environ: Environment to read; the process's own by default.

    Raises:
        ValueError: ``CONCATNETS_MALLOC`` holds something other than ``pinned`` or ``system``.
    """
    global _setting
    env = os.environ if environ is None else environ
    choice = env.get(ENV_VARIABLE, "pinned").strip().lower() or "pinned"
    if choice not in _CHOICES:
        raise ValueError(
            f"{ENV_VARIABLE}={env[ENV_VARIABLE]!r} is not understood: set it to 'system' "
            "to keep glibc's own malloc settings, or 'pinned' (the default)"
        )
    if choice == "system":
        _setting = AllocatorSetting(False, f"{ENV_VARIABLE}=system: glibc's own settings")
    elif _USER_THRESHOLD_VARIABLE in env:
        _setting = AllocatorSetting(
            False, f"{_USER_THRESHOLD_VARIABLE}={env[_USER_THRESHOLD_VARIABLE]} set by the user"
        )
    elif (libc := _glibc()) is None:
        _setting = AllocatorSetting(False, "not glibc: allocator left alone")
    elif libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) != 1:
        _setting = AllocatorSetting(False, "glibc refused mallopt(M_MMAP_THRESHOLD)")
    else:
        version = libc.gnu_get_libc_version().decode()
        _setting = AllocatorSetting(
            True, f"glibc {version} mmap threshold pinned at {MMAP_THRESHOLD_BYTES} bytes"
        )
    return _setting


def allocator_setting() -> AllocatorSetting:
    """What the last :func:`configure_allocator` call did."""
    return _setting
