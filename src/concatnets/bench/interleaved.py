"""``concatnets bench time``: step time of every mode, measured interleaved in one process.

On a shared machine the speed drifts by tens of percent over minutes, so modes timed one
after another (as ``bench memory`` must, one fresh process each) can differ by drift
alone. Here every mode's model lives in one process and the modes take turns, step by
step, in rotating order: drift then hits all modes alike, and the median ratio to the
naive mode is the figure. Memory is not measured here (see ``bench memory``).
On CUDA the device is synchronized before and after every timed step; ``--amp`` runs
every mode's forward and loss under ``torch.autocast``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from concatnets.bench.config import (
    MODE_VALUES,
    BenchConfig,
    add_device_options,
    add_model_options,
    check_device,
    plain_text,
)
from concatnets.bench.environment import (
    cpu_isa,
    cpu_model,
    engine_layouts,
    engine_pointwise,
    isa_line,
    layouts_line,
    pointwise_line,
)
from concatnets.bench.memory import (
    UnsupportedModeError,
    _make_batch,
    _train_step,
    autocast_for,
    prepare_model,
)

__all__ = ["add_time_parser", "measure_interleaved", "run_time"]


def measure_interleaved(
    config: BenchConfig, modes: list[str], rounds: int, warmup: int
) -> dict[str, Any]:
    """Median wall and CPU seconds per training step of each mode of ``config.model``.

    Args:
        config: The model, batch, image size, device, threads and amp (its ``mode`` is
            ignored).
        modes: Modes to compare; ``naive`` is the reference and is always included.
        rounds: Timed rounds; each round runs one step of every mode.
        warmup: Untimed rounds first.
    """
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    models = {}
    unsupported = []
    for mode in ["naive", *[m for m in modes if m != "naive"]]:
        torch.manual_seed(0)
        try:
            models[mode] = prepare_model(replace(config, mode=mode), device)
        except UnsupportedModeError:
            unsupported.append(mode)
    modes = list(models)
    reference = models["naive"].state_dict()
    for model in models.values():
        model.load_state_dict(reference)
    inputs, target, _ = _make_batch(models["naive"], config, device)
    parameters = {m: [p for p in models[m].parameters() if p.requires_grad] for m in modes}
    wall: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    for round_index in range(warmup + rounds):
        shift = round_index % len(modes)
        for mode in modes[shift:] + modes[:shift]:  # rotate so no mode always goes first
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            _train_step(
                models[mode], inputs, target, parameters[mode], autocast_for(config, device)
            )
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if round_index >= warmup:
                wall[mode].append(time.perf_counter() - start)
                cpu[mode].append(time.process_time() - cpu_start)
    rows = {}
    for mode in modes:
        rows[mode] = {
            "median_step_s": statistics.median(wall[mode]),
            "median_cpu_step_s": statistics.median(cpu[mode]),
            "step_times_s": wall[mode],
            "cpu_step_times_s": cpu[mode],
            # Ratio of medians, and the median of per-round ratios (robust to drift).
            "time_ratio": statistics.median(wall[mode]) / statistics.median(wall["naive"]),
            "round_ratio_median": statistics.median(
                a / b for a, b in zip(wall[mode], wall["naive"], strict=True)
            ),
        }
    return {
        "model": config.model,
        "batch": config.batch,
        "image_size": config.image_size,
        "channels_last": config.channels_last,
        "model_kwargs": config.model_kwargs,
        "device": str(device),
        "amp": config.amp,
        "threads": torch.get_num_threads(),
        "rounds": rounds,
        "warmup": warmup,
        "modes": rows,
        "unsupported": unsupported,
        "cpu_model": cpu_model(),
        "cpu_isa": cpu_isa(),
        "engine_layouts": engine_layouts(),
        "engine_pointwise": engine_pointwise(),
    }


def add_time_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``bench time``."""
    parser = subparsers.add_parser(
        "time",
        help="step time of every mode, interleaved in one process",
        description=plain_text(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  concatnets bench time --model densenet_bc_100 --batch 64 "
        "--image-size 32 --rounds 5 --threads 1\n"
        "  concatnets bench time --model unet --modes naive,efficient --batch 4 "
        "--image-size 256 --amp bf16\n"
        "  concatnets bench time --model densenet121 --batch 32 --image-size 224 "
        "--device cuda --amp fp16",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="registry name, e.g. densenet_bc_100, or LIBRARY:NAME, e.g. torchvision:densenet121",
    )
    parser.add_argument(
        "--modes",
        default="naive,checkpoint,efficient",
        help="comma-separated modes to compare, from "
        f"{','.join(MODE_VALUES)} (default: all); naive is always timed as the reference",
    )
    parser.add_argument(
        "--batch", type=int, default=8, help="batch size of the random batch (default 8)"
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=32,
        help="side of the square (cubic for 3-D models) random input (default 32)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds (default 1)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    add_device_options(parser)
    add_model_options(parser)
    parser.add_argument("--output", type=Path, help="write the result as JSON here")
    parser.set_defaults(func=run_time)
    return parser


def run_time(args: argparse.Namespace) -> int:
    """Run ``bench time`` from parsed ``args``; print a table; return the exit status."""
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODE_VALUES]
    if unknown:
        raise SystemExit(
            f"concatnets bench time: unknown mode(s) {unknown}; use some of "
            f"{', '.join(MODE_VALUES)}"
        )
    check_device(args.device, args.amp, "concatnets bench time")
    config = BenchConfig(
        model=args.model,
        mode="naive",
        batch=args.batch,
        image_size=args.image_size,
        device=args.device,
        threads=args.threads,
        channels_last=args.channels_last,
        model_kwargs=dict(args.model_args),
        amp=args.amp,
    )
    result = measure_interleaved(config, modes, args.rounds, args.warmup)
    print(
        f"{result['model']} batch {result['batch']} {result['image_size']}px, "
        f"{result['threads']} thread(s), {result['rounds']} interleaved rounds, "
        f"{result['device']}, {result['amp'] or 'float32'}"
        + (", channels-last" if result["channels_last"] else "")
        + "".join(f", {k}={v}" for k, v in sorted(result["model_kwargs"].items()))
    )
    print(f"CPU: {result['cpu_model']}; ISA: {isa_line(result['cpu_isa'])}")
    print(f"engine layout: {layouts_line(result['engine_layouts'])}")
    print(f"engine 1x1 convolutions: {pointwise_line(result['engine_pointwise'])}")
    print("| mode | median step s | time x naive | median per-round ratio |")
    print("|---|---:|---:|---:|")
    for mode, row in result["modes"].items():
        print(
            f"| {mode} | {row['median_step_s']:.3f} | {row['time_ratio']:.2f}x "
            f"| {row['round_ratio_median']:.2f}x |"
        )
    for mode in result["unsupported"]:
        print(f"{mode}: not supported by {result['model']}; skipped")
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2))
    return 0
