"""``concatnets train --model LIBRARY:NAME`` trains third-party models, plain or converted."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from concatnets.cli.main import main
from concatnets.models import create_model, external
from concatnets.training.config import TrainConfig
from concatnets.training.runner import default_run_dir

FAST = ["--epochs", "1", "--batch-size", "4", "--no-progress", "--device", "cpu"]
CELLS = ["--data", "builtin:cells", "--num-images", "8", "--image-size", "32"]
SMP_TINY = [
    *("--model", "smp:Unet"),
    *("--model-arg", "encoder_name=resnet18"),
    *("--model-arg", "encoder_depth=3"),
    *("--model-arg", "decoder_channels=[16,8,4]"),
]
SMP_KWARGS = {"encoder_name": "resnet18", "encoder_depth": 3, "decoder_channels": [16, 8, 4]}


@pytest.mark.parametrize("efficient", [False, True])
def test_train_smp_unet_plain_and_memory_efficient(tmp_path, capsys, efficient):
    pytest.importorskip("segmentation_models_pytorch")
    run = tmp_path / "run"
    flags = ["--memory-efficient"] if efficient else []
    assert main(["train", *SMP_TINY, *CELLS, *FAST, *flags, "--output", str(run)]) == 0
    out = capsys.readouterr().out
    assert ("site(s) converted" in out) is efficient
    history = json.loads((run / "metrics.json").read_text())
    assert np.isfinite(history[0]["train_loss"]) and "val_dice" in history[0]
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "smp:Unet"
    # predict rebuilds the model (converted again when it was trained so) from the run.
    image = tmp_path / "cell.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), np.uint8)).save(image)
    args = ["predict", str(run), str(image), "--output", str(tmp_path / "pred")]
    assert main([*args, "--device", "cpu", "--no-overlay"]) == 0
    assert np.asarray(Image.open(tmp_path / "pred" / "masks" / "cell.png")).shape == (32, 32)


def test_init_weights_from_a_local_state_dict(tmp_path, capsys):
    pytest.importorskip("segmentation_models_pytorch")
    weights = tmp_path / "unet.pth"
    model = create_model("smp:Unet", in_channels=1, num_classes=2, **SMP_KWARGS)
    torch.save(model.state_dict(), weights)
    run = tmp_path / "run"
    args = ["train", *SMP_TINY, *CELLS, *FAST, "--init-weights", str(weights)]
    assert main([*args, "--memory-efficient", "--output", str(run)]) == 0
    # Weights made for three classes do not fit the two of the data: a clear refusal.
    wrong = tmp_path / "wrong.pth"
    other = create_model("smp:Unet", in_channels=1, num_classes=3, **SMP_KWARGS)
    torch.save(other.state_dict(), wrong)
    args = ["train", *SMP_TINY, *CELLS, *FAST, "--init-weights", str(wrong)]
    assert main([*args, "--output", str(tmp_path / "o")]) != 0
    assert "does not fit model 'smp:Unet'" in capsys.readouterr().err


def test_train_monai_basic_unet(tmp_path):
    pytest.importorskip("monai")
    run = tmp_path / "run"
    model = ["--model", "monai:BasicUNet", "--model-arg", "features=[4,4,8,8,16,4]"]
    assert main(["train", *model, *CELLS, *FAST, "--output", str(run)]) == 0
    assert json.loads((run / "metrics.json").read_text())[0]["train_loss"] > 0


def test_unknown_library_is_a_one_line_error(tmp_path, capsys):
    args = ["train", "--model", "tochvision:densenet121", *CELLS, *FAST]
    assert main([*args, "--output", str(tmp_path / "run")]) != 0
    assert "Did you mean torchvision:densenet121?" in capsys.readouterr().err


def test_missing_library_is_a_one_line_error_naming_the_package(tmp_path, monkeypatch, capsys):
    absent = dataclasses.replace(external.LIBRARIES["smp"], module="no_such_module_for_smp")
    monkeypatch.setitem(external.LIBRARIES, "smp", absent)
    monkeypatch.setattr(external, "_SPECS", {})
    args = ["train", *SMP_TINY, *CELLS, *FAST, "--output", str(tmp_path / "run")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: smp:") and "pip install segmentation-models-pytorch" in err
    assert "Traceback" not in err


def test_default_run_folder_has_no_colon():
    folder = default_run_dir(TrainConfig(model="smp:Unet", data="builtin:cells"))
    assert folder.name.startswith("smp_Unet-cells-")


def test_a_misspelt_smp_model_arg_is_a_one_line_error(tmp_path, capsys):
    pytest.importorskip("segmentation_models_pytorch")
    args = ["train", *SMP_TINY, "--model-arg", "encoder_dpth=3", *CELLS, *FAST]
    assert main([*args, "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith("error: smp:Unet has no argument 'encoder_dpth'"), err
    assert "did you mean 'encoder_depth'?" in errors[0]


def test_init_weights_in_old_torchvision_densenet_keys(tmp_path):
    pytest.importorskip("torchvision")
    # torchvision's densenet121 fixes its widths; bn_size=1 keeps the real one small.
    model = create_model("torchvision:densenet121", num_classes=3, bn_size=1)  # 3 shapes
    old = {
        re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", key): value
        for key, value in model.state_dict().items()
    }
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    weights = tmp_path / "densenet_old_keys.pth"
    torch.save(old, weights)
    args = ["train", "--model", "torchvision:densenet121", "--model-arg", "bn_size=1"]
    args += ["--data", "builtin:shapes", "--num-images", "8", "--image-size", "32", *FAST]
    assert main([*args, "--init-weights", str(weights), "--output", str(tmp_path / "run")]) == 0
