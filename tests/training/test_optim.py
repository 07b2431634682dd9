"""Schedules: the closed form that puts a fresh schedule at any epoch in O(1)."""

from __future__ import annotations

import time

import pytest
import torch

from concatnets.training.optim import advance_schedule, build_optimizer, build_scheduler


def _optimizer() -> torch.optim.Optimizer:
    return build_optimizer("adam", [torch.nn.Parameter(torch.zeros(2))], lr=0.1)


@pytest.mark.parametrize("name", ["constant", "cosine", "step"])
def test_advance_schedule_matches_stepping_epoch_by_epoch(name: str) -> None:
    stepped_optimizer = _optimizer()
    stepped = build_scheduler(name, stepped_optimizer, epochs=12, step_size=4, gamma=0.5)
    for epoch in range(1, 16):
        stepped_optimizer.step()
        stepped.step()
        optimizer = _optimizer()
        jumped = build_scheduler(name, optimizer, epochs=12, step_size=4, gamma=0.5)
        advance_schedule(jumped, epoch)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(
            stepped_optimizer.param_groups[0]["lr"], rel=1e-9, abs=1e-15
        )
        assert jumped.last_epoch == stepped.last_epoch
        # It continues from there like the stepped one.
        optimizer.step()
        jumped.step()
        reference = build_scheduler(name, _optimizer(), epochs=12, step_size=4, gamma=0.5)
        advance_schedule(reference, epoch + 1)
        assert jumped.get_last_lr()[0] == pytest.approx(reference.get_last_lr()[0], abs=1e-12)


def test_advance_schedule_to_a_huge_epoch_is_instant() -> None:
    scheduler = build_scheduler("cosine", _optimizer(), epochs=3)
    started = time.perf_counter()
    advance_schedule(scheduler, 10**9)
    assert time.perf_counter() - started < 0.1
    assert scheduler.last_epoch == 10**9
