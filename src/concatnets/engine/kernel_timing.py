"""Timing two ways of computing the same thing on a shared machine, fairly.

Used by the probes that choose per machine: the engine's layout
(:mod:`concatnets.engine.layout_probe`) and its 1x1 convolution kernel
(:mod:`concatnets.engine.pointwise_choice`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

__all__ = ["best_alternating"]


def best_alternating(
    timers: Mapping[str, Callable[[], float]], budget_s: float
) -> tuple[dict[str, float], int]:
    """Best seconds per candidate over alternating rounds (at least two) within ``budget_s``.

    Each timer runs once untimed first (kernels are created then). Rounds alternate the
    order of the candidates; the best time of each counts, since on a loaded machine the
    noise only ever adds time.
    """
    names = list(timers)
    for name in names:
        timers[name]()  # warm-up
    best = dict.fromkeys(names, float("inf"))
    deadline = time.perf_counter() + budget_s
    rounds = 0
    while rounds < 2 or time.perf_counter() < deadline:
        for name in names if rounds % 2 == 0 else names[::-1]:
            best[name] = min(best[name], timers[name]())
        rounds += 1
    return best, rounds
