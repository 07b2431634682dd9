"""``concatnets models``: list the registered architectures and the third-party libraries.

Plain ``concatnets models`` never imports a third-party library: it only looks up which
are installed. ``--library timm`` imports that one and lists its model names by family;
``--report timm:densenet121`` builds one with random weights and prints which of its sites
:func:`concatnets.memory_efficient` converts.
"""

from __future__ import annotations

import argparse
import re
import textwrap
from typing import Any

import torch

from concatnets.cli.common import HelpFormatter, epilog
from concatnets.models import get_model_spec, list_models
from concatnets.models.external import (
    LIBRARIES,
    conversion_report,
    library_model_names,
    library_version,
)
from concatnets.training.config import parse_model_arg

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


_CONCATENATING = re.compile(r"dense|unet|u_net", re.IGNORECASE)
_SHOWN_PER_FAMILY = 8


def _family(name: str) -> str:
    """A model name's family: its leading letters (``densenet121`` -> ``densenet``)."""
    match = re.match(r"[A-Za-z]+", name)
    return match.group(0) if match else name


def _print_libraries() -> None:
    print()
    print(
        "third-party models: --model LIBRARY:NAME (random weights; "
        "--memory-efficient converts them with concatnets.memory_efficient)"
    )
    for prefix, library in LIBRARIES.items():
        version = library_version(library)
        if version is None:
            print(f"  {prefix:<12} not installed: pip install {library.pip}")
        else:
            print(f"  {prefix:<12} {version:<10} names: concatnets models --library {prefix}")


def _print_library(prefix: str, contains: str | None) -> int:
    names = library_model_names(prefix)
    if contains:
        names = [n for n in names if contains.lower() in n.lower()]
    if not names:
        print(f"no {prefix} model name contains {contains!r}")
        return 0
    families: dict[str, list[str]] = {}
    for name in names:
        families.setdefault(_family(name), []).append(name)
    groups = (
        ("concatenation-based (dense blocks, U-Net decoders)", True),
        (
            "other families (memory_efficient converts the norm -> ReLU -> conv chains they have)",
            False,
        ),
    )
    for title, concatenating in groups:
        chosen = {
            f: n for f, n in families.items() if bool(_CONCATENATING.search(f)) is concatenating
        }
        if not chosen:
            continue
        print(f"{prefix} {title}:")
        for family, members in chosen.items():
            shown = members if contains else members[:_SHOWN_PER_FAMILY]
            more = len(members) - len(shown)
            text = ", ".join(shown) + (f" (+{more} more: --contains {family})" if more else "")
            label = "  " if members == [family] else f"  {family}: "
            print(textwrap.fill(text, 100, initial_indent=label, subsequent_indent="      "))
    print(
        f"use one as --model {prefix}:NAME; concatnets models --report {prefix}:NAME "
        "shows which of its sites memory_efficient converts"
    )
    return 0


def _print_report(name: str, model_args: list[str]) -> int:
    spec = get_model_spec(name)
    if spec.family != "external":
        print(f"{name} is this package's own model: memory_efficient=True builds it on the engine")
        return 0
    settings = dict(parse_model_arg(item) for item in model_args)
    model = spec.build(**settings, memory_efficient=True)
    count = sum(p.numel() for p in model.parameters())
    print(f"{name}: {_format_count(count)} parameters, {spec.task}")
    print(conversion_report(model))
    return 0


def run(args: argparse.Namespace) -> int:
    """Print a table of models, optionally filtered by family and task."""
    if args.report:
        return _print_report(args.report, args.model_arg)
    if args.library:
        return _print_library(args.library, args.contains)
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
    if not args.family:
        _print_libraries()
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``models`` on the main CLI."""
    parser = subparsers.add_parser(
        "models",
        help="list models with family, task and parameter count",
        description="List the registered models. Parameter counts are for each model's "
        "default settings (built on PyTorch's meta device, so nothing is allocated). "
        "Below them: which third-party libraries (torchvision, timm, monai, smp) are "
        "installed, for --model LIBRARY:NAME; none is imported unless --library or "
        "--report asks for it.",
        formatter_class=HelpFormatter,
        epilog=epilog(
            "concatnets models",
            "concatnets models --family unet",
            "concatnets models --task classification",
            "concatnets models --library timm --contains dense",
            "concatnets models --report smp:Unet --model-arg encoder_name=resnet18",
        ),
    )
    families = ("densenet", "fc_densenet", "unet", "unet_plusplus")
    parser.add_argument("--family", choices=families, help="only this family")
    parser.add_argument(
        "--task", choices=("classification", "segmentation"), help="only models for this task"
    )
    parser.add_argument(
        "--library",
        choices=tuple(LIBRARIES),
        help="list this third-party library's model names by family (imports it)",
    )
    parser.add_argument(
        "--contains", metavar="TEXT", help="with --library: only names containing TEXT"
    )
    parser.add_argument(
        "--report",
        metavar="LIBRARY:NAME",
        help="build this third-party model with random weights, convert it and print "
        "which sites run on the engine and why the others do not",
    )
    parser.add_argument(
        "--model-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --report: constructor argument, repeatable",
    )
    parser.set_defaults(func=run)
    return parser
