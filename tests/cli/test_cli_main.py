"""The top-level ``concatnets`` command: misspelled flags."""

from __future__ import annotations

import pytest

from concatnets.cli.main import main


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_misspelled_flag_names_the_closest_one_with_the_subcommands_usage(capsys):
    err = _error(["train", "--modle", "unet"], capsys)
    assert "usage: concatnets train" in err
    assert "unrecognized arguments: --modle unet; did you mean --model?" in err


def test_misspelled_flag_with_a_value_after_equals(capsys):
    err = _error(["evaluate", "runs/x", "--devcie=cpu"], capsys)
    assert "usage: concatnets evaluate" in err and "did you mean --device?" in err


def test_misspelled_flag_of_a_nested_subcommand(capsys):
    err = _error(["bench", "memory", "--prest", "quick"], capsys)
    assert "usage: concatnets bench memory" in err and "did you mean --preset?" in err


def test_unknown_flag_without_a_close_one_points_to_help(capsys):
    err = _error(["train", "--zzzzzz"], capsys)
    assert "see `concatnets train --help`" in err
