"""FC-DenseNet and UNet++ train, list and predict from the CLI like the U-Nets."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from concatnets.cli.main import main

FAST = ["--epochs", "1", "--batch-size", "4", "--no-progress", "--device", "cpu"]
DATA = ["--data", "builtin:cells", "--num-images", "8", "--image-size", "24"]
FC_DENSENET_TINY = [
    "--model",
    "fc_densenet56",
    *("--model-arg", "growth_rate=3"),
    *("--model-arg", "down_layers=[1, 1]"),
    *("--model-arg", "bottleneck_layers=1"),
    *("--model-arg", "first_features=4"),
]
UNET_PLUSPLUS_TINY = [
    "--model",
    "unet_plusplus_small",
    *("--model-arg", "features=4"),
    *("--model-arg", "depth=2"),
    *("--model-arg", "deep_supervision=true"),
]


@pytest.mark.parametrize("model_args", [FC_DENSENET_TINY, UNET_PLUSPLUS_TINY])
def test_train_on_builtin_cells_then_predict_an_odd_sized_image(tmp_path, model_args):
    run = tmp_path / "run"
    assert main(["train", *model_args, *DATA, *FAST, "--output", str(run)]) == 0
    history = json.loads((run / "metrics.json").read_text())
    assert np.isfinite(history[0]["train_loss"]) and "val_dice" in history[0]
    image = tmp_path / "odd.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (19, 27), np.uint8)).save(image)
    output = tmp_path / "pred"
    args = ["predict", str(run), str(image), "--output", str(output), "--device", "cpu"]
    assert main([*args, "--no-overlay"]) == 0
    assert np.asarray(Image.open(output / "masks" / "odd.png")).shape == (19, 27)


def test_models_lists_the_new_families(capsys):
    assert main(["models", "--family", "fc_densenet"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert set(lines) == {"fc_densenet56", "fc_densenet67", "fc_densenet103"}
    assert "9.3M" in lines["fc_densenet103"] and "segmentation" in lines["fc_densenet103"]
    assert main(["models", "--family", "unet_plusplus"]) == 0
    assert "9.0M" in capsys.readouterr().out


def test_unet_plusplus_trains_on_the_engine(tmp_path):
    run = tmp_path / "run"
    args = ["train", *UNET_PLUSPLUS_TINY, *DATA, *FAST, "--memory-efficient", "--output", str(run)]
    assert main(args) == 0
    assert np.isfinite(json.loads((run / "metrics.json").read_text())[0]["train_loss"])


def test_fc_densenet_trains_on_the_engine(tmp_path):
    run = tmp_path / "run"
    args = ["train", *FC_DENSENET_TINY, *DATA, *FAST, "--memory-efficient", "--output", str(run)]
    assert main(args) == 0
    assert np.isfinite(json.loads((run / "metrics.json").read_text())[0]["train_loss"])


def test_train_3d_on_builtin_cells3d(tmp_path):
    run = tmp_path / "run"
    volumes = ["--data", "builtin:cells3d", "--num-images", "4", "--image-size", "12"]
    args = ["train", *FC_DENSENET_TINY, "--model-arg", "spatial_dims=3", *volumes, *FAST]
    assert main([*args, "--batch-size", "2", "--output", str(run)]) == 0
    assert json.loads((run / "metrics.json").read_text())[0]["epoch"] == 1
