"""`concatnets train | evaluate | predict` on 3-D volumes, and dimensionality errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from concatnets.cli.main import main
from concatnets.data.synthetic import make_cells3d

FAST = ["--epochs", "1", "--batch-size", "2", "--no-progress", "--device", "cpu"]
TINY_3D = ["--model", "unet3d", "--model-arg", "features=4", "--model-arg", "depth=2"]


def _volume_folder(root: Path, count: int, side: int, seed: int) -> Path:
    """``images/*.npy`` (D, H, W) volumes and ``masks/*.npy`` stored as 0/255."""
    volumes, masks = make_cells3d(count, side, seed=seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for index, (volume, mask) in enumerate(zip(volumes, masks, strict=True)):
        np.save(root / "images" / f"vol{index}.npy", volume)
        np.save(root / "masks" / f"vol{index}.npy", mask * 255)
    return root


@pytest.fixture(scope="module")
def volume_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("vol") / "run"
    args = ["train", *TINY_3D, "--data", "builtin:cells3d", "--num-images", "5"]
    assert main([*args, "--image-size", "12", *FAST, "--output", str(run)]) == 0
    return run


def test_train_on_cells3d_writes_checkpoints_and_slice_overlays(volume_run, capsys):
    assert (volume_run / "best.json").exists()
    assert len(list((volume_run / "overlays").glob("*.png"))) == 1
    history = json.loads((volume_run / "metrics.json").read_text())
    assert 0.0 <= history[-1]["val_dice"] <= 1.0


def test_evaluate_a_volume_run_on_its_validation_split(volume_run, capsys):
    assert main(["evaluate", str(volume_run), "--no-progress", "--device", "cpu"]) == 0
    assert "val split, 1 image(s)" in capsys.readouterr().out
    result = json.loads((volume_run / "evaluation" / "metrics.json").read_text())
    assert set(result["metrics"]) >= {"dice", "dice_cell", "pixel_accuracy"}
    assert list((volume_run / "evaluation" / "overlays").glob("*.png"))


def test_folder_of_volumes_train_evaluate_predict_round_trip(tmp_path, capsys):
    data = _volume_folder(tmp_path / "data", count=4, side=10, seed=3)
    run = tmp_path / "run"
    args = ["train", *TINY_3D, "--data", str(data), "--augment", "flip,rot90,elastic"]
    assert main([*args, "--elastic-sigma", "2", *FAST, "--output", str(run)]) == 0
    assert "4 volumes (DxHxW 10x10x10 (4))" in capsys.readouterr().out

    args = ["evaluate", str(run), "--data", str(data), "--split", "all"]
    assert main([*args, "--output", str(tmp_path / "ev"), "--no-progress", "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["num_samples"] == 4

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    large, _ = make_cells3d(1, 20, seed=8)
    np.save(inputs / "large.npy", large[0])
    np.save(inputs / "small.npy", make_cells3d(1, 9, seed=9)[0][0])
    output = tmp_path / "pred"
    args = ["predict", str(run), str(inputs), "--output", str(output), "--tile-size", "16"]
    assert main([*args, "--original-values", "--device", "cpu", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "1 large volume(s) tiled at 16 voxels" in captured.out
    assert "written as .npy" in captured.err
    predicted = np.load(output / "masks" / "large.npy")
    assert predicted.shape == (20, 20, 20)
    assert set(np.unique(predicted)) <= {0, 255}
    assert np.load(output / "masks" / "small.npy").shape == (9, 9, 9)
    assert sorted(p.name for p in (output / "overlays").iterdir()) == ["large.png", "small.png"]


@pytest.mark.parametrize(
    ("model", "data", "message"),
    [
        (
            "unet3d",
            "builtin:cells",
            "unet3d takes 3-D volumes but builtin:cells has 2-D images; use --data "
            "builtin:cells3d or a folder of .npy volumes",
        ),
        (
            "unet_small",
            "builtin:cells3d",
            "unet_small takes 2-D images but builtin:cells3d has 3-D volumes; use --data "
            "builtin:cells or a folder of 2-D images, or a 3-D model such as unet3d",
        ),
    ],
)
def test_model_and_data_of_different_dimensionality_stop_early(
    model, data, message, tmp_path, capsys
):
    run = tmp_path / "run"
    args = ["train", "--model", model, "--data", data, "--num-images", "2"]
    assert main([*args, "--image-size", "16", *FAST, "--output", str(run)]) == 2
    assert message in capsys.readouterr().err
    assert not run.exists()  # nothing built, nothing written


def test_predict_refuses_2d_images_for_a_volume_model(volume_run, tmp_path, capsys):
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "flat.png")
    args = ["predict", str(volume_run), str(tmp_path / "flat.png"), "--device", "cpu"]
    assert main([*args, "--output", str(tmp_path / "out")]) == 2
    assert "unet3d takes 3-D volumes but" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_weighted_ce_on_volumes_names_the_alternative(tmp_path, capsys):
    args = ["train", *TINY_3D, "--data", "builtin:cells3d", "--num-images", "2"]
    args += ["--image-size", "8", "--loss", "weighted_ce", *FAST, "--output", str(tmp_path / "r")]
    assert main(args) == 2
    assert "for volumes use --loss ce_dice" in capsys.readouterr().err
