"""README and docs/cli.md: first steps that work as written, one duration statement."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from concatnets.cli.demo_command import DEMO_DURATION
from concatnets.cli.main import main

_ROOT = Path(__file__).resolve().parents[1]


def _text(name: str) -> str:
    return " ".join((_ROOT / name).read_text().split())  # line wrapping does not matter


@pytest.mark.parametrize("name", ["README.md", "docs/cli.md"])
def test_demo_duration_is_the_one_statement_the_help_gives(name, capsys):
    assert DEMO_DURATION in _text(name)
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert DEMO_DURATION in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("name", ["README.md", "docs/cli.md"])
def test_no_contradicting_durations_remain(name):
    text = _text(name)
    for stale in ("under a minute", "a minute or two", "a few CPU minutes", "a few minutes"):
        assert stale not in text, stale


def test_readme_says_how_to_reach_the_cli_before_its_first_concatnets_command():
    text = (_ROOT / "README.md").read_text()
    first_command = re.search(r"^concatnets \w", text, flags=re.MULTILINE)
    assert first_command is not None
    assert "source .venv/bin/activate" in text[: first_command.start()]
    assert ".venv/bin/concatnets" in text


def test_readme_states_the_test_suite_duration_with_its_machine():
    text = _text("README.md")
    development = " ".join(text.split("## Development", 1)[1].split())
    assert "The whole suite (1388 tests) took 203 s wall" in development
    assert "on the 2-core AMD EPYC" in development
