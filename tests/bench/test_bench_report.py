"""Ratios to naive, sweep fits, and the Markdown, JSON and PNG reports."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from concatnets.bench import BenchConfig
from concatnets.bench.report import (
    _fit_table,
    add_ratios,
    fit_sweeps,
    markdown_report,
    markdown_table,
    plot_sweep,
    write_json,
)


def _result(config: BenchConfig, memory: float, time: float, status: str = "ok") -> dict:
    if status != "ok":
        return {"status": status, "error": "child killed by SIGKILL", "config": asdict(config)}
    return {
        "status": "ok",
        "config": asdict(config),
        "peak_growth_mib": memory,
        "median_step_s": time,
        "min_step_s": time * 0.9,
    }


def _sweep(mode: str, depth: int, group: str = "sweep") -> BenchConfig:
    return BenchConfig(
        model="densenet_bc",
        mode=mode,
        batch=64,
        image_size=32,
        group=group,
        label=f"densenet_bc-{depth}-k12",
        depth=depth,
        model_kwargs={"depth": depth, "growth_rate": 12, "num_classes": 10},
    )


@pytest.fixture
def results() -> list[dict[str, Any]]:
    rows = []
    for depth in (40, 100, 160, 250):
        rows.append(_result(_sweep("naive", depth), 0.01 * depth**2, 0.001 * depth))
        rows.append(_result(_sweep("efficient", depth), 2.0 * depth, 0.0012 * depth))
    rows.append(_result(_sweep("efficient", 1000, "deep"), 2000.0, 1.2))
    dn121 = {"model": "densenet121", "batch": 8, "image_size": 224, "group": "targets"}
    rows.append(_result(BenchConfig(mode="naive", **dn121), 1000.0, 2.0))
    rows.append(_result(BenchConfig(mode="checkpoint", **dn121), 600.0, 2.4))
    rows.append(
        _result(BenchConfig(mode="tv-checkpoint", source="torchvision", **dn121), 590.0, 2.3)
    )
    unet = {"model": "unet", "batch": 4, "image_size": 256, "group": "targets"}
    rows.append(_result(BenchConfig(mode="naive", **unet), 0, 0, status="failed"))
    rows.append(_result(BenchConfig(mode="efficient", **unet), 300.0, 3.0))
    return add_ratios(rows)


def test_ratios_compare_with_the_naive_row_of_the_same_configuration(
    results: list[dict[str, Any]],
) -> None:
    by = {(r["config"]["label"], r["config"]["mode"]): r for r in results}
    assert by[("densenet121", "naive")]["memory_ratio"] == pytest.approx(1.0)
    assert by[("densenet121", "checkpoint")]["memory_ratio"] == pytest.approx(0.6)
    assert by[("densenet121", "checkpoint")]["time_ratio"] == pytest.approx(1.2)
    assert by[("densenet121", "tv-checkpoint")]["memory_ratio"] == pytest.approx(0.59)
    assert by[("densenet_bc-100-k12", "efficient")]["memory_ratio"] == pytest.approx(2.0)
    # No naive row at depth 1000, and the U-Net's naive run failed: no ratio.
    assert by[("densenet_bc-1000-k12", "efficient")]["memory_ratio"] is None
    assert by[("unet", "efficient")]["memory_ratio"] is None


def test_fits_cover_the_sweep_group_only(results: list[dict[str, Any]]) -> None:
    fits = fit_sweeps(results)
    assert set(fits) == {"naive", "efficient"}
    assert fits["naive"]["memory"]["exponent"] == pytest.approx(2.0)
    assert fits["efficient"]["memory"]["exponent"] == pytest.approx(1.0)
    assert fits["efficient"]["time"]["exponent"] == pytest.approx(1.0)
    assert fits["efficient"]["depths"] == [40, 100, 160, 250]
    assert fits["efficient"]["live"] is None  # the rows carry no live-tensor peak


def test_fits_fit_the_live_tensor_peak_too(results: list[dict[str, Any]], tmp_path: Path) -> None:
    with_live = [
        {**r, "live_peak_mib": 3.0 * r["config"]["depth"] ** 1.5}
        if r["status"] == "ok" and r["config"]["group"] == "sweep"
        else r
        for r in results
    ]
    fits = fit_sweeps(with_live)
    assert fits["naive"]["live"]["exponent"] == pytest.approx(1.5)
    assert fits["naive"]["memory"]["exponent"] == pytest.approx(2.0)
    assert "| live-tensor exponent |" in _fit_table(fits).splitlines()[0]
    plot = tmp_path / "memory_vs_depth.png"
    assert plot_sweep(with_live, fits, plot) and plot.stat().st_size > 0


def test_table_has_one_line_per_configuration(results: list[dict[str, Any]]) -> None:
    table = markdown_table(results).splitlines()
    assert len(table) == 2 + len(results)
    assert "| peak MiB | x naive |" in table[0]
    checkpoint = next(line for line in table if "| densenet121 | checkpoint |" in line)
    assert "| 600.0 | 0.60x | 2.400 | 1.20x |" in checkpoint
    assert any("| unet | naive |" in line and "failed" in line for line in table)


def test_table_shows_the_measured_input_size_of_3d_models(results: list[dict[str, Any]]) -> None:
    volume = {**results[0], "input_shape": [2, 1, 64, 64, 64]}
    assert "| 64x64x64 |" in markdown_table([volume])
    assert "| 32x32 |" in markdown_table([{**results[0], "input_shape": [8, 3, 32, 32]}])


def _payload(results: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "command": "concatnets bench memory --preset all",
        "environment": {
            "cpu_model": "Test CPU",
            "cpu_count": 2,
            "device": "cpu",
            "device_name": "x86_64",
            "torch_version": "2.13.0",
            "torch_threads": 2,
            "python": "3.11",
            "libc": "glibc 2.36",
            "allocator_env": {"MALLOC_ARENA_MAX": "2"},
            "memory_method": "ru_maxrss",
            "optimizer": "SGD",
        },
        "torchvision": {"available": False, "used": False, "detail": "ModuleNotFoundError"},
        "results": results,
        "fits": fit_sweeps(results),
    }


def test_markdown_report_states_command_environment_fits_and_failures(
    results: list[dict[str, Any]],
) -> None:
    report = markdown_report(_payload(results))
    assert "`concatnets bench memory --preset all`" in report
    assert "MALLOC_ARENA_MAX=2" in report
    assert "memory exponent" in report
    assert "unet naive: failed: child killed by SIGKILL" in report


def test_json_and_png_are_written(results: list[dict[str, Any]], tmp_path: Path) -> None:
    payload = _payload(results)
    write_json(tmp_path / "results.json", payload)
    assert json.loads((tmp_path / "results.json").read_text())["fits"] == payload["fits"]
    assert plot_sweep(results, payload["fits"], tmp_path / "memory_vs_depth.png")
    assert (tmp_path / "memory_vs_depth.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_png_without_sweep_rows(results: list[dict[str, Any]], tmp_path: Path) -> None:
    targets = [r for r in results if r["config"]["group"] == "targets"]
    assert not plot_sweep(targets, {}, tmp_path / "memory_vs_depth.png")
    assert not (tmp_path / "memory_vs_depth.png").exists()


def test_live_and_per_allocator_figures_get_ratios_and_columns() -> None:
    config = {"model": "unet", "batch": 4, "image_size": 256, "group": "targets"}
    rows = []
    for mode, user, glibc, live in (
        ("naive", 1500.0, 1600.0, 1000.0),
        ("efficient", 700.0, 860.0, 450.0),
    ):
        row = _result(BenchConfig(mode=mode, **config), user, 1.0)
        row.update(
            memory_metric="cpu_rss",
            live_peak_mib=live,
            resident_by_allocator={"user": user, "glibc": glibc},
        )
        rows.append(row)
    naive, efficient = add_ratios(rows)
    assert efficient["live_ratio"] == pytest.approx(0.45)
    assert efficient["resident_ratios"] == {
        "user": pytest.approx(700 / 1500),
        "glibc": pytest.approx(860 / 1600),
    }
    assert naive["cuda_reserved_ratio"] is None
    table = markdown_table([naive, efficient])
    assert "resident MiB, user env" in table and "resident MiB, glibc defaults" in table
    assert "| 700.0 | 0.47x | 860.0 | 0.54x | 450.0 | 0.45x |" in table


def test_cuda_rows_show_allocated_and_reserved() -> None:
    config = {"model": "unet", "batch": 4, "image_size": 256, "device": "cuda"}
    rows = []
    for mode, allocated, reserved in (("naive", 1000.0, 1200.0), ("efficient", 400.0, 600.0)):
        row = _result(BenchConfig(mode=mode, **config), allocated, 1.0)
        row.update(memory_metric="cuda", cuda_reserved_peak_growth_mib=reserved, live_peak_mib=1.0)
        rows.append(row)
    table = markdown_table(add_ratios(rows))
    assert "CUDA allocated MiB" in table and "CUDA reserved MiB" in table
    assert "| 400.0 | 0.40x | 600.0 | 0.50x | 1.0 | 1.00x |" in table
