from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys

import pytest

from concatnets.cli.main import main
from concatnets.cli.models_command import count_parameters
from concatnets.models import create_model
from concatnets.models.external import LIBRARIES


def test_models_lists_every_family_with_parameter_counts(capsys):
    assert main(["models"]) == 0
    table = capsys.readouterr().out.split("\n\n")[0]  # the libraries follow a blank line
    lines = {line.split()[0]: line for line in table.splitlines()[1:]}
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


def test_models_names_the_installed_libraries_without_importing_them():
    libraries = ("torchvision", "timm", "monai", "segmentation_models_pytorch")
    code = (
        "import sys; from concatnets.cli.main import main; main(['models']); "
        f"print('imported:', [m for m in {libraries!r} if m in sys.modules])"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "imported: []" in done.stdout
    assert "third-party models: --model LIBRARY:NAME" in done.stdout
    for prefix, library in LIBRARIES.items():
        line = next(x for x in done.stdout.splitlines() if x.strip().startswith(prefix + " "))
        installed = importlib.util.find_spec(library.module.split(".")[0]) is not None
        assert (f"--library {prefix}" in line) is installed, line
        assert (f"pip install {library.pip}" in line) is not installed, line


def test_a_missing_library_is_listed_with_its_pip_package(monkeypatch, capsys):
    absent = dataclasses.replace(LIBRARIES["smp"], module="no_such_module_for_smp")
    monkeypatch.setitem(LIBRARIES, "smp", absent)
    assert main(["models", "--task", "segmentation"]) == 0
    assert "smp          not installed: pip install segmentation-models-pytorch" in (
        capsys.readouterr().out
    )


def test_models_of_one_library_by_family(capsys):
    pytest.importorskip("monai")
    assert main(["models", "--library", "monai", "--contains", "densenet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("monai concatenation-based (dense blocks, U-Net decoders):\n")
    assert "  DenseNet: DenseNet, DenseNet121, DenseNet169" in out
    assert "Densenet121" not in out  # an alias of DenseNet121
    assert "--model monai:NAME" in out
    assert main(["models", "--library", "monai", "--contains", "no-such-model"]) == 0
    assert "no monai model name contains 'no-such-model'" in capsys.readouterr().out


def test_models_report_says_which_sites_convert(capsys):
    pytest.importorskip("monai")
    tiny = ["init_features=8", "growth_rate=4", "block_config=[2,2]", "in_channels=3"]
    args = ["models", "--report", "monai:DenseNet"]
    assert main([*args, *(x for a in tiny for x in ("--model-arg", a))]) == 0
    out = capsys.readouterr().out
    assert out.startswith("monai:DenseNet: ") and "parameters, classification" in out
    assert "[converted] dense block features.denseblock1: 2 layers on one shared buffer" in out
    assert main(["models", "--report", "densenet_bc"]) == 0
    assert "this package's own model" in capsys.readouterr().out
