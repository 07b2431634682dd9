"""``concatnets bench memory``: peak training memory and step time, mode by mode.

Each (model, mode, batch, image size) runs in a fresh child process that does what a
user's script does: ``import concatnets``, build the model, train a few steps, in the
environment as the user has it. Every row reports the resident-set peak growth of a
training step (on CUDA: max_memory_allocated and max_memory_reserved) and the peak of
live tensor bytes, which no allocator setting changes; ``--allocator user,glibc`` adds
the resident figure without concatnets's glibc setting, ``fixed`` the one under the
MALLOC_* settings earlier benchmarks used. The report compares every mode with the
naive reference measured in the same run.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from concatnets.bench.config import (
    MODE_VALUES,
    BenchConfig,
    add_device_options,
    add_model_options,
    check_device,
    plain_text,
)
from concatnets.bench.environment import describe_environment, torchvision_status
from concatnets.bench.interleaved import add_time_parser
from concatnets.bench.presets import (
    DEFAULT_SWEEP_DEPTHS,
    PRESETS,
    PlanSettings,
    Row,
    build_plan,
    family_modes,
    model_rows,
    sweep_rows,
)
from concatnets.bench.report import (
    add_ratios,
    fit_sweeps,
    markdown_report,
    plot_sweep,
    write_json,
)
from concatnets.bench.runner import ALLOCATOR_SETTINGS, child_environment, run_configs

__all__ = ["add_memory_parser", "add_parser", "build_parser", "main", "run_memory"]

_MODEL_ROW_BATCH = 8
_MODEL_ROW_IMAGE_SIZE = 32
_SWEEP_BATCH = 64
_SWEEP_IMAGE_SIZE = 32
_TORCHVISION_MODEL = "densenet121"
_EXAMPLES = """examples:
  concatnets bench memory --preset quick
  concatnets bench memory --preset all --output bench-results/
  concatnets bench memory --depth-sweep 40,100,160,250 --modes naive,efficient
  concatnets bench memory --models densenet121 --batch 8 --image-size 224 --device cuda
  concatnets bench memory --models unet --batch 4 --image-size 256 \\
    --model-arg normalization=instance
  concatnets bench memory --preset targets --threads 1 --allocator user,glibc
  concatnets bench memory --models densenet_bc_100 --batch 64 --amp bf16"""
_BENCH_EXAMPLES = """examples:
  concatnets bench memory --preset quick
  concatnets bench memory --preset targets --threads 1 --allocator user,glibc
  concatnets bench time --model densenet_bc_100 --batch 64 --image-size 32 --threads 1
  concatnets bench time --model unet --batch 4 --image-size 256 --amp bf16

