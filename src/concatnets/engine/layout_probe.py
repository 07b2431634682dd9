"""Which layout runs a U-Net's 3x3 convolutions faster on this CPU, by timing both.

Which layout oneDNN runs faster depends on the CPU: channels-last 3x3 convolutions took
0.5-0.7x the default layout's time on an Intel Xeon with AVX-512 and 1.6-2.2x on an AMD
EPYC (Zen 3, AVX2 only). No rule on the CPU model is safe, so the engine times one
convolution forward + backward per layout, at a U-Net's high-resolution widths, on the
machine it runs on (see :func:`probe_cpu_layout`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from concatnets.engine.kernel_timing import best_alternating

__all__ = [
    "PROBE_BUDGET_S",
    "PROBE_SHAPES",
    "SCREEN_SHAPES",
    "ProbeResult",
    "choose_from_timings",
    "probe_cpu_layout",
    "time_conv_step",
]

#: Seconds the probe may spend (per decision) after its first round of both layouts.
PROBE_BUDGET_S = 0.25

#: (channels, spatial size) probed per spatial rank, at a U-Net's widths. Small maps say
#: little about full-size ones (a Xeon limited to AVX2, 128 channels: channels-last 0.67x
#: at 48 px, 1.26x at 64 px, 1.34x at 128 px), and the layouts differ most on the large
#: maps of a U-Net's first levels: on an AMD EPYC (Zen 3), float32, at the same work,
#: 128 channels at 64 px read 0.91-1.29x over three runs on a loaded machine, 64 channels
#: at 128 px 2.13x (the U-Net's own 64 @ 256 px and 128 @ 128 px maps: 1.55x, 2.22x). One
#: forward + backward at this shape takes 0.1-0.5 s on one thread.
PROBE_SHAPES: Mapping[int, tuple[int, int]] = {2: (64, 128), 3: (64, 12)}

#: A small shape timed first. The full shape is skipped when one layout is grossly slower
#: there, or when its time there, scaled by the work, says one full-size step would take
#: over MAX_FULL_STEP_S (bfloat16 in the default layout on a CPU without bfloat16
#: instructions took 11 s per full-size step, 8x channels-last's). The screen alone says
#: little: on an AMD EPYC (Zen 3) at float32 it read channels-last 0.79x, where the full
#: shape read 1.25-1.29x and a U-Net's real maps 1.1-2.2x; one full-size float32 step
#: there takes 0.2-0.3 s, so the limit must let it run (0.25 s once skipped it there).
SCREEN_SHAPES: Mapping[int, tuple[int, int]] = {2: (32, 16), 3: (16, 8)}
GROSS_RATIO = 3.0
MAX_FULL_STEP_S = 1.0
#: Seconds of screen rounds: a screen step takes well under a millisecond at float32,
#: where two rounds on a loaded machine once read channels-last 3.7x slower (20 rounds:
#: 0.75x), so the screen takes many rounds before it may skip the full shape.
SCREEN_BUDGET_S = 0.05

#: Channels-last is kept unless the default layout is this much faster: channels-last
#: avoids oneDNN's transient reorder copies (forward peak 1x the output against 3x).
CHANNELS_LAST_TOLERANCE = 0.05

_CONV = {2: F.conv2d, 3: F.conv3d}
_FORMATS = {
    (2, "channels_last"): torch.channels_last,
    (3, "channels_last"): torch.channels_last_3d,
    (2, "contiguous"): torch.contiguous_format,
    (3, "contiguous"): torch.contiguous_format,
}

LayoutTimer = Callable[[str, int, torch.dtype, int, int], float]


@dataclass(frozen=True)
class ProbeResult:
    """The probe's choice, the best seconds per layout, and the shape they were taken at."""

    layout: str
    seconds: Mapping[str, float]
    rounds: int
    shape: tuple[int, int]


def time_conv_step(
    layout: str, rank: int, dtype: torch.dtype, channels: int, size: int, batch: int = 1
) -> float:
    """Seconds of one 3x3 convolution forward + backward (input and weight grads) on CPU."""
    memory_format = _FORMATS[(rank, layout)]
    shape = (batch, channels, *(size,) * rank)
    x = torch.randn(shape, dtype=dtype).contiguous(memory_format=memory_format)
    weight = torch.randn((channels, channels, *(3,) * rank), dtype=dtype)
    weight = weight.contiguous(memory_format=memory_format).requires_grad_()
    x.requires_grad_()
    start = time.perf_counter()
    y = _CONV[rank](x, weight, padding=1)
    y.backward(torch.ones_like(y))
    return time.perf_counter() - start


def choose_from_timings(seconds: Mapping[str, float]) -> str:
    """``channels_last`` unless ``contiguous`` is faster by more than the tolerance."""
    if seconds["contiguous"] * (1 + CHANNELS_LAST_TOLERANCE) < seconds["channels_last"]:
        return "contiguous"
    return "channels_last"


def probe_cpu_layout(
    rank: int,
    dtype: torch.dtype,
    *,
    budget_s: float = PROBE_BUDGET_S,
    screen_budget_s: float = SCREEN_BUDGET_S,
    timer: LayoutTimer = time_conv_step,
) -> ProbeResult:
    """Time both layouts in alternation and choose by the best time of each.

    First a small screen shape; unless one layout is grossly slower there, then the full
    probe shape. Per shape: one untimed warm-up per layout (oneDNN builds its kernels
    then), then rounds of both layouts in alternating order until ``budget_s`` is spent
    (at least two rounds). The best time of each layout counts: on a loaded machine the
    noise only ever adds time.
    """
    if rank not in PROBE_SHAPES:
        raise ValueError(f"the layout probe knows 2-D and 3-D convolutions, got rank {rank}")
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast("cpu", enabled=False):
        return _probe(rank, dtype, budget_s, screen_budget_s, timer)


def _best_times(
    timer: LayoutTimer, rank: int, dtype: torch.dtype, shape: tuple[int, int], budget_s: float
) -> tuple[dict[str, float], int]:
    """Best seconds per layout over alternating rounds (at least two) within ``budget_s``."""
    timers = {
        layout: functools.partial(timer, layout, rank, dtype, *shape)
        for layout in ("channels_last", "contiguous")
    }
    return best_alternating(timers, budget_s)


def _work(rank: int, shapes: Mapping[int, tuple[int, int]]) -> int:
    channels, size = shapes[rank]
    return channels**2 * size**rank  # multiply-adds of a 3x3 convolution, up to a constant


def _probe(
    rank: int, dtype: torch.dtype, budget_s: float, screen_budget_s: float, timer: LayoutTimer
) -> ProbeResult:
    screen, rounds = _best_times(timer, rank, dtype, SCREEN_SHAPES[rank], screen_budget_s)
    ratio = screen["channels_last"] / screen["contiguous"]
    full_step_s = max(screen.values()) * _work(rank, PROBE_SHAPES) / _work(rank, SCREEN_SHAPES)
    if not 1 / GROSS_RATIO <= ratio <= GROSS_RATIO or full_step_s > MAX_FULL_STEP_S:
        return ProbeResult(choose_from_timings(screen), screen, rounds, SCREEN_SHAPES[rank])
    best, rounds = _best_times(timer, rank, dtype, PROBE_SHAPES[rank], budget_s)
    return ProbeResult(choose_from_timings(best), best, rounds, PROBE_SHAPES[rank])
