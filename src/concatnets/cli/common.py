"""Pieces shared by the subcommands: help formatting, devices, data flags."""

from __future__ import annotations

import argparse
import difflib
import re
import textwrap

import torch

__all__ = [
    "HelpFormatter",
    "add_data_source_arguments",
    "chosen_subparser",
    "describe",
    "epilog",
    "resolve_device",
    "unrecognized_arguments_message",
]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the hand-formatted examples of epilogs and descriptions as written.

    An option whose help does not mention its default gets ``(default: X)`` appended,
    so every default is stated (flags that are off unless given say nothing).
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            action.option_strings
            and "default" not in text
            and default not in (None, False, argparse.SUPPRESS)
            and not (isinstance(default, (list, tuple, dict)) and not default)
        ):
            shown = "on" if default is True else "%(default)s"
            return f"{text} (default: {shown})" if text else f"default: {shown}"
        return action.help


def epilog(*examples: str) -> str:
    """An ``examples:`` epilog, one command per line.

    Args:
        examples: Shell lines; a line starting with ``#`` is a comment.
    """
    return "examples:\n" + "\n".join(f"  {line}" for line in examples)


_REST_LITERAL = re.compile(r"``(.+?)``")
_REST_ROLE = re.compile(r":[a-z]+:`(~?)([^`]+)`")


def describe(text: str) -> str:
    """A description block for ``--help``: dedented, reST markup shown as plain text.

    >>> describe("``concatnets demo``: calls :func:`run_training`.")
    'concatnets demo: calls run_training.'

    Args:
        text: A docstring or other reST-flavoured block.
    """
    plain = _REST_LITERAL.sub(r"\1", text)
    plain = _REST_ROLE.sub(lambda m: m[2].rsplit(".", 1)[-1] if m[1] else m[2], plain)
    return textwrap.dedent(plain).strip()


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device.

    Args:
        name: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(
            f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} was requested but no CUDA GPU is visible; use cpu")
    return device


def add_data_source_arguments(parser: argparse.ArgumentParser, *, default_note: str) -> None:
    """Flags naming a labelled dataset: ``--data`` and its built-in / mask options.

    Args:
        parser: The subcommand parser.
        default_note: What happens without ``--data``.
    """
    group = parser.add_argument_group("data")
    group.add_argument(
        "--data",
        metavar="SOURCE",
        help=f"builtin:cells, builtin:cells3d, builtin:shapes, or a folder ({default_note})",
    )
    group.add_argument("--num-images", type=int, metavar="N", help="images of a built-in set")
    group.add_argument(
        "--image-size", type=int, metavar="PX", help="side of built-in images (or volumes)"
    )
    group.add_argument(
        "--mask-values",
        metavar="MAP",
        help="stored mask value -> class, e.g. 0:0,255:1 (default: the training run's)",
    )
    group.add_argument("--seed", type=int, help="seed of built-in data generation")


def chosen_subparser(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> argparse.ArgumentParser:
    """The deepest subcommand parser that ``args`` went through (``parser`` without any).

    Args:
        parser: The top-level parser.
        args: What it parsed.
    """
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            name = getattr(args, action.dest, None) if action.dest else None
            if name in action.choices:
                return chosen_subparser(action.choices[name], args)
    return parser


def unrecognized_arguments_message(parser: argparse.ArgumentParser, extras: list[str]) -> str:
    """argparse's "unrecognized arguments" line plus the closest flag of ``parser``.

    >>> p = argparse.ArgumentParser()
    >>> _ = p.add_argument("--model")
    >>> unrecognized_arguments_message(p, ["--modle", "unet"])
    'unrecognized arguments: --modle unet; did you mean --model?'

    Args:
        parser: The (sub)command parser whose flags were expected.
        extras: The arguments it did not recognise.
    """
    flags = [
        option
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--")
    ]
    suggestions = []
    for extra in extras:
        if not extra.startswith("-"):
            continue
        typed = extra.split("=", 1)[0]
        close = difflib.get_close_matches(typed, flags, n=1, cutoff=0.6)
        if close and close[0] not in suggestions:
            suggestions.append(close[0])
    message = f"unrecognized arguments: {' '.join(extras)}"
    if suggestions:
        message += f"; did you mean {' or '.join(suggestions)}?"
    else:
        message += f"; see `{parser.prog} --help` for the options"
    return message
