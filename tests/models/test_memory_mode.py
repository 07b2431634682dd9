"""set_memory_efficient / memory_efficient: one switch, any time, refusals with the fix."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from concatnets.models import create_model
from concatnets.models._memory_mode import (
    EngineModeUnavailableError,
    MemoryModeModel,
    check_memory_mode,
)


class _Recorder(MemoryModeModel):
    memory_modes = (False, "checkpoint", True)

    def __init__(self) -> None:
        super().__init__()
        self.child = nn.Identity()
        self.seen: list[object] = []

    def _memory_mode_changed(self, mode: object) -> None:
        self.seen.append(mode)


def test_set_memory_efficient_and_assignment_are_the_same_switch() -> None:
    model = _Recorder()
    assert model.memory_efficient is False
    assert model.set_memory_efficient("checkpoint") is model
    assert model.memory_efficient == "checkpoint"
    model.memory_efficient = True
    assert model.memory_efficient is True
    assert model.set_memory_efficient(False).memory_efficient is False
    assert model.seen == ["checkpoint", True, False]


@pytest.mark.parametrize("bad", [1, 0, "engine", None, "True"])
def test_values_that_are_no_mode_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match=r"_Recorder memory_efficient must be False \(naive\)"):
        _Recorder().memory_efficient = bad  # type: ignore[assignment]


def test_a_mode_the_model_lacks_names_the_modes_it_has() -> None:
    with pytest.raises(ValueError, match=r"M has no 'checkpoint' mode: .* False \(naive\) or True"):
        check_memory_mode("M", "checkpoint", (False, True))
    with pytest.raises(ValueError, match="M has no engine mode"):
        check_memory_mode("M", True, (False, "checkpoint"))
    with pytest.raises(EngineModeUnavailableError, match="later"):
        check_memory_mode("M", True, (False,), unavailable="later")


def test_a_refused_mode_leaves_the_current_one() -> None:
    class Naive(MemoryModeModel):
        memory_modes = (False,)

    model = Naive()
    with pytest.raises(ValueError):
        model.set_memory_efficient(True)
    assert model.memory_efficient is False


def test_densenet_switches_its_blocks_after_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = create_model("densenet_bc", depth=10, growth_rate=4).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    naive = model(x)
    model.set_memory_efficient(True)
    inner = [m.memory_efficient for m in model.modules() if hasattr(m, "policy")]
    assert inner and all(mode is True for mode in inner)

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.cat called by the engine's dense block")

    monkeypatch.setattr(torch, "cat", forbidden)
    engine = model(x)
    monkeypatch.undo()
    torch.testing.assert_close(engine, naive)
