"""Help text of every subcommand: plain text, every default stated."""

from __future__ import annotations

import argparse

import pytest

from concatnets.cli.common import HelpFormatter, describe
from concatnets.cli.main import main


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_which_states_its_default(command, capsys):
    assert "checkpoint of a run folder (default: best)" in _help([command], capsys)


def test_demo_help_shows_no_rest_markup(capsys):
    text = _help(["demo"], capsys)
    assert "``" not in text and ":func:" not in text
    assert "concatnets demo: the whole job" in text


def test_formatter_states_defaults_not_already_mentioned():
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    parser.add_argument("--which", default="best", help="checkpoint")
    parser.add_argument("--size", default=8, help="side (default: eight)")
    parser.add_argument("--flag", action="store_true", help="a switch")
    parser.add_argument("--bars", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--name", help="no default")
    text = " ".join(parser.format_help().split())
    assert "checkpoint (default: best)" in text
    assert "side (default: eight)" in text and "(default: 8)" not in text
    assert "a switch (default" not in text and "no default (default" not in text


def test_describe_turns_rest_into_plain_text():
    assert describe("  ``a`` and :class:`~x.Y`\n  next") == "a and Y\nnext"
