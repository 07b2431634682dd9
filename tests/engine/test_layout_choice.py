"""The engine's layout: probed once per key, overridable, inspectable."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from concatnets.engine import layout_choice, layout_decisions, set_layout, use_layout
from concatnets.engine.layout_choice import (
    LAYOUT_ENV_VAR,
    LayoutKey,
    clear_layout_decisions,
    decide_layout,
    preferred_layout,
)
from concatnets.engine.layout_probe import ProbeResult


@pytest.fixture(autouse=True)
def fresh_choice(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, torch.dtype]]]:
    """No setting, no env var, no cached decision; the probe answers ``contiguous``."""
    probes: list[tuple[int, torch.dtype]] = []

    def fake_probe(rank: int, dtype: torch.dtype) -> ProbeResult:
        probes.append((rank, dtype))
        return ProbeResult("contiguous", {"channels_last": 2.0, "contiguous": 1.0}, 2, (8, 8))

    monkeypatch.delenv(LAYOUT_ENV_VAR, raising=False)
    monkeypatch.setattr(layout_choice, "probe_cpu_layout", fake_probe)
    set_layout(None)
    clear_layout_decisions()
    yield probes
    set_layout(None)
    clear_layout_decisions()


def test_probe_runs_once_per_key(fresh_choice: list[tuple[int, torch.dtype]]) -> None:
    for _ in range(3):
        assert decide_layout("cpu", 2, torch.float32).layout == "contiguous"
    assert fresh_choice == [(2, torch.float32)]
    decide_layout("cpu", 2, torch.bfloat16)
    decide_layout("cpu", 3, torch.float32)
    assert fresh_choice == [(2, torch.float32), (2, torch.bfloat16), (3, torch.float32)]


def test_thread_count_is_part_of_the_key(fresh_choice: list[tuple[int, torch.dtype]]) -> None:
    threads = torch.get_num_threads()
    try:
        decide_layout("cpu", 2, torch.float32)
        torch.set_num_threads(threads + 1)
        decide_layout("cpu", 2, torch.float32)
    finally:
        torch.set_num_threads(threads)
    assert len(fresh_choice) == 2
    assert {key.threads for key in layout_decisions()} == {threads, threads + 1}


def test_decisions_are_recorded_per_key_with_their_source() -> None:
    decide_layout("cpu", 2, torch.float32)
    with use_layout("channels_last"):
        decide_layout("cpu", 3, torch.float32)
    decisions = layout_decisions()
    probed = decisions[LayoutKey("cpu", 2, torch.float32, torch.get_num_threads())]
    assert (probed.layout, probed.source) == ("contiguous", "probe")
    assert probed.probe_seconds == {"channels_last": 2.0, "contiguous": 1.0}
    forced = decisions[LayoutKey("cpu", 3, torch.float32, torch.get_num_threads())]
    assert (forced.layout, forced.source) == ("channels_last", "use_layout")


def test_precedence_context_over_set_layout_over_env_over_auto(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def chosen() -> tuple[str, str]:
        decision = decide_layout("cpu", 2, torch.float32)
        return decision.layout, decision.source

    assert chosen() == ("contiguous", "probe")
    monkeypatch.setenv(LAYOUT_ENV_VAR, "channels_last")
    assert chosen() == ("channels_last", "env")
    set_layout("contiguous")
    assert chosen() == ("contiguous", "set_layout")
    with use_layout("channels_last"):
        assert chosen() == ("channels_last", "use_layout")
        with use_layout("auto"):
            assert chosen() == ("contiguous", "probe")
        assert chosen() == ("channels_last", "use_layout")
    assert chosen() == ("contiguous", "set_layout")
    set_layout("auto")  # explicit auto beats the env var
    assert chosen() == ("contiguous", "probe")
    set_layout(None)
    assert chosen() == ("channels_last", "env")


def test_cuda_follows_the_rule_without_probing(fresh_choice: list[tuple[int, torch.dtype]]) -> None:
    assert decide_layout("cuda", 2, torch.float16).layout == "channels_last"
    assert decide_layout("cuda", 2, torch.bfloat16).layout == "channels_last"
    assert decide_layout("cuda", 3, torch.float32).layout == "contiguous"
    assert {d.source for d in layout_decisions().values()} == {"rule"}
    assert fresh_choice == []


def test_float64_and_one_d_follow_the_rule(fresh_choice: list[tuple[int, torch.dtype]]) -> None:
    assert decide_layout("cpu", 2, torch.float64).layout == "channels_last"
    assert decide_layout("cpu", 1, torch.float32).layout == "contiguous"
    assert fresh_choice == []


def test_preferred_layout_maps_the_decision_to_a_memory_format() -> None:
    image, volume = torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4, 4)
    assert preferred_layout(image) == torch.contiguous_format  # the fake probe's choice
    with use_layout("channels_last"):
        assert preferred_layout(image) == torch.channels_last
        assert preferred_layout(volume) == torch.channels_last_3d


def test_preferred_layout_keys_on_the_autocast_dtype() -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        preferred_layout(torch.zeros(1, 2, 4, 4))
    assert [key.dtype for key in layout_decisions()] == [torch.bfloat16]


@pytest.mark.parametrize("bad", ["nhwc", "Channels-Last", ""])
def test_bad_settings_name_the_choices(bad: str) -> None:
    with pytest.raises(ValueError, match="auto, channels_last, contiguous"):
        set_layout(bad)
    with pytest.raises(ValueError, match="use_layout"), use_layout(bad):
        pass


def test_bad_env_var_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LAYOUT_ENV_VAR, "fastest")
    with pytest.raises(ValueError, match=LAYOUT_ENV_VAR):
        decide_layout("cpu", 2, torch.float32)
