"""``concatnets bench time``: interleaved step timing of every mode in one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from concatnets.bench.config import BenchConfig
from concatnets.bench.interleaved import measure_interleaved
from concatnets.cli.main import main


def test_every_mode_is_timed_against_naive() -> None:
    config = BenchConfig(
        "densenet_bc", "naive", 2, 8, model_kwargs={"depth": 10, "growth_rate": 4}, threads=1
    )
    result = measure_interleaved(config, ["efficient", "checkpoint"], rounds=2, warmup=0)
    assert list(result["modes"]) == ["naive", "efficient", "checkpoint"]
    naive = result["modes"]["naive"]
    assert naive["time_ratio"] == pytest.approx(1.0)
    for row in result["modes"].values():
        assert len(row["step_times_s"]) == 2
        assert all(t > 0 for t in row["step_times_s"] + row["cpu_step_times_s"])


def test_cli_skips_unsupported_modes_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "time.json"
    argv = ["bench", "time", "--model", "unet_small", "--batch", "1", "--image-size", "16"]
    argv += ["--rounds", "1", "--warmup", "0", "--threads", "1", "--output", str(output)]
    assert main(argv) == 0
    result = json.loads(output.read_text())
    assert list(result["modes"]) == ["naive", "efficient"]
    assert result["unsupported"] == ["checkpoint"]
    assert "checkpoint: not supported" in capsys.readouterr().out


def test_channels_last_runs_every_mode_in_that_layout() -> None:
    from concatnets.bench.memory import _make_batch, prepare_model

    config = BenchConfig(
        "unet", "naive", 2, 16, model_kwargs={"depth": 2, "features": 4}, channels_last=True
    )
    model = prepare_model(config, torch.device("cpu"))
    weight = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    inputs, _, _ = _make_batch(model, config, torch.device("cpu"))
    assert inputs.is_contiguous(memory_format=torch.channels_last)
    result = measure_interleaved(config, ["efficient"], rounds=1, warmup=0)
    assert result["channels_last"] and list(result["modes"]) == ["naive", "efficient"]


def test_model_args_build_every_mode_with_them(tmp_path: Path) -> None:
    output = tmp_path / "time.json"
    argv = ["bench", "time", "--model", "unet_small", "--modes", "naive,efficient"]
    argv += ["--batch", "2", "--image-size", "16", "--rounds", "1", "--warmup", "0"]
    argv += ["--model-arg", "normalization=instance", "--model-arg", "depth=2"]
    assert main([*argv, "--output", str(output)]) == 0
    result = json.loads(output.read_text())
    assert result["model_kwargs"] == {"normalization": "instance", "depth": 2}
    assert list(result["modes"]) == ["naive", "efficient"]
