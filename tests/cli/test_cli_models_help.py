from __future__ import annotations

import pytest

from concatnets.cli.main import main
from concatnets.cli.models_command import count_parameters
from concatnets.models import create_model


def test_models_lists_every_family_with_parameter_counts(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert {"unet_small", "densenet_bc", "densenet121", "unet"} <= set(lines)
    assert "segmentation" in lines["unet_small"] and "classification" in lines["densenet121"]
    assert "8.0M" in lines["densenet121"]


def test_parameter_count_on_meta_matches_a_real_model():
    real = sum(p.numel() for p in create_model("unet_small").parameters())
    assert count_parameters("unet_small") == real


def test_models_filters_by_task(capsys):
    assert main(["models", "--task", "segmentation"]) == 0
    out = capsys.readouterr().out
    assert "unet_small" in out and "densenet121" not in out


@pytest.mark.parametrize("command", ["models", "train", "evaluate", "predict", "demo", "bench"])
def test_every_subcommand_has_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: concatnets" in out
    if command != "bench":
        assert "examples:" in out and f"concatnets {command}" in out


def test_unknown_model_is_a_one_line_error(capsys, tmp_path):
    code = main(["train", "--model", "unet_smal", "--output", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: unknown model 'unet_smal'") and "Traceback" not in err
    assert "unet_small" in err
