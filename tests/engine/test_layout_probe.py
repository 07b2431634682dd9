"""The layout probe chooses by the times it measures."""

from __future__ import annotations

import pytest
import torch

from concatnets.engine.layout_probe import (
    PROBE_SHAPES,
    SCREEN_SHAPES,
    choose_from_timings,
    probe_cpu_layout,
    time_conv_step,
)


def fake_timer(full: dict[str, float], screen: dict[str, float] | None = None):
    """A timer giving fixed seconds per layout, ``screen`` at the screen shape."""
    calls: list[tuple[str, int, int]] = []

    def timer(layout: str, rank: int, dtype: torch.dtype, channels: int, size: int) -> float:
        calls.append((layout, channels, size))
        at_screen = (channels, size) == SCREEN_SHAPES[rank]
        return (
            (screen or {"channels_last": 1e-6, "contiguous": 1e-6})[layout]
            if at_screen
            else full[layout]
        )

    return timer, calls


@pytest.mark.parametrize(
    ("full", "expected"),
    [
        ({"channels_last": 0.010, "contiguous": 0.020}, "channels_last"),
        ({"channels_last": 0.020, "contiguous": 0.010}, "contiguous"),
        ({"channels_last": 0.0102, "contiguous": 0.0100}, "channels_last"),  # within tolerance
    ],
)
def test_probe_chooses_the_faster_layout(full: dict[str, float], expected: str) -> None:
    timer, calls = fake_timer(full)
    result = probe_cpu_layout(2, torch.float32, budget_s=0.0, screen_budget_s=0.0, timer=timer)
    assert result.layout == expected
    assert result.shape == PROBE_SHAPES[2]
    assert result.seconds == full
    assert {c[0] for c in calls} == {"channels_last", "contiguous"}


def test_grossly_slower_layout_at_the_screen_shape_skips_the_full_shape() -> None:
    timer, calls = fake_timer(
        {"channels_last": 1.0, "contiguous": 0.1},
        screen={"channels_last": 1e-4, "contiguous": 1e-3},
    )
    result = probe_cpu_layout(3, torch.bfloat16, budget_s=0.0, screen_budget_s=0.0, timer=timer)
    assert result.layout == "channels_last"
    assert result.shape == SCREEN_SHAPES[3]
    assert all((c, s) == SCREEN_SHAPES[3] for _, c, s in calls)


def test_slow_screen_skips_the_full_shape() -> None:
    slow = {"channels_last": 0.01, "contiguous": 0.02}  # x256 work: 2.6-5 s per full step
    timer, calls = fake_timer({"channels_last": 9.0, "contiguous": 9.0}, screen=slow)
    result = probe_cpu_layout(2, torch.float32, budget_s=0.0, screen_budget_s=0.0, timer=timer)
    assert result.shape == SCREEN_SHAPES[2] and result.layout == "channels_last"
    assert all((c, s) == SCREEN_SHAPES[2] for _, c, s in calls)


def test_a_screen_that_misleads_is_overruled_by_the_full_shape() -> None:
    # AMD EPYC (Zen 3), float32, 1 thread, as measured: the screen favours channels-last,
    # the full shape (0.2-0.3 s per step) the default layout, as the U-Net's maps do.
    screen = {"channels_last": 0.0005, "contiguous": 0.0007}
    timer, calls = fake_timer({"channels_last": 0.233, "contiguous": 0.186}, screen=screen)
    result = probe_cpu_layout(2, torch.float32, budget_s=0.0, screen_budget_s=0.0, timer=timer)
    assert result.layout == "contiguous" and result.shape == PROBE_SHAPES[2]
    assert any((c, s) == PROBE_SHAPES[2] for _, c, s in calls)


def test_best_time_of_the_rounds_counts() -> None:
    times = iter([5.0, 5.0] + [1e-6] * 4 + [5.0, 5.0] + [0.03, 0.02, 0.01, 0.04])  # warm-ups first
    result = probe_cpu_layout(
        2, torch.float32, budget_s=0.0, screen_budget_s=0.0, timer=lambda *args: next(times)
    )
    # rounds alternate the order: (cl, contig), then (contig, cl)
    assert result.seconds == {"channels_last": 0.03, "contiguous": 0.01}
    assert result.layout == "contiguous"


def test_choose_from_timings_keeps_channels_last_on_a_tie() -> None:
    assert choose_from_timings({"channels_last": 1.0, "contiguous": 1.0}) == "channels_last"


def test_probe_refuses_a_rank_without_channels_last() -> None:
    with pytest.raises(ValueError, match="2-D and 3-D"):
        probe_cpu_layout(1, torch.float32)


def test_time_conv_step_runs_forward_and_backward_even_under_no_grad() -> None:
    with torch.no_grad():
        result = probe_cpu_layout(
            2,
            torch.float32,
            budget_s=0.0,
            screen_budget_s=0.0,
            timer=lambda layout, rank, dtype, c, s: time_conv_step(layout, rank, dtype, 4, 6),
        )
    assert all(s > 0 for s in result.seconds.values())
