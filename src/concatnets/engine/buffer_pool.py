"""A process-wide pool of the engine's large CPU buffers, reused from step to step.

Every training step the engine asks for the same large buffers (a dense block's shared
feature and gradient buffers, its chunk scratch, a U-Net convolution's concatenation
and recomputed activations). From malloc each would be either a fresh ``mmap``,
page-faulted in again every step, or, once glibc has raised its dynamic mmap threshold
after the first large free (up to 32 MiB), a heap block whose freed pages stay resident
behind smaller live blocks. This pool keeps such buffers in page-aligned anonymous
mappings of its own (Python's :mod:`mmap`), outside malloc's heap, and hands the same
block out again in the next step: no page faults after the first step, no heap holes.

A block goes back to the free list exactly when the storage of the tensor made on it
dies: the tensor is built with :func:`torch.frombuffer` on a fresh ``memoryview`` of the
block, which torch keeps alive for as long as the storage (views and tensors saved by
autograd included), and ``weakref.finalize`` on that view returns the block. The tensor
is then given its shape with ``Tensor.set_``, a dispatched operation, so dispatch-mode
memory counters see its storage born like any other. CPU only (CUDA has its caching
allocator); blocks idle for :data:`IDLE_SECONDS` are unmapped, and
:func:`release_buffers` unmaps every free block at once.

Off by default, on with ``CONCATNETS_MALLOC=pool`` (:mod:`concatnets._allocator`).
Measured on an AMD EPYC (Zen 3), 1 thread, under glibc's own settings, the pool saves
page faults (densenet_bc_100 batch 64: 0.88x the CPU time of an engine step) but raises
the resident peak of a DenseNet (densenet_bc_100 1.4x, densenet121 1.15x; U-Net 0.92x):
its backward-only blocks stay resident, idle, through the forward peak, and long-lived
buffers held apart from malloc's heap no longer reuse the heap's freed transients, so
the peak becomes the pool's plus the heap's instead of their sum at one moment. With
glibc's threshold pinned it kept 65-130 MiB more resident for no CPU time gain beyond 3%.
"""

from __future__ import annotations

import collections
import math
import mmap
import threading
import time
import weakref
from dataclasses import dataclass

import torch
from torch import Tensor

from concatnets._allocator import allocator_setting
from concatnets.engine.layout import layout_of

__all__ = [
    "IDLE_SECONDS",
    "MIN_POOLED_BYTES",
    "PoolStats",
    "empty",
    "empty_like",
    "moved_to_pool",
    "pool_enabled",
    "pool_stats",
    "release_buffers",
    "set_pool_enabled",
]

#: Requests below this many bytes go to ``torch.empty``: malloc keeps small blocks well.
MIN_POOLED_BYTES = 256 * 1024
#: A free block unused for this long is unmapped at the next pool operation.
IDLE_SECONDS = 60.0
# A free block serves a request at most this much larger than the request, so a small
# buffer never holds a large block's resident pages.
_FIT_SLACK = 1.25
_PAGE = mmap.PAGESIZE


@dataclass(frozen=True)
class PoolStats:
    """What the pool holds now, and how often it has reused a block.

    Attributes:
        held_bytes: Bytes of all blocks mapped by the pool, in use or free.
        free_bytes: Bytes of free blocks (resident once touched, ready for reuse).
        in_use: Blocks whose tensor storage is alive.
        hits: Requests served by a free block since the process started.
        misses: Requests that mapped a new block.
    """

    held_bytes: int
    free_bytes: int
    in_use: int
    hits: int
    misses: int


