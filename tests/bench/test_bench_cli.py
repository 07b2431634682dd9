"""Command-line parsing and wiring of ``concatnets bench memory``."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

import concatnets
from concatnets.bench import cli
from concatnets.bench.config import BenchConfig


def _parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(list(argv))


def test_add_parser_registers_bench_memory_on_a_main_cli() -> None:
    main = argparse.ArgumentParser(prog="concatnets")
    commands = main.add_subparsers(dest="command")
    cli.add_parser(commands)
    args = main.parse_args(["bench", "memory", "--preset", "targets"])
    assert args.command == "bench" and args.benchmark == "memory"
    assert args.preset == "targets" and args.func is cli.run_memory


def test_lists_and_options_are_parsed() -> None:
    args = _parse(
        "memory",
        "--models",
        "densenet_bc_100,unet",
        "--modes",
        "naive,efficient",
        "--depth-sweep",
        "40,100,160,250",
        "--batch",
        "16",
        "--image-size",
        "64",
        "--threads",
        "1",
        "--allocator",
        "user,glibc",
        "--output",
        "out",
    )
    assert args.models == ["densenet_bc_100", "unet"]
    assert args.modes == ["naive", "efficient"]
    assert args.depth_sweep == [40, 100, 160, 250]
    assert (args.batch, args.image_size, args.threads) == (16, 64, 1)
    assert args.allocator == ["user", "glibc"] and args.output == Path("out")
    defaults = _parse("memory")
    assert defaults.modes == ["naive", "checkpoint", "efficient"]
    assert defaults.allocator == ["user"] and defaults.device == "cpu"
    assert defaults.amp is None


def test_model_args_reach_every_planned_row(monkeypatch: pytest.MonkeyPatch) -> None:
    planned: list[BenchConfig] = []

    def fake_run(configs: list[BenchConfig], **kwargs: Any) -> list[dict[str, Any]]:
        planned.extend(configs)
        return _fake_run(configs, **kwargs)

    monkeypatch.setattr(cli, "run_configs", fake_run)
    argv = ["memory", "--models", "unet", "--modes", "naive,efficient", "--batch", "1"]
    argv += ["--model-arg", "normalization=instance", "--model-arg", "depth=2"]
    assert cli.main(argv) == 0
    assert [c.mode for c in planned] == ["naive", "efficient"]
    for config in planned:
        assert config.model_kwargs == {"normalization": "instance", "depth": 2}
        assert config.label == "unet depth=2,normalization=instance"


@pytest.mark.parametrize(
    "argv",
    [
        ["memory", "--modes", "fast"],
        ["memory", "--depth-sweep", "40,x"],
        ["memory", "--model-arg", "no-equals-sign"],
        ["memory", "--allocator", "jemalloc"],
        ["memory", "--amp", "fp8"],
        [],
    ],
)
def test_bad_arguments_exit_with_usage(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        _parse(*argv)


def _fake_run(configs: list[BenchConfig], **_: Any) -> list[dict[str, Any]]:
    results = []
    for index, config in enumerate(configs):
        memory = 100.0 if config.mode == "naive" else 40.0
        results.append(
            {
                "status": "ok",
                "pid": 1000 + index,
                "config": asdict(config),
                "peak_growth_mib": memory * (config.depth or 1),
                "median_step_s": 1.0,
                "min_step_s": 0.9,
                "torch_version": "test",
                "torch_threads": 1,
            }
        )
    return results


def test_memory_command_writes_table_json_and_png(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "run_configs", _fake_run)
    monkeypatch.setattr(cli, "torchvision_status", lambda: (False, "ModuleNotFoundError"))
    argv = ["memory", "--preset", "targets", "--depth-sweep", "40,100", "--output", str(tmp_path)]
    argv += ["--allocator", "fixed"]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert "torchvision is not importable" in err and "skipped" in err
    assert "| densenet121 | naive |" in out
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["argv"] == argv
    assert payload["environment"]["allocator_env"]["MALLOC_ARENA_MAX"] == "2"
    assert payload["torchvision"] == {
        "available": False,
        "used": False,
        "detail": "ModuleNotFoundError",
    }
    (sweep,) = payload["fits"].values()  # the one depth sweep
    assert sweep["efficient"]["memory"]["exponent"] == pytest.approx(1.0)
    assert {r["config"]["mode"] for r in payload["results"]} == {
        "naive",
        "checkpoint",
        "efficient",
    }
    assert (tmp_path / "results.md").read_text() == out.rstrip("\n") + "\n"
    assert (tmp_path / "memory_vs_depth.png").exists()


def test_torchvision_rows_are_planned_when_it_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    planned: list[BenchConfig] = []

    def record(configs: list[BenchConfig], **kwargs: Any) -> list[dict[str, Any]]:
        planned.extend(configs)
        return _fake_run(configs, **kwargs)

    monkeypatch.setattr(cli, "run_configs", record)
    monkeypatch.setattr(cli, "torchvision_status", lambda: (True, "torchvision 0.0"))
    assert cli.main(["memory", "--models", "densenet121", "--modes", "naive"]) == 0
    assert [c.mode for c in planned] == ["naive", "tv-naive", "tv-checkpoint"]


def test_all_failed_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(configs: list[BenchConfig], **_: Any) -> list[dict[str, Any]]:
        return [{"status": "failed", "error": "boom", "config": asdict(c)} for c in configs]

    monkeypatch.setattr(cli, "run_configs", fail)
    assert cli.main(["memory", "--depth-sweep", "10", "--modes", "naive"]) == 1


def test_unknown_model_is_refused_before_running() -> None:
    with pytest.raises(SystemExit, match="unknown model"):
        cli.main(["memory", "--models", "no_such_net"])


@pytest.mark.skipif(
    "densenet_bc" not in concatnets.list_models(), reason="densenet_bc not registered yet"
)
def test_real_tiny_sweep_end_to_end(tmp_path: Path) -> None:
    argv = ["memory", "--depth-sweep", "10,16", "--growth-rate", "4", "--batch", "2"]
    argv += ["--image-size", "8", "--steps", "1", "--warmup", "0", "--threads", "1"]
    argv += ["--modes", "efficient", "--output", str(tmp_path), "--strict"]
    assert cli.main(argv) == 0
    payload = json.loads((tmp_path / "results.json").read_text())
    assert [r["status"] for r in payload["results"]] == ["ok", "ok"]
    assert len({r["pid"] for r in payload["results"]}) == 2
    assert payload["fits"]["densenet_bc-k4, batch 2, 8x8"]["efficient"]["memory"] is not None
    assert (tmp_path / "memory_vs_depth.png").exists()


def test_each_allocator_environment_gets_its_own_resident_column(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    seen_env: list[dict[str, str]] = []

    def run(configs: list[BenchConfig], **kwargs: Any) -> list[dict[str, Any]]:
        seen_env.append(dict(kwargs["env"]))
        glibc = kwargs["env"].get("CONCATNETS_MALLOC") == "system"
        results = _fake_run(configs)
        for result in results:
            naive = result["config"]["mode"] == "naive"
            result["memory_metric"] = "cpu_rss"
            result["cpu_rss_peak_growth_mib"] = (300.0 if glibc else 250.0) * (
                0.4 if not naive else 1
            )
            result["live_peak_mib"] = 50.0 if naive else 10.0
            result["median_cpu_step_s"] = 2.0 if glibc else 3.0
        return results

    monkeypatch.setattr(cli, "run_configs", run)
    argv = ["memory", "--models", "densenet_bc_100", "--modes", "naive,efficient"]
    monkeypatch.setattr(cli, "write_json", lambda path, payload: saved.append(payload))
    saved: list[dict[str, Any]] = []
    assert cli.main([*argv, "--allocator", "user,glibc", "--output", str(tmp_path)]) == 0
    result = saved[0]["results"][0]
    assert result["median_cpu_step_s_by_allocator"] == {"user": 3.0, "glibc": 2.0}
    assert [env.get("CONCATNETS_MALLOC") for env in seen_env] == [None, "system"]
    out = capsys.readouterr().out
    assert "resident MiB, user env" in out and "resident MiB, glibc defaults" in out
    assert "live tensors MiB" in out
    efficient = next(line for line in out.splitlines() if "| efficient |" in line)
    assert "| 100.0 | 0.40x | 120.0 | 0.40x | 10.0 | 0.20x |" in efficient


def test_fp16_on_cpu_and_cuda_without_a_gpu_are_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    with pytest.raises(SystemExit, match="fp16 needs --device cuda"):
        cli.main(["memory", "--models", "densenet_bc_100", "--amp", "fp16"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA GPU is visible"):
        cli.main(["memory", "--models", "densenet_bc_100", "--device", "cuda"])
    with pytest.raises(SystemExit, match="use cpu, cuda or cuda:N"):
        cli.main(["memory", "--models", "densenet_bc_100", "--device", "gpu"])


def test_amp_reaches_every_planned_row_and_its_label(monkeypatch: pytest.MonkeyPatch) -> None:
    planned: list[BenchConfig] = []

    def record(configs: list[BenchConfig], **kwargs: Any) -> list[dict[str, Any]]:
        planned.extend(configs)
        return _fake_run(configs, **kwargs)

    monkeypatch.setattr(cli, "run_configs", record)
    argv = ["memory", "--models", "densenet_bc_100", "--modes", "naive,efficient", "--amp", "bf16"]
    assert cli.main(argv) == 0
    assert [(c.amp, c.label) for c in planned] == [("bf16", "densenet_bc_100 bf16")] * 2


@pytest.mark.parametrize("benchmark", ["memory", "time"])
def test_help_is_plain_text(benchmark: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parse(benchmark, "--help")
    text = capsys.readouterr().out
    assert "``" not in text and ":mod:" not in text
    assert "examples:" in text


def test_bench_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parse("--help")
    text = capsys.readouterr().out
    assert "examples:" in text and "concatnets bench time --model" in text


def test_bench_time_options_have_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parse("time", "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "--batch BATCH batch size" in text
    assert "--image-size IMAGE_SIZE side of the square" in text
    assert "--modes MODES comma-separated modes" in text
