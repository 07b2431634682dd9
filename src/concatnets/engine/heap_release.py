"""Give glibc's piled-up free heap pages back to the OS at the engine's block boundaries.

glibc keeps freed heap blocks resident: once its dynamic mmap threshold has risen (after
the first large free, up to 32 MiB), feature maps come from a heap whose freed pages stay
in the resident set behind smaller live blocks, so a process holds more resident memory
than it has live allocations. ``malloc_trim(0)`` returns every whole free page of the
heap (``madvise(MADV_DONTNEED)``), at the price of page faults when the pages are used
again. With ``CONCATNETS_MALLOC=trim`` the engine calls it at the start of a dense block's
or a parts convolution's forward and backward, but only when the free-but-resident heap
estimated from ``mallinfo2`` and ``/proc/self/statm`` exceeds half of what malloc has in
use (and at least 64 MiB): few calls, where the pile would raise the peak.

Estimate: resident = other + malloc in use + free-but-resident heap, where ``other``
(code, Python's own arenas, everything not from malloc) is taken right after a trim,
when the free heap holds no resident pages. Linux with glibc 2.33 or later only;
elsewhere a no-op. See ``concatnets._allocator`` for the choice and the README for what
it measured.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from dataclasses import dataclass

from concatnets._allocator import allocator_setting

__all__ = [
    "MIN_PILE_BYTES",
    "PILE_FRACTION",
    "HeapReading",
    "HeapReleaseStats",
    "heap_release_stats",
    "release_if_piled_up",
    "should_release",
]

#: Free-but-resident heap bytes below which nothing is given back.
MIN_PILE_BYTES = 64 * 2**20
#: Give back when the pile exceeds this fraction of malloc's bytes in use.
PILE_FRACTION = 0.5


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@dataclass(frozen=True)
class HeapReading:
    """One reading of the process: resident bytes and malloc's bytes in use.

    Attributes:
        resident: Resident-set size of the process.
        in_use: Bytes malloc has handed out (heap blocks in use plus mmap'ed blocks).
    """

    resident: int
    in_use: int


@dataclass(frozen=True)
class HeapReleaseStats:
    """How often the engine gave free heap pages back in this process.

    Attributes:
        enabled: Whether ``CONCATNETS_MALLOC=trim`` is in force and glibc supports it.
        checks: Boundaries at which the pile was estimated.
        releases: ``malloc_trim`` calls made.
    """

    enabled: bool
    checks: int
    releases: int


def should_release(reading: HeapReading, other: int) -> bool:
    """Whether the free-but-resident heap in ``reading`` is worth giving back.

    ``other`` is the resident size not owed to malloc (see the module docstring).
    """
    pile = reading.resident - other - reading.in_use
    return pile > max(MIN_PILE_BYTES, PILE_FRACTION * reading.in_use)


class _Releaser:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._libc = self._load()
        self._page = os.sysconf("SC_PAGE_SIZE") if self._libc is not None else 0
        self._other: int | None = None
        self.checks = 0
        self.releases = 0

    @staticmethod
    def _load() -> ctypes.CDLL | None:
        if not sys.platform.startswith("linux"):
            return None
        try:
            libc = ctypes.CDLL(None)
            libc.mallinfo2.restype = _MallInfo2
            libc.malloc_trim.argtypes = [ctypes.c_size_t]
            with open("/proc/self/statm"):
                pass
        except (OSError, AttributeError):
            return None  # not glibc >= 2.33, or no procfs
        return libc

    @property
    def available(self) -> bool:
        return self._libc is not None

    def _reading(self) -> HeapReading:
        assert self._libc is not None
        with open("/proc/self/statm") as statm:
            resident = int(statm.read().split()[1]) * self._page
        info = self._libc.mallinfo2()
        return HeapReading(resident, int(info.uordblks) + int(info.hblkhd))

    def _trim(self) -> None:
        assert self._libc is not None
        self._libc.malloc_trim(0)
        after = self._reading()
        other = after.resident - after.in_use
        self._other = other if self._other is None else min(self._other, other)

    def check(self) -> None:
        if self._libc is None:
            return
        with self._lock:
            self.checks += 1
            if self._other is None:  # first use: learn what is not malloc's
                self._trim()
                return
            if should_release(self._reading(), self._other):
                self.releases += 1
                self._trim()


_RELEASER = _Releaser()


def release_if_piled_up() -> None:
    """At an engine boundary: give glibc's free heap pages back if they have piled up.

    Does nothing unless ``CONCATNETS_MALLOC=trim`` (see the module docstring).
    """
    if allocator_setting().trim:
        _RELEASER.check()


def heap_release_stats() -> HeapReleaseStats:
    """This process's :class:`HeapReleaseStats`."""
    enabled = allocator_setting().trim and _RELEASER.available
    return HeapReleaseStats(enabled, _RELEASER.checks, _RELEASER.releases)
