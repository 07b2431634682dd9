"""The engine's timed choices recorded as JSON rows and restored (engine.choices)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import torch

from concatnets.engine import layout_choice, pointwise_choice
from concatnets.engine.choices import engine_choice_rows, restore_engine_choices


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("CONCATNETS_POINTWISE", raising=False)
    monkeypatch.delenv("CONCATNETS_LAYOUT", raising=False)
    pointwise_choice.clear_pointwise_decisions()
    layout_choice.clear_layout_decisions()
    yield
    pointwise_choice.clear_pointwise_decisions()
    layout_choice.clear_layout_decisions()


def test_probe_results_round_trip_through_json_without_timing_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    timings = iter([{"gemm": 2.0, "conv": 1.0}])  # conv faster: the probe says conv
    monkeypatch.setattr(pointwise_choice, "probe_pointwise", lambda dtype, cl: next(timings))
    assert pointwise_choice.decide_pointwise("cpu", torch.float32, False).kernel == "conv"
    rows = json.loads(json.dumps(engine_choice_rows()))  # as a checkpoint stores them
    assert rows["pointwise"] == [
        {
            "device": "cpu",
            "dtype": "float32",
            "channels_last": False,
            "threads": torch.get_num_threads(),
            "kernel": "conv",
        }
    ]
    pointwise_choice.clear_pointwise_decisions()  # a new process
    assert restore_engine_choices(rows) == 1
    decision = pointwise_choice.decide_pointwise("cpu", torch.float32, False)  # no 2nd probe
    assert (decision.kernel, decision.source) == ("conv", "restored")
    monkeypatch.setenv("CONCATNETS_POINTWISE", "gemm")  # an override still wins
    assert pointwise_choice.decide_pointwise("cpu", torch.float32, False).kernel == "gemm"


def test_restored_layout_is_used_instead_of_a_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_probe(*args: object, **kwargs: object) -> None:
        raise AssertionError("the layout probe ran although a choice was restored")

    monkeypatch.setattr(layout_choice, "probe_cpu_layout", no_probe)
    row = {
        "device": "cpu",
        "spatial_rank": 2,
        "dtype": "float32",
        "threads": torch.get_num_threads(),
    }
    restore_engine_choices({"layout": [{**row, "layout": "contiguous"}]})
    decision = layout_choice.decide_layout("cpu", 2, torch.float32)
    assert (decision.layout, decision.source) == ("contiguous", "restored")
    assert engine_choice_rows()["layout"] == [{**row, "layout": "contiguous"}]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ({"pointwise": [{"device": "cpu"}]}, "malformed"),
        (
            {
                "pointwise": [
                    {
                        "device": "cpu",
                        "dtype": "floaty",
                        "channels_last": False,
                        "threads": 1,
                        "kernel": "gemm",
                    }
                ]
            },
            "unknown dtype 'floaty'",
        ),
        (
            {
                "pointwise": [
                    {
                        "device": "cpu",
                        "dtype": "float32",
                        "channels_last": False,
                        "threads": 1,
                        "kernel": "fast",
                    }
                ]
            },
            "gemm or conv",
        ),
        (
            {
                "layout": [
                    {
                        "device": "cpu",
                        "spatial_rank": 2,
                        "dtype": "float32",
                        "threads": 1,
                        "layout": "nhwc",
                    }
                ]
            },
            "channels_last or contiguous",
        ),
    ],
)
def test_malformed_rows_are_refused(rows: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        restore_engine_choices(rows)
