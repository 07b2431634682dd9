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
    sweep_name,
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


_DENSENET_BC = "densenet_bc-k12, batch 64, 32x32"


def test_fits_cover_the_sweep_group_only(results: list[dict[str, Any]]) -> None:
    fits = fit_sweeps(results)
    assert set(fits) == {_DENSENET_BC}
    by_mode = fits[_DENSENET_BC]
    assert set(by_mode) == {"naive", "efficient"}
    assert by_mode["naive"]["memory"]["exponent"] == pytest.approx(2.0)
    assert by_mode["efficient"]["memory"]["exponent"] == pytest.approx(1.0)
    assert by_mode["efficient"]["time"]["exponent"] == pytest.approx(1.0)
    assert by_mode["efficient"]["depths"] == [40, 100, 160, 250]
    assert by_mode["efficient"]["live"] is None  # the rows carry no live-tensor peak


def test_fits_fit_the_live_tensor_peak_too(results: list[dict[str, Any]], tmp_path: Path) -> None:
    with_live = [
        {**r, "live_peak_mib": 3.0 * r["config"]["depth"] ** 1.5}
        if r["status"] == "ok" and r["config"]["group"] == "sweep"
        else r
        for r in results
    ]
    fits = fit_sweeps(with_live)
    assert fits[_DENSENET_BC]["naive"]["live"]["exponent"] == pytest.approx(1.5)
    assert fits[_DENSENET_BC]["naive"]["memory"]["exponent"] == pytest.approx(2.0)
    assert "| live-tensor exponent |" in _fit_table(fits).splitlines()[0]
    plot = tmp_path / "memory_vs_depth.png"
    assert plot_sweep(with_live, fits, plot) and plot.stat().st_size > 0


def _fc_densenet(mode: str, depth: int) -> BenchConfig:
    layers = (depth - 12) // 11
    return BenchConfig(
        model="fc_densenet67",
        mode=mode,
        batch=2,
        image_size=96,
        group="sweep",
        label=f"fc_densenet-{depth}-k16",
        depth=depth,
        model_kwargs={"down_layers": [layers] * 5, "bottleneck_layers": layers},
    )


def test_two_models_sweeps_are_fitted_and_drawn_apart(
    results: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # FC-DenseNet at depths that overlap DenseNet-BC's, with other exponents: mixed into
    # one fit per mode, neither law would come out.
    fc = [
        _result(_fc_densenet(mode, depth), scale * depth**power, 0.01 * depth**0.5)
        for depth in (34, 100, 166)
        for mode, scale, power in (("naive", 5.0, 1.5), ("efficient", 40.0, 0.5))
    ]
    fits = fit_sweeps(add_ratios(results + fc))
    name = "fc_densenet-k16, batch 2, 96x96"
    assert set(fits) == {_DENSENET_BC, name}
    assert fits[name]["naive"]["memory"]["exponent"] == pytest.approx(1.5)
    assert fits[name]["efficient"]["memory"]["exponent"] == pytest.approx(0.5)
    assert fits[name]["efficient"]["time"]["exponent"] == pytest.approx(0.5)
    assert fits[name]["naive"]["depths"] == [34, 100, 166]
    assert fits[_DENSENET_BC]["naive"]["memory"]["exponent"] == pytest.approx(2.0)
    assert fits[_DENSENET_BC]["efficient"]["depths"] == [40, 100, 160, 250]
    table = _fit_table(fits)
    assert f"| {name} | efficient | 0.50 |" in table
    assert f"| {_DENSENET_BC} | naive | 2.00 |" in table

    import matplotlib.figure

    legends: list[str] = []
    save = matplotlib.figure.Figure.savefig

    def record(figure: Any, *args: Any, **kwargs: Any) -> None:
        legends.extend(t.get_text() for a in figure.axes for t in a.get_legend().get_texts())
        save(figure, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    assert plot_sweep(results + fc, fits, tmp_path / "memory_vs_depth.png")
    assert f"{name}: efficient (fit: depth^0.50)" in legends
    assert f"{_DENSENET_BC}: naive (fit: depth^2.00)" in legends
    assert f"{_DENSENET_BC}: efficient, deep" in legends


def test_sweep_names_drop_the_depth_and_keep_what_else_differs() -> None:
    config = asdict(_sweep("naive", 100))
    assert sweep_name(config) == _DENSENET_BC
    assert sweep_name({**config, "batch": 8}) != sweep_name(config)
    assert sweep_name({**config, "amp": "bf16"}) == f"{_DENSENET_BC}, bf16"
    assert sweep_name({**config, "label": "densenet_bc-100-k24"}).startswith("densenet_bc-k24,")


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