class _Block:
    """One anonymous mapping and when it was last returned."""

    __slots__ = ("last_free", "mapping", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.mapping = mmap.mmap(-1, size)
        self.last_free = time.monotonic()


class _Pool:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: list[_Block] = []  # sorted by size
        self._returned: collections.deque[_Block] = collections.deque()
        self._in_use = 0
        self._held = 0
        self.hits = 0
        self.misses = 0

    def _give_back(self, block: _Block) -> None:
        # Runs wherever a storage dies (any thread, inside a deallocation): only an
        # atomic append; the free list is updated under the lock by the next operation.
        block.last_free = time.monotonic()
        self._returned.append(block)

    def _drain(self) -> None:
        while self._returned:
            block = self._returned.popleft()
            self._in_use -= 1
            index = 0
            while index < len(self._free) and self._free[index].size < block.size:
                index += 1
            self._free.insert(index, block)

    def _unmap(self, keep: list[_Block]) -> int:
        dropped = [b for b in self._free if b not in keep]
        self._free = keep
        freed = 0
        for block in dropped:
            self._held -= block.size
            freed += block.size
            block.mapping.close()
        return freed

    def _evict_idle(self) -> None:
        now = time.monotonic()
        if any(now - b.last_free > IDLE_SECONDS for b in self._free):
            self._unmap([b for b in self._free if now - b.last_free <= IDLE_SECONDS])

    def _choose(self, size: int, transient: bool) -> _Block | None:
        fits = [b for b in self._free if b.size >= size]
        if transient:
            # Scratch dies within the pass: any resident free block serves it, the one
            # returned last first (warm in cache), so no new block is mapped beside it.
            return max(fits, key=lambda b: b.last_free, default=None)
        best = fits[0] if fits else None  # the free list is sorted by size
        return best if best is not None and best.size <= size * _FIT_SLACK else None

    def take(self, nbytes: int, transient: bool = False) -> _Block:
        size = max(_PAGE, math.ceil(nbytes / _PAGE) * _PAGE)
        with self._lock:
            self._drain()
            self._evict_idle()
            block = self._choose(size, transient)
            if block is not None:
                self._free.remove(block)
                self.hits += 1
            else:
                block = _Block(size)
                self._held += size
                self.misses += 1
            self._in_use += 1
        return block

    def release_free(self) -> int:
        with self._lock:
            self._drain()
            return self._unmap([])

    def stats(self) -> PoolStats:
        with self._lock:
            self._drain()
            free = sum(b.size for b in self._free)
            return PoolStats(self._held, free, self._in_use, self.hits, self.misses)


_POOL = _Pool()
_enabled = allocator_setting().pool


def pool_enabled() -> bool:
    """Whether engine buffers come from the pool (``CONCATNETS_MALLOC=pool``)."""
    return _enabled


def set_pool_enabled(enabled: bool) -> None:
    """Turn the pool on or off for later requests; blocks in use stay valid."""
    global _enabled
    _enabled = bool(enabled)


def _strides(shape: tuple[int, ...], memory_format: torch.memory_format) -> tuple[int, ...]:
    """Dense strides of ``shape`` in ``memory_format`` (channels-last: channels innermost)."""
    rank = len(shape)
    order = list(range(rank - 1, -1, -1))  # innermost first
    if memory_format in (torch.channels_last, torch.channels_last_3d) and rank >= 3:
        order = [1, *range(rank - 1, 1, -1), 0]
    strides = [0] * rank
    step = 1
    for dim in order:
        strides[dim] = step
        step *= max(shape[dim], 1)
    return tuple(strides)


def empty(
    shape: tuple[int, ...] | torch.Size,
    *,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    memory_format: torch.memory_format = torch.contiguous_format,
    transient: bool = False,
) -> Tensor:
    """An uninitialised tensor like ``torch.empty``, on a pooled block when on CPU.

    Off the CPU, below :data:`MIN_POOLED_BYTES` or with the pool off it is
    ``torch.empty`` itself. A ``transient`` tensor (scratch that dies within the pass)
    may get any larger free block; others get a block at most 1.25x their size, so a
    small long-lived tensor never holds a large block's pages.
    """
    shape = tuple(int(s) for s in shape)
    numel = math.prod(shape)
    nbytes = numel * torch.empty((), dtype=dtype, device="meta").element_size()
    if not _pooled(nbytes, device):
        return torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format)
    block = _POOL.take(nbytes, transient)
    view = memoryview(block.mapping)
    weakref.finalize(view, _POOL._give_back, block)
    raw = torch.frombuffer(view, dtype=torch.uint8, count=nbytes)
    del view  # now owned by the storage alone
    out = torch.empty(0, dtype=dtype, device="cpu")
    out.set_(raw.untyped_storage(), 0, shape, _strides(shape, memory_format))
    return out


def _pooled(nbytes: int, device: torch.device | str) -> bool:
    return _enabled and torch.device(device).type == "cpu" and nbytes >= MIN_POOLED_BYTES


def moved_to_pool(t: Tensor) -> Tensor:
    """``t``'s values in a pooled tensor of its layout, or ``t`` itself where the pool
    would not take it (so a long-lived result leaves malloc's heap, or costs nothing)."""
    if not _pooled(t.numel() * t.element_size(), t.device):
        return t
    return empty_like(t).copy_(t)


def empty_like(
    t: Tensor, *, memory_format: torch.memory_format | None = None, transient: bool = False
) -> Tensor:
    """:func:`empty` of ``t``'s shape, dtype and device, in ``t``'s layout unless given."""
    if memory_format is None:
        memory_format = layout_of(t)
    return empty(
        t.shape, dtype=t.dtype, device=t.device, memory_format=memory_format, transient=transient
    )


def release_buffers() -> int:
    """Unmap every free pooled block now; returns the bytes given back to the OS.

    Blocks still in use are kept and return to the pool when their tensors die.
    """
    return _POOL.release_free()


def pool_stats() -> PoolStats:
    """The pool's :class:`PoolStats` now."""
    return _POOL.stats()
