"""Benchmark reports: ratios to naive, power-law fits, Markdown, JSON and a PNG."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from concatnets.bench.config import BenchConfig, comparison_key
from concatnets.bench.environment import isa_line, layouts_line, pointwise_line
from concatnets.bench.fit import fit_power_law

__all__ = [
    "ALLOCATOR_LABELS",
    "add_ratios",
    "fit_sweeps",
    "markdown_report",
    "markdown_table",
    "plot_sweep",
    "sweep_name",
    "write_json",
]

_REFERENCE_MODE = "naive"
_SWEEP_GROUP = "sweep"
_DEEP_GROUP = "deep"
# ratio key -> the figure it divides by the naive row's.
_RATIO_KEYS = {
    "memory_ratio": "peak_growth_mib",
    "live_ratio": "live_peak_mib",
    "cuda_reserved_ratio": "cuda_reserved_peak_growth_mib",
    "time_ratio": "median_step_s",
    "cpu_time_ratio": "median_cpu_step_s",
}
# What each allocator environment's resident column is called in the table.
ALLOCATOR_LABELS = {
    "user": "resident MiB, user env",
    "glibc": "resident MiB, glibc defaults",
    "pool": "resident MiB, engine buffer pool",
    "pinned": "resident MiB, pinned mmap threshold",
    "fixed": "resident MiB, fixed MALLOC_*",
}


def _config(result: Mapping[str, Any]) -> BenchConfig:
    return BenchConfig(**result["config"])


def _ok(result: Mapping[str, Any]) -> bool:
    return result.get("status") == "ok"


def _quotient(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return value / reference


def add_ratios(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ratios to the naive row of the same comparison key.

    ``memory_ratio`` (the primary peak), ``live_ratio`` (live tensors),
    ``cuda_reserved_ratio``, ``resident_ratios`` (one per allocator environment),
    ``time_ratio`` and ``cpu_time_ratio``. A ratio is ``None`` when that naive row is
    missing or failed, or the figure is absent.
    """
    naive = {
        comparison_key(_config(r)): r
        for r in results
        if _ok(r) and r["config"]["mode"] == _REFERENCE_MODE
    }
    out = []
    for result in results:
        reference = naive.get(comparison_key(_config(result)))
        ratios: dict[str, Any] = dict.fromkeys(_RATIO_KEYS)
        ratios["resident_ratios"] = {}
        if _ok(result) and reference is not None:
            for ratio_key, value_key in _RATIO_KEYS.items():
                ratios[ratio_key] = _quotient(result.get(value_key), reference.get(value_key))
            reference_resident = reference.get("resident_by_allocator", {})
            ratios["resident_ratios"] = {
                name: _quotient(mib, reference_resident.get(name))
                for name, mib in result.get("resident_by_allocator", {}).items()
            }
        out.append({**result, **ratios})
    return out


def sweep_name(config: Mapping[str, Any]) -> str:
    """The depth sweep a row belongs to: its label without the depth, batch and input.

    ``densenet_bc-100-k12`` at batch 64 on 32x32 is in ``densenet_bc-k12, batch 64,
    32x32``; rows of one sweep differ in depth alone, so two models' sweeps (DenseNet-BC
    and FC-DenseNet, or two growth rates) measured in one run stay apart.
    """
    depth = str(config.get("depth"))
    family = "-".join(p for p in str(config["label"]).split("-") if p != depth)
    name = f"{family or config['model']}, batch {config['batch']}, {_input(config)}"
    if config.get("amp"):
        name += f", {config['amp']}"
    if config.get("device", "cpu") != "cpu":
        name += f", {config['device']}"
    return name


