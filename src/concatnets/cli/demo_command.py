"""``concatnets demo``: the whole job end to end on built-in data.

Trains ``unet_small`` on the synthetic cell images (touching cells, thin borders; no
download), writes validation overlays, prints the validation Dice, then measures the
peak training memory of one step with and without the memory-efficient mode.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from concatnets.cli.common import HelpFormatter, describe, epilog
from concatnets.data.notices import notice
from concatnets.training.config import TrainConfig, model_arg_type
from concatnets.training.runner import run_training

__all__ = ["DEMO_CONFIG", "DEMO_DURATION", "add_parser", "cli_hint", "compare_memory", "run"]

DEMO_DURATION = (
    "32 s wall (34 s of CPU time) on an idle 2-core Intel Xeon, 231 s wall on the same "
    "machine shared with other jobs, plus 51 s for make demo's one-time setup of .venv"
)
"""How long the demo takes, with the conditions it was measured under (README, docs, --help)."""

DEMO_CONFIG = TrainConfig(
    model="unet_small",
    data="builtin:cells",
    num_images=96,
    image_size=64,
    val_fraction=0.25,
    augment="flip,rot90,elastic",
    elastic_sigma=4.0,  # the paper's 10 px suits 572 px tiles; scaled down for 64 px images
    loss="ce_dice",
    optimizer="adam",
    lr=3e-3,
    schedule="cosine",
    epochs=8,
    batch_size=8,
    overlays=4,
)


def compare_memory(
    model: str, model_kwargs: dict[str, Any], batch: int, image_size: int, device: str
) -> list[dict[str, Any]]:
    """Peak memory growth of one training step, naive vs memory-efficient.

    Each mode runs in a fresh process (``concatnets.bench``), because the CPU figure
    is a process-wide high-water mark.

    Returns:
        One dict per mode with ``mode``, ``status``, ``peak_mib`` and ``step_s``.
    """
    from concatnets.bench.config import BenchConfig
    from concatnets.bench.runner import run_config

    rows = []
    for mode in ("naive", "efficient"):
        config = BenchConfig(
            model=model,
            mode=mode,
            batch=batch,
            image_size=image_size,
            steps=2,
            warmup=1,
            device=device,
            model_kwargs=model_kwargs,
        )
        result = run_config(config, timeout=300)
        rows.append(
            {
                "mode": mode,
                "status": result.get("status"),
                "peak_mib": result.get("peak_growth_mib"),
                "step_s": result.get("median_step_s"),
                "cpu_s": result.get("median_cpu_step_s"),
                "memory_metric": result.get("memory_metric"),
                "error": result.get("error"),
            }
        )
    return rows


def _print_memory(rows: list[dict[str, Any]], batch: int, image_size: int) -> None:
    naive = next((r for r in rows if r["mode"] == "naive" and r["status"] == "ok"), None)
    metric = rows[0].get("memory_metric") or "memory"
    print(
        f"memory of one training step, unet_small, batch {batch}, {image_size}x{image_size}: "
        f"growth of the peak over the process's baseline before the step ({metric}),\n"
        "  measured in a fresh process per mode (the training log's figure above is the whole "
        "process's peak instead):"
    )
    for row in rows:
        if row["status"] != "ok":
            print(f"  {row['mode']:<10} {row['status']}: {(row.get('error') or '')[:200]}")
            continue
        ratio = ""
        if naive is not None and naive["peak_mib"]:
            ratio = (
                f"  ({row['peak_mib'] / naive['peak_mib']:.2f}x memory, "
                f"{row['step_s'] / naive['step_s']:.2f}x wall time, "
                f"{row['cpu_s'] / naive['cpu_s']:.2f}x CPU time vs naive)"
            )
        print(
            f"  {row['mode']:<10} +{row['peak_mib']:.1f} MiB peak growth, "
            f"{row['step_s'] * 1000:.1f} ms/step{ratio}"
        )


def run(args: argparse.Namespace) -> int:
    """Train, report Dice and overlays, compare memory."""
    started = time.perf_counter()
    output = args.output or str(Path("demo-run") / time.strftime("%Y%m%d-%H%M%S"))
    config = replace(
        DEMO_CONFIG,
        epochs=args.epochs,
        num_images=args.num_images,
        image_size=args.image_size,
        device=args.device,
        output=output,
        progress=args.progress,
        seed=args.seed,
        model_args=dict(args.model_args),
    )
    print(
        f"concatnets demo: training unet_small on builtin:cells ({config.num_images} "
        f"synthetic {config.image_size}x{config.image_size} microscopy images) for "
        f"{config.epochs} epochs"
    )
    result = run_training(config)
    last = result.last
    best = result.state.best_metric
    overlays = sorted((result.run_dir / "overlays").glob("*.png"))
    summary: dict[str, Any] = {
        "run_dir": str(result.run_dir),
        "best_val_dice": best,
        "best_epoch": result.state.best_epoch,
        "final": {k: v for k, v in last.items() if k.startswith("val_")},
        "overlays": [str(p) for p in overlays],
    }
    print()
    if isinstance(best, float) and math.isfinite(best):
        print(f"validation Dice (mean over classes): {best:.4f} (epoch {result.state.best_epoch})")
    per_class = [k for k in last if k.startswith("val_dice_")]
    for key in per_class:
        print(f"  {key[len('val_') :]:<16} {last[key]:.4f}  (final epoch)")
    if overlays:
        print(f"overlay PNG: {overlays[0]}  (image | truth | prediction)")
    print(f"learning curves: {result.run_dir / 'learning_curves.png'}")
    if args.memory:
        batch, size = args.memory_batch, args.memory_image_size
        kwargs = {"in_channels": 1, "num_classes": 2, **config.model_args}
        try:
            rows = compare_memory("unet_small", kwargs, batch, size, _bench_device(config))
        except ImportError as exc:
            notice(f"memory comparison skipped: the benchmark module is unavailable ({exc})")
        else:
            _print_memory(rows, batch, size)
            summary["memory"] = rows
    (result.run_dir / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"demo finished in {time.perf_counter() - started:.0f} s; outputs in {result.run_dir}")
    hint = cli_hint()
    if hint:
        print(hint)
    return 0


def cli_hint() -> str | None:
    """How to run ``concatnets`` from a shell, when this one is not on ``PATH``.

    ``make demo`` runs ``.venv/bin/concatnets`` without activating ``.venv``, so a plain
    ``concatnets`` afterwards says "command not found".
    """
    here = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    script = Path(sys.executable).parent / "concatnets"
    found = shutil.which("concatnets")
    if found and (here is None or Path(found).resolve() in (here, script.resolve())):
        return None
    shown = _relative(script)
    return (
        f"next: the concatnets command is {shown}; run `source {shown.parent / 'activate'}` "
        "to put it on PATH, then e.g. `concatnets --help`"
    )


def _relative(path: Path) -> Path:
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def _bench_device(config: TrainConfig) -> str:
    if config.device != "auto":
        return config.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``demo`` on the main CLI."""
    parser = subparsers.add_parser(
        "demo",
        help="train unet_small on built-in cell images end to end (about 2 CPU minutes)",
        description=describe(__doc__ or "")
        + "\n\n"
        + textwrap.fill(f"Duration: {DEMO_DURATION}.", width=88),
        formatter_class=HelpFormatter,
        epilog=epilog(
            "concatnets demo",
            "concatnets demo --epochs 3 --num-images 48 --no-memory   # quicker",
            "concatnets demo --output my-demo --device cuda",
        ),
    )
    parser.add_argument(
        "--output", metavar="DIR", help="run folder (default: demo-run/<date-time>)"
    )
    parser.add_argument("--epochs", type=int, default=DEMO_CONFIG.epochs, help="default: 8")
    parser.add_argument(
        "--num-images", type=int, default=DEMO_CONFIG.num_images, help="default: 96"
    )
    parser.add_argument(
        "--image-size", type=int, default=DEMO_CONFIG.image_size, help="default: 64"
    )
    parser.add_argument("--seed", type=int, default=0, help="default: 0")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument(
        "--model-arg",
        dest="model_args",
        action="append",
        type=model_arg_type,
        default=[],
        metavar="KEY=VALUE",
        help="override a unet_small builder argument, e.g. features=8",
    )
    parser.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compare peak memory of efficient vs naive mode (default: on)",
    )
    parser.add_argument(
        "--memory-batch", type=int, default=16, help="batch of the comparison (default: 16)"
    )
    parser.add_argument(
        "--memory-image-size",
        type=int,
        default=128,
        help="image side of the comparison (default: 128)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="progress bars, shown when stderr is a terminal",
    )
    parser.set_defaults(func=run)
    return parser
