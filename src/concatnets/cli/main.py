"""The ``concatnets`` command: models, train, evaluate, predict, bench, demo.

User errors (a bad flag value, a missing folder, mismatched data) print one
``error: ...`` line and exit with status 2; set ``CONCATNETS_DEBUG=1`` to get the
traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from concatnets._version import __version__
from concatnets.cli import (
    demo_command,
    evaluate_command,
    models_command,
    predict_command,
    train_command,
)
from concatnets.cli.common import (
    HelpFormatter,
    chosen_subparser,
    epilog,
    unrecognized_arguments_message,
)
from concatnets.models.external import LibraryMissingError

__all__ = ["build_parser", "main"]

_USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    KeyError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    PermissionError,
    LibraryMissingError,
)

# Python 3.14's argparse suggests the closest subcommand or choice for a typo.
_SUGGEST_ON_ERROR: dict[str, bool] = (
    {"suggest_on_error": True} if sys.version_info >= (3, 14) else {}
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="concatnets",
        **_SUGGEST_ON_ERROR,
        description="Concatenation-based networks (DenseNet, U-Net) whose training memory "
        "grows linearly with depth: train, evaluate, predict and benchmark.",
        formatter_class=HelpFormatter,
        epilog=epilog(
            "concatnets demo                          # the whole job on built-in data",
            "concatnets models",
            "concatnets train --data my_data/ --model unet_small --epochs 20",
            "concatnets evaluate runs/<run>",
            "concatnets predict runs/<run> new_images/ --output predictions/",
            "concatnets bench memory --preset quick",
            "concatnets <command> --help              # every option of a command",
        ),
    )
    parser.add_argument("--version", action="version", version=f"concatnets {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    models_command.add_parser(subparsers)
    train_command.add_parser(subparsers)
    evaluate_command.add_parser(subparsers)
    predict_command.add_parser(subparsers)
    try:
        from concatnets.bench.cli import add_parser as add_bench_parser
    except ImportError as exc:  # keep the other commands usable
        bench = subparsers.add_parser("bench", help="benchmarks (unavailable)")
        bench.set_defaults(func=_unavailable(f"the bench command failed to import: {exc}"))
    else:
        add_bench_parser(subparsers)
    demo_command.add_parser(subparsers)
    return parser


def _unavailable(message: str) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        print(f"error: {message}", file=sys.stderr)
        return 2

    return command


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit status.

    Args:
        argv: Arguments without the program name; default ``sys.argv[1:]``.
    """
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:  # the subcommand's usage and its closest flag, not the top-level usage
        command = chosen_subparser(parser, args)
        command.error(unrecognized_arguments_message(command, extras))
    debug = os.environ.get("CONCATNETS_DEBUG", "") not in ("", "0")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except _USER_ERRORS as exc:
        if debug:
            raise
        print(f"error: {_message(exc)}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        from concatnets.training.trainer import TrainingDivergedError

        if debug or not isinstance(exc, TrainingDivergedError):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