def fit_sweeps(results: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per sweep (:func:`sweep_name`) and mode, the power law of peak memory growth and
    step time against depth.

    ``memory`` fits the measured peak (resident growth on CPU, which the allocator
    inflates), ``live`` the live-tensor peak (allocator-independent; ``None`` when a row
    lacks it). Only the ``sweep`` group is fitted, so every mode of a sweep is fitted
    over the same depths.
    """
    grouped: dict[str, dict[str, list[Mapping[str, Any]]]] = {}
    for result in results:
        if _ok(result) and result["config"]["group"] == _SWEEP_GROUP:
            by_mode = grouped.setdefault(sweep_name(result["config"]), {})
            by_mode.setdefault(result["config"]["mode"], []).append(result)
    return {
        sweep: {mode: _fit(rows) for mode, rows in by_mode.items()}
        for sweep, by_mode in grouped.items()
    }


def _fit(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Power laws of one sweep's rows of one mode."""
    rows = sorted(rows, key=lambda r: r["config"]["depth"])
    depths = [r["config"]["depth"] for r in rows]
    memory = fit_power_law(depths, [r["peak_growth_mib"] for r in rows])
    live_values = [r.get("live_peak_mib") for r in rows]
    live = (
        fit_power_law(depths, [float(v) for v in live_values])  # type: ignore[arg-type]
        if all(v is not None for v in live_values)
        else None
    )
    time = fit_power_law(depths, [r["median_step_s"] for r in rows])
    return {
        "depths": depths,
        "memory": asdict(memory) if memory else None,
        "live": asdict(live) if live else None,
        "time": asdict(time) if time else None,
    }


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def _input(config: Mapping[str, Any], input_shape: Sequence[int] | None = None) -> str:
    """The input's spatial size, e.g. ``256x256`` or, for a measured 3-D model, ``64x64x64``."""
    if input_shape:
        return "x".join(str(side) for side in input_shape[2:])
    return f"{config['image_size']}x{config['image_size']}"


def _mib(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def _memory_columns(results: Sequence[Mapping[str, Any]]) -> list[tuple[str, Any]]:
    """(header, row -> (MiB, ratio)) for every memory figure some result has."""
    measured = [r for r in results if _ok(r)]
    columns: list[tuple[str, Any]] = []
    allocators = list(
        dict.fromkeys(a for r in measured for a in r.get("resident_by_allocator", {}))
    )
    if any(r.get("memory_metric") == "cuda" for r in measured):
        columns.append(
            ("CUDA allocated MiB", lambda r: (r["peak_growth_mib"], r.get("memory_ratio")))
        )
        columns.append(
            (
                "CUDA reserved MiB",
                lambda r: (r.get("cuda_reserved_peak_growth_mib"), r.get("cuda_reserved_ratio")),
            )
        )
    elif allocators:
        for name in allocators:
            columns.append(
                (
                    ALLOCATOR_LABELS.get(name, f"resident MiB, {name}"),
                    lambda r, name=name: (
                        r.get("resident_by_allocator", {}).get(name),
                        r.get("resident_ratios", {}).get(name),
                    ),
                )
            )
    else:
        columns.append(("peak MiB", lambda r: (r["peak_growth_mib"], r.get("memory_ratio"))))
    if any("live_peak_mib" in r for r in measured):
        columns.append(
            ("live tensors MiB", lambda r: (r.get("live_peak_mib"), r.get("live_ratio")))
        )
    return columns


def markdown_table(results: Sequence[Mapping[str, Any]]) -> str:
    """One row per configuration: each memory figure, step time, and their ratios to naive."""
    columns = _memory_columns(results)
    memory_head = "".join(f"| {header} | x naive " for header, _ in columns)
    lines = [
        f"| group | model | mode | batch | input {memory_head}"
        "| median step s | time x naive | min step s | cpu time x naive |",
        "|---|---|---|---:|---|" + "---:|---:|" * len(columns) + "---:|---:|---:|---:|",
    ]
    for r in results:
        c = r["config"]
        size = _input(c, r.get("input_shape"))
        head = f"| {c['group']} | {c['label']} | {c['mode']} | {c['batch']} | {size} "
        if _ok(r):
            memory = ""
            for _, figure in columns:
                mib, ratio = figure(r)
                memory += f"| {_mib(mib)} | {_ratio(ratio)} "
            lines.append(
                f"{head}{memory}"
                f"| {r['median_step_s']:.3f} | {_ratio(r.get('time_ratio'))} "
                f"| {r['min_step_s']:.3f} | {_ratio(r.get('cpu_time_ratio'))} |"
            )
        else:
            lines.append(f"{head}| {r['status']} |" + " |" * (2 * len(columns) + 3))
    return "\n".join(lines)


def _problems(results: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = []
    for r in results:
        if not _ok(r):
            c = r["config"]
            error = " ".join(str(r.get("error", "")).split())
            lines.append(f"- {c['label']} {c['mode']}: {r['status']}: {error[-600:]}")
    return lines


def _fit_table(fits: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    lines = [
        "| sweep | mode | memory exponent | memory R² | live-tensor exponent | time exponent "
        "| depths |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for sweep, by_mode in fits.items():
        for mode, fit in by_mode.items():
            memory, time, live = fit["memory"], fit["time"], fit.get("live")
            mem = f"{memory['exponent']:.2f} | {memory['r_squared']:.3f}" if memory else " | "
            liv = f"{live['exponent']:.2f}" if live else ""
            tim = f"{time['exponent']:.2f}" if time else ""
            depths = ", ".join(str(d) for d in fit["depths"])
            lines.append(f"| {sweep} | {mode} | {mem} | {liv} | {tim} | {depths} |")
    return "\n".join(lines)


def _allocator_names(settings: Mapping[str, Any]) -> list[str]:
    names = settings.get("allocator") or ["user"]
    return [names] if isinstance(names, str) else list(names)


def _precision(amp: str | None) -> str:
    return "float32" if not amp else f"torch.autocast, {amp} (forward and loss)"


def markdown_report(payload: Mapping[str, Any]) -> str:
    """The whole ``results.md``: command, environment, table, fits and failures."""
    env = payload["environment"]
    allocator = ", ".join(f"{k}={v}" for k, v in env["allocator_env"].items()) or "no MALLOC_*"
    measured = next((r for r in payload["results"] if _ok(r)), {})
    settings = payload.get("settings", {})
    parts = [
        "# concatnets bench memory",
        "",
        f"Command: `{payload['command']}`",
        "",
        f"- CPU: {env['cpu_model']} ({env['cpu_count']} logical cores); "
        f"device: {env['device']} ({env.get('device_name')})",
        f"- CPU ISA: {isa_line(env.get('cpu_isa', {}))}",
        f"- engine layout: {layouts_line(env.get('engine_layouts', []))}",
        f"- engine 1x1 convolutions: {pointwise_line(env.get('engine_pointwise', []))}",
        f"- torch {env['torch_version']}, {env['torch_threads']} threads; "
        f"python {env['python']}; {env['libc']}",
        f"- allocator ({', '.join(_allocator_names(settings))}): {allocator}; "
        f"import concatnets: {measured.get('allocator_setting', 'unknown')}",
        f"- precision: {_precision(settings.get('amp'))}",
        f"- memory: {env.get('memory_method')}; peak over warm-up and timed steps; "
        f"baseline taken after model, data and a priming {env.get('priming')}",
        f"- step: forward, loss, backward, {env.get('optimizer')}",
        f"- live tensors: {measured.get('live_method', 'not measured')}",
        f"- torchvision: {payload['torchvision']['detail']}"
        + ("" if payload["torchvision"]["used"] else " (no torchvision rows)"),
        "",
        markdown_table(payload["results"]),
    ]
    if payload["fits"]:
        parts += ["", "Power-law fits over each depth sweep (y = c * depth^k):", ""]
        parts.append(_fit_table(payload["fits"]))
    problems = _problems(payload["results"])
    if problems:
        parts += ["", "Not measured:", "", *problems]
    return "\n".join(parts) + "\n"


def write_json(path: str | Path, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` as indented JSON."""
    Path(path).write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")


def _legend(mode: str, fit: Mapping[str, Any] | None) -> str:
    return f"{mode} (fit: depth^{fit['exponent']:.2f})" if fit else mode


def _tick_label(value: float, _: int) -> str:
    return f"{value:g}"


def _minor_tick_label(value: float, _: int) -> str:
    # Label 2x and 5x each power of ten: readable over one decade or several.
    mantissa = round(value / 10 ** math.floor(math.log10(value))) if value > 0 else 0
    return f"{value:g}" if mantissa in (2, 5) else ""


def plot_sweep(
    results: Sequence[Mapping[str, Any]],
    fits: Mapping[str, Mapping[str, Any]],
    path: str | Path,
) -> bool:
    """Two log-log panels, peak memory and step time against depth, one line per mode of
    each sweep (:func:`sweep_name`; named in the legend when there are several).

    The legend carries each line's fitted exponent; ``deep`` rows are drawn as stars.
    Returns ``False`` (and writes nothing) when there is no successful sweep row.
    """
    sweep = [r for r in results if _ok(r) and r["config"]["group"] in (_SWEEP_GROUP, _DEEP_GROUP)]
    if not sweep:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    figure, (memory_axis, time_axis) = plt.subplots(1, 2, figsize=(11, 4.5))
    lines = list(dict.fromkeys((sweep_name(r["config"]), r["config"]["mode"]) for r in sweep))
    several = len({name for name, _ in lines}) > 1
    for index, (sweep_id, mode) in enumerate(lines):
        color = f"C{index}"
        line = f"{sweep_id}: {mode}" if several else mode
        for group, marker, style in ((_SWEEP_GROUP, "o", "-"), (_DEEP_GROUP, "*", "none")):
            rows = sorted(
                (
                    r
                    for r in sweep
                    if (sweep_name(r["config"]), r["config"]["mode"]) == (sweep_id, mode)
                    and r["config"]["group"] == group
                ),
                key=lambda r: r["config"]["depth"],
            )
            if not rows:
                continue
            depths = [r["config"]["depth"] for r in rows]
            fit = fits.get(sweep_id, {}).get(mode, {}) if group == _SWEEP_GROUP else {}
            has_live = all(r.get("live_peak_mib") is not None for r in rows)
            series = [(memory_axis, "peak_growth_mib", "memory", "resident" if has_live else "")]
            if has_live:
                series.append((memory_axis, "live_peak_mib", "live", "live tensors"))
            series.append((time_axis, "median_step_s", "time", ""))
            for axis, key, kind, what in series:
                name = f"{line}, {what}" if what else line
                label = (
                    _legend(name, fit.get(kind)) if group == _SWEEP_GROUP else f"{name}, {group}"
                )
                axis.plot(
                    depths,
                    [r[key] for r in rows],
                    marker=marker,
                    linestyle=":" if what == "resident" and style != "none" else style,
                    color=color,
                    markersize=12 if marker == "*" else 6,
                    label=label,
                )
    first = sweep[0]["config"]
    title = (
        f"{first['label'].rsplit('-', 2)[0]}, k={first['model_kwargs'].get('growth_rate')}, "
        f"batch {first['batch']}, {_input(first)}, {first['device']}"
        if not several
        else f"{len({name for name, _ in lines})} depth sweeps, {first['device']}"
    )
    for axis, ylabel in (
        (memory_axis, "peak memory (MiB): live tensors, and resident dotted"),
        (time_axis, "median step time (s)"),
    ):
        axis.set_xscale("log")
        axis.set_yscale("log")
        depths = sorted({r["config"]["depth"] for r in sweep})
        axis.set_xticks(depths, labels=[str(d) for d in depths])
        axis.xaxis.set_minor_formatter(ticker.NullFormatter())
        axis.yaxis.set_major_formatter(ticker.FuncFormatter(_tick_label))
        axis.yaxis.set_minor_formatter(ticker.FuncFormatter(_minor_tick_label))
        axis.set_xlabel("depth (layers)")
        axis.set_ylabel(ylabel)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True