Run "concatnets bench memory --help" or "concatnets bench time --help" for options."""
_BENCH_DESCRIPTION = (
    "Benchmarks of concatnets models: memory (peak resident and live-tensor memory of a "
    "training step, one fresh process per mode) and time (step time of every mode, "
    "interleaved in one process)."
)


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _depths(text: str) -> list[int]:
    try:
        return [int(part) for part in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated depths, got {text!r}") from None


def _allocators(text: str) -> list[str]:
    names = _names(text)
    unknown = [n for n in names if n not in ALLOCATOR_SETTINGS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown allocator environment(s) {unknown}; choose from "
            f"{', '.join(ALLOCATOR_SETTINGS)} (comma-separated)"
        )
    return list(dict.fromkeys(names))


def _modes(text: str) -> list[str]:
    modes = _names(text)
    unknown = [m for m in modes if m not in MODE_VALUES]
    if unknown or not modes:
        raise argparse.ArgumentTypeError(
            f"unknown mode(s) {unknown}; choose from {', '.join(MODE_VALUES)}"
        )
    return modes


def add_memory_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``memory`` benchmark on ``subparsers``."""
    parser = subparsers.add_parser(
        "memory",
        help="peak training memory and step time: naive vs checkpoint vs efficient",
        description=plain_text(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_EXAMPLES,
    )
    what = parser.add_argument_group("what to measure (default: --preset quick)")
    what.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="named plan: targets (project targets), sweep (depth 40-250 + 1000-layer "
        "efficient), all (both), quick (small and fast)",
    )
    what.add_argument(
        "--models",
        type=_names,
        default="",
        help="comma-separated registry names or LIBRARY:NAME third-party models "
        "(torchvision:densenet121, smp:Unet, ...), each at --batch and --image-size",
    )
    what.add_argument(
        "--depth-sweep",
        type=_depths,
        metavar="L1,L2,...",
        help=f"DenseNet-BC depths (6n+4) to sweep, e.g. {','.join(map(str, DEFAULT_SWEEP_DEPTHS))}",
    )
    what.add_argument(
        "--growth-rate", type=int, default=12, help="growth rate k of the sweep (default 12)"
    )
    what.add_argument(
        "--modes",
        type=_modes,
        default=",".join(MODE_VALUES),
        help=f"comma-separated, from {','.join(MODE_VALUES)} (default: all); a mode a "
        "model lacks is reported as unsupported",
    )
    how = parser.add_argument_group("how (unset: each row's own value)")
    how.add_argument(
        "--batch",
        type=int,
        help=f"batch size for every row (default: presets' own; {_MODEL_ROW_BATCH} for "
        f"--models, {_SWEEP_BATCH} for --depth-sweep)",
    )
    how.add_argument(
        "--image-size",
        type=int,
        help=f"input side for every row (default: presets' own; {_MODEL_ROW_IMAGE_SIZE} otherwise)",
    )
    how.add_argument("--steps", type=int, help="timed steps per configuration (default 3)")
    how.add_argument("--warmup", type=int, help="warm-up steps per configuration (default 1)")
    add_device_options(how)
    how.add_argument(
        "--threads", type=int, help="torch.set_num_threads in every child (default: torch's)"
    )
    add_model_options(how)
    how.add_argument(
        "--allocator",
        type=_allocators,
        default="user",
        metavar="ENV[,ENV...]",
        help="C-allocator environments of the children, one resident column each (the "
        "first also gives the time and live figures): user (default: the environment "
        "as you have it; import concatnets leaves glibc alone unless CONCATNETS_MALLOC "
        "says otherwise), glibc (CONCATNETS_MALLOC=system: glibc's own dynamic "
        "threshold, whatever your environment says), pool (CONCATNETS_MALLOC=pool: the "
        "engine's buffer pool), trim (CONCATNETS_MALLOC=trim: the engine gives piled-up "
        "free heap pages back), pinned (CONCATNETS_MALLOC=pinned: the mmap threshold "
        "pinned at 128 KiB), fixed (the MALLOC_* settings of earlier benchmarks)",
    )
    how.add_argument(
        "--timeout", type=float, help="seconds before a child is killed (default: none)"
    )
    how.add_argument(
        "--no-torchvision",
        action="store_true",
        help="skip torchvision's densenet121 rows even if torchvision imports",
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--output",
        type=Path,
        help="directory for results.json, results.md and memory_vs_depth.png",
    )
    out.add_argument("--strict", action="store_true", help="exit 1 if any configuration failed")
    parser.set_defaults(func=run_memory)
    return parser


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``bench`` (with its ``memory`` subcommand) on the main CLI."""
    bench = subparsers.add_parser(
        "bench",
        help="benchmarks (memory, time)",
        description=_BENCH_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_BENCH_EXAMPLES,
    )
    benchmarks = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    add_memory_parser(benchmarks)
    add_time_parser(benchmarks)
    return bench


def build_parser() -> argparse.ArgumentParser:
    """Stand-alone parser of ``python -m concatnets.bench``."""
    parser = argparse.ArgumentParser(
        prog="python -m concatnets.bench",
        description=_BENCH_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_BENCH_EXAMPLES,
    )
    benchmarks = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    add_memory_parser(benchmarks)
    add_time_parser(benchmarks)
    return parser


def _rows(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    if args.preset:
        rows += PRESETS[args.preset]
    if args.models:
        rows += model_rows(
            args.models,
            batch=args.batch or _MODEL_ROW_BATCH,
            image_size=args.image_size or _MODEL_ROW_IMAGE_SIZE,
        )
    if args.depth_sweep:
        rows += sweep_rows(
            args.depth_sweep,
            growth_rate=args.growth_rate,
            batch=args.batch or _SWEEP_BATCH,
            image_size=args.image_size or _SWEEP_IMAGE_SIZE,
        )
    if not rows:
        print("nothing chosen: running --preset quick", file=sys.stderr)
        rows = PRESETS["quick"]
    rows, notes = family_modes(rows, args.modes)
    for note in notes:
        print(note, file=sys.stderr)
    return rows


def _check_models(names: Sequence[str]) -> None:
    from concatnets.models import get_model_spec
    from concatnets.models.external import LibraryMissingError

    for name in names:
        try:
            get_model_spec(name)
        except (KeyError, LibraryMissingError) as error:
            raise SystemExit(f"concatnets bench memory: {error.args[0]}") from None


def _progress(index: int, total: int, config: BenchConfig, result: dict[str, Any] | None) -> None:
    name = (
        f"[{index}/{total}] {config.label} {config.mode} batch {config.batch} "
        f"{config.image_size}x{config.image_size}"
    )
    if result is None:
        print(f"{name} ...", file=sys.stderr, flush=True)
    elif result["status"] == "ok":
        print(
            f"{name}: {result['peak_growth_mib']:.1f} MiB peak, "
            f"{result['median_step_s']:.3f} s/step (pid {result['pid']})",
            file=sys.stderr,
            flush=True,
        )
    else:
        error = " ".join(str(result.get("error", "")).split())[-300:]
        print(f"{name}: {result['status']}: {error}", file=sys.stderr, flush=True)


def _merge_allocators(primary: str, runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The primary run's results, each with every run's resident peak and CPU step time."""
    merged = []
    for index, result in enumerate(runs[primary]):
        resident, cpu_step = {}, {}
        for name, results in runs.items():
            other = results[index]
            if other.get("status") == "ok" and other.get("memory_metric") == "cpu_rss":
                resident[name] = other["cpu_rss_peak_growth_mib"]
            if other.get("status") == "ok" and "median_cpu_step_s" in other:
                cpu_step[name] = other["median_cpu_step_s"]
        merged.append(
            {
                **result,
                "allocator": primary,
                "resident_by_allocator": resident,
                # The step-time cost of an allocator setting, in process CPU seconds.
                "median_cpu_step_s_by_allocator": cpu_step,
            }
        )
    return merged


