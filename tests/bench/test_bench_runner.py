"""The child measurement and the runner's process isolation and failure handling."""

from __future__ import annotations

import json
import math
import os
import signal
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from concatnets.bench import BenchConfig, run_config, run_configs
from concatnets.bench._child import main as child_main
from concatnets.bench.runner import ALLOCATOR_SETTINGS, _death_reason, child_environment

TINY_MODELS = """
import time

import torch
from torch import nn


class TinyDense(nn.Module):
    def __init__(self, depth=2, width=4, num_classes=3):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.layers = nn.ModuleList(
            nn.Conv2d(width * (i + 1), width, 3, padding=1) for i in range(depth)
        )
        self.head = nn.Linear(width * (depth + 1), num_classes)

    def forward(self, x):
        features = [self.stem(x)]
        for layer in self.layers:
            features.append(torch.relu(layer(torch.cat(features, 1))))
        return self.head(torch.cat(features, 1).mean((2, 3)))


class TinySegmenter(nn.Module):
    def __init__(self, num_classes=2):
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def tiny(memory_efficient=False, **kwargs):
    if memory_efficient == "checkpoint":
        raise ValueError("TinyDense has no checkpoint mode")
    return TinyDense(**kwargs)


def segmenter(memory_efficient=False, **kwargs):
    return TinySegmenter(**kwargs)


def broken(memory_efficient=False, **kwargs):
    raise RuntimeError("deliberate failure inside the child")


def sleepy(memory_efficient=False, **kwargs):
    time.sleep(60)
"""


@pytest.fixture(scope="module")
def tiny_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A module of tiny models importable by child processes through PYTHONPATH."""
    folder = tmp_path_factory.mktemp("tiny_models")
    (folder / "bench_tiny_models.py").write_text(textwrap.dedent(TINY_MODELS))
    return folder


@pytest.fixture(scope="module")
def child_env(tiny_module: Path) -> dict[str, str]:
    env = child_environment("fixed")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tiny_module), env.get("PYTHONPATH")]))
    return env


def _config(builder: str, mode: str = "naive", **overrides: Any) -> BenchConfig:
    settings: dict[str, Any] = {
        "model": builder,
        "mode": mode,
        "batch": 2,
        "image_size": 8,
        "steps": 2,
        "warmup": 1,
        "threads": 1,
        "builder": f"bench_tiny_models:{builder}",
        "model_kwargs": {"depth": 2} if builder == "tiny" else {},
    }
    return BenchConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def results(child_env: dict[str, str]) -> list[dict[str, Any]]:
    plan = [_config("tiny", "naive"), _config("tiny", "efficient"), _config("broken", "naive")]
    return run_configs(plan, env=child_env, timeout=120)


@pytest.fixture
def in_process(tiny_module: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run the child's entry point in this process, leaving torch's global state as is."""
    monkeypatch.syspath_prepend(str(tiny_module))
    with torch.random.fork_rng():
        yield


def test_child_reports_sane_numbers(results: list[dict[str, Any]]) -> None:
    result = results[0]
    assert result["status"] == "ok", result.get("error")
    assert result["task"] == "classification"
    assert result["input_shape"] == [2, 3, 8, 8]
    assert result["peak_growth_mib"] >= 0
    assert result["peak_growth_mib"] == max(result["step_peak_growth_mib"])
    assert len(result["step_times_s"]) == 3  # one warm-up + two timed steps
    assert result["median_step_s"] > 0
    assert 0 < result["min_step_s"] <= result["median_step_s"]
    assert result["torch_threads"] == 1
    assert all(math.isfinite(loss) for loss in result["losses"])
    assert result["config"]["mode"] == "naive"
    assert result["live_peak_mib"] > 0
    assert result["allocator_setting"]  # what import concatnets did, in words


def test_children_run_with_the_shared_allocator_settings(results: list[dict[str, Any]]) -> None:
    for result in results[:2]:
        assert result["allocator_env"] == ALLOCATOR_SETTINGS["fixed"]


def test_each_configuration_runs_in_its_own_process(results: list[dict[str, Any]]) -> None:
    pids = [r["pid"] for r in results]
    assert len(set(pids)) == len(pids)
    assert os.getpid() not in pids
    assert all(r["pid"] == r["child_pid"] for r in results)


def test_failed_child_is_reported_with_its_stderr(results: list[dict[str, Any]]) -> None:
    result = results[2]
    assert result["status"] == "failed"
    assert "deliberate failure inside the child" in result["error"]
    assert result["config"]["model"] == "broken"


def _child_result(config: BenchConfig, tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "result.json"
    assert child_main(["--config", config.to_json(), "--result", str(path)]) == 0
    return json.loads(path.read_text())


@pytest.mark.usefixtures("in_process")
def test_unsupported_mode_is_reported_not_raised(tmp_path: Path) -> None:
    result = _child_result(_config("tiny", "checkpoint", threads=None), tmp_path)
    assert result["status"] == "unsupported"
    assert "checkpoint" in result["error"]


@pytest.mark.usefixtures("in_process")
def test_segmentation_output_gets_a_mask_target(tmp_path: Path) -> None:
    result = _child_result(_config("segmenter", steps=1, warmup=0, threads=None), tmp_path)
    assert result["status"] == "ok"
    assert result["task"] == "segmentation"
    assert len(result["step_times_s"]) == 1


def test_child_past_its_timeout_is_killed_and_reported(child_env: dict[str, str]) -> None:
    result = run_config(_config("sleepy"), env=child_env, timeout=0.5)
    assert result["status"] == "timeout"
    assert "0.5" in result["error"]


def test_death_by_signal_is_explained() -> None:
    assert "out of memory" in _death_reason(-signal.SIGKILL)
    assert "SIGSEGV" in _death_reason(-signal.SIGSEGV)
    assert _death_reason(3) == "exited with status 3"


def test_user_and_glibc_environments_add_no_malloc_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.delenv("CONCATNETS_MALLOC", raising=False)
    assert child_environment() == child_environment("user")
    assert "MALLOC_ARENA_MAX" not in child_environment("user")
    assert "CONCATNETS_MALLOC" not in child_environment("user")
    assert child_environment("glibc")["CONCATNETS_MALLOC"] == "system"
    assert child_environment("fixed")["MALLOC_ARENA_MAX"] == "2"
    with pytest.raises(ValueError, match="allocator"):
        child_environment("jemalloc")
