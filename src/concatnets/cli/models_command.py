"""``concatnets models``: list the registered architectures."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from concatnets.cli.common import HelpFormatter, epilog
from concatnets.models import get_model_spec, list_models

__all__ = ["add_parser", "count_parameters", "run"]


def count_parameters(name: str) -> int | None:
    """Parameters of model ``name`` with its defaults, built on the ``meta`` device.

    No memory is allocated and no weights are initialized, so even large models
    count instantly. ``None`` if the model cannot be built that way.

    Args:
        name: Registry name.
    """
    try:
        with torch.device("meta"):
            model = get_model_spec(name).build()
    except Exception:  # a builder that needs real tensors; the count is optional
        return None
    return sum(p.numel() for p in model.parameters())


def _format_count(count: int | None) -> str:
    if count is None:
        return "?"
    if count >= 1_000_000:
        return f"{count / 1e6:.1f}M"
    if count >= 1_000:
        return f"{count / 1e3:.1f}k"
    return str(count)


def run(args: argparse.Namespace) -> int:
    """Print a table of models, optionally filtered by family and task."""
    rows = []
    for name in list_models(args.family):
        spec = get_model_spec(name)
        if args.task and spec.task != args.task:
            continue
        rows.append(
            (name, spec.family, spec.task, _format_count(count_parameters(name)), spec.description)
        )
    if not rows:
        print("no models match")
        return 0
    header = ("name", "family", "task", "params", "description")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        cells = [str(row[i]).ljust(widths[i]) for i in range(4)]
        cells[3] = str(row[3]).rjust(widths[3])
        print("  ".join([*cells, row[4]]).rstrip())
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``models`` on the main CLI."""
    parser = subparsers.add_parser(
        "models",
        help="list models with family, task and parameter count",
        description="List the registered models. Parameter counts are for each model's "
        "default settings (built on PyTorch's meta device, so nothing is allocated).",
        formatter_class=HelpFormatter,
        epilog=epilog(
            "concatnets models",
            "concatnets models --family unet",
            "concatnets models --task classification",
        ),
    )
    families = ("densenet", "fc_densenet", "unet", "unet_plusplus")
    parser.add_argument("--family", choices=families, help="only this family")
    parser.add_argument(
        "--task", choices=("classification", "segmentation"), help="only models for this task"
    )
    parser.set_defaults(func=run)
    return parser
