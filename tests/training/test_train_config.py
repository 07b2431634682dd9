from __future__ import annotations

import json
from pathlib import Path

import pytest

from concatnets.training.config import (
    TrainConfig,
    apply_settings,
    load_config_file,
    parse_model_arg,
    write_config,
)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("c.toml", "epochs = 3\nlr = 0.01\n[model_args]\nfeatures = 8\n"),
        ("c.yaml", "epochs: 3\nlr: 0.01\nmodel-args:\n  features: 8\n"),
        ("c.json", '{"epochs": 3, "lr": 0.01, "model_args": {"features": 8}}'),
    ],
)
def test_config_files_in_three_formats(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    config = apply_settings(TrainConfig(), load_config_file(path), str(path))
    assert (config.epochs, config.lr, config.model_args) == (3, 0.01, {"features": 8})


def test_flags_override_file_and_model_args_merge():
    config = apply_settings(TrainConfig(), {"epochs": 3, "model_args": {"a": 1, "b": 2}}, "file")
    config = apply_settings(config, {"epochs": 5, "model_args": {"b": 3}}, "flags")
    assert config.epochs == 5
    assert config.model_args == {"a": 1, "b": 3}


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ValueError, match="unknown setting 'epoch'; did you mean 'epochs'"):
        apply_settings(TrainConfig(), {"epoch": 3}, "--config x.toml")


def test_wrong_type_names_key_and_type():
    with pytest.raises(ValueError, match="batch_size must be int"):
        apply_settings(TrainConfig(), {"batch_size": 2.5}, "x")
    assert apply_settings(TrainConfig(), {"lr": 1}, "x").lr == 1.0
    assert apply_settings(TrainConfig(), {"augment": ["flip", "rot90"]}, "x").augment == (
        "flip,rot90"
    )


def test_written_config_loads_back_identically(tmp_path):
    config = apply_settings(TrainConfig(), {"epochs": 7, "model_args": {"depth": 2}}, "x")
    path = write_config(config, tmp_path / "config.json")
    assert json.loads(path.read_text())["epochs"] == 7
    assert apply_settings(TrainConfig(), load_config_file(path), str(path)) == config


def test_bad_files_give_clear_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = = 3")
    with pytest.raises(ValueError, match="is not valid toml"):
        load_config_file(bad)
    with pytest.raises(ValueError, match="unknown file type"):
        load_config_file(tmp_path / "x.ini")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config_file(tmp_path / "missing.yaml")


def test_parse_model_arg_values():
    assert parse_model_arg("padding=valid") == ("padding", "valid")
    assert parse_model_arg("flag=true") == ("flag", True)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_model_arg("depth")


EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.*"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_configs_load(path):
    config = apply_settings(TrainConfig(), load_config_file(path), str(path))
    assert config.model and config.epochs >= 1