def run_memory(args: argparse.Namespace) -> int:
    """Run the memory benchmark described by parsed ``args``; return the exit status."""
    _check_models(args.models)
    check_device(args.device, args.amp, "concatnets bench memory")
    rows = _rows(args)
    has_torchvision_model = any(row.model == _TORCHVISION_MODEL for row in rows)
    tv_available, tv_detail = torchvision_status()
    use_torchvision = tv_available and not args.no_torchvision and has_torchvision_model
    if has_torchvision_model and not tv_available and not args.no_torchvision:
        print(
            f"torchvision is not importable ({tv_detail}); its rows "
            "(tv-naive, tv-checkpoint) are skipped",
            file=sys.stderr,
        )
    settings = PlanSettings(
        modes=tuple(args.modes),
        device=args.device,
        threads=args.threads,
        steps=args.steps,
        warmup=args.warmup,
        batch=args.batch,
        image_size=args.image_size,
        channels_last=args.channels_last,
        model_kwargs=dict(args.model_args),
        amp=args.amp,
    )
    plan = build_plan(rows, settings, torchvision=use_torchvision)
    allocators = list(args.allocator)
    runs = {}
    for name in allocators:
        if len(allocators) > 1:
            print(f"allocator environment {name!r}:", file=sys.stderr, flush=True)
        runs[name] = run_configs(
            plan, env=child_environment(name), timeout=args.timeout, progress=_progress
        )
    results = add_ratios(_merge_allocators(allocators[0], runs))
    env = child_environment(allocators[0])
    fits = fit_sweeps(results)
    payload = {
        "command": shlex.join(sys.orig_argv),
        "argv": list(args.argv) if getattr(args, "argv", None) else sys.argv[1:],
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {**asdict(settings), "allocator": args.allocator, "timeout": args.timeout},
        "environment": describe_environment(results, env, args.device),
        "torchvision": {
            "available": tv_available,
            "used": use_torchvision,
            "detail": tv_detail,
        },
        "results": results,
        "fits": fits,
    }
    report = markdown_report(payload)
    print(report)
    if args.output is not None:
        args.output.mkdir(parents=True, exist_ok=True)
        plotted = plot_sweep(results, fits, args.output / "memory_vs_depth.png")
        payload["plot"] = "memory_vs_depth.png" if plotted else None
        write_json(args.output / "results.json", payload)
        (args.output / "results.md").write_text(report)
        print(
            f"wrote {args.output}/results.json, results.md"
            + (", memory_vs_depth.png" if plotted else ""),
            file=sys.stderr,
        )
    measured = sum(r["status"] == "ok" for r in results)
    failed = sum(r["status"] in ("failed", "timeout") for r in results)
    if measured == 0 or (args.strict and failed):
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m concatnets.bench``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    return int(args.func(args))
