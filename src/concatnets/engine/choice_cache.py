"""Per-key probe results and latest decisions of a timed engine choice, thread-safe.

Shared by the engine's layout (:mod:`concatnets.engine.layout_choice`) and its 1x1
convolution kernel (:mod:`concatnets.engine.pointwise_choice`): a probe runs once per key
and process (or its result is restored, :mod:`concatnets.engine.choices`), and the latest
decision per key is kept for reports.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["ChoiceCache"]

K = TypeVar("K", bound=Hashable)
D = TypeVar("D")


class ChoiceCache(Generic[K, D]):
    """Probe results (one per key, computed once) and the latest decision per key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._probed: dict[K, D] = {}
        self._decided: dict[K, D] = {}

    def probed_or(self, key: K, probe: Callable[[], D]) -> D:
        """The probe result for ``key``, running ``probe`` the first time (under the lock,
        so concurrent first uses time once)."""
        with self._lock:
            if key not in self._probed:
                self._probed[key] = probe()
            return self._probed[key]

    def pin(self, key: K, decision: D) -> None:
        """Take ``decision`` as the probe result for ``key`` (no probe runs for it)."""
        with self._lock:
            self._probed[key] = decision

    def record(self, key: K, decision: D) -> D:
        """Remember ``decision`` as the latest for ``key``; returns it."""
        self._decided[key] = decision
        return decision

    def probed(self) -> dict[K, D]:
        """The probe results (a copy)."""
        with self._lock:
            return dict(self._probed)

    def decided(self) -> dict[K, D]:
        """The latest decision per key (a copy)."""
        return dict(self._decided)

    def clear(self) -> None:
        """Forget every probe result and decision."""
        with self._lock:
            self._probed.clear()
            self._decided.clear()
