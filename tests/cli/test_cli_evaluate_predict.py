from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from concatnets.cli.main import main
from concatnets.data.io import read_mask
from concatnets.data.synthetic import make_cells, make_shapes

FAST = ["--epochs", "1", "--batch-size", "4", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def segmentation_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("seg") / "run"
    args = ["train", "--model", "unet_small", "--model-arg", "features=4", "--model-arg", "depth=2"]
    args += ["--data", "builtin:cells", "--num-images", "8", "--image-size", "32", *FAST]
    assert main([*args, "--output", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def classification_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cls") / "run"
    args = ["train", "--model", "densenet_bc", "--model-arg", "depth=10"]
    args += ["--model-arg", "growth_rate=4", "--data", "builtin:shapes", "--num-images", "9"]
    assert main([*args, "--image-size", "16", *FAST, "--output", str(run)]) == 0
    return run


def test_evaluate_run_on_its_validation_split(segmentation_run, capsys):
    assert main(["evaluate", str(segmentation_run), "--no-progress", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "val split, 2 image(s)" in out and "dice" in out
    result = json.loads((segmentation_run / "evaluation" / "metrics.json").read_text())
    assert result["num_samples"] == 2
    assert set(result["metrics"]) >= {"dice", "iou", "pixel_accuracy", "dice_cell"}
    assert (segmentation_run / "evaluation" / "confusion_matrix.png").stat().st_size > 0
    # The reported Dice equals the training run's validation Dice of the same checkpoint.
    history = json.loads((segmentation_run / "metrics.json").read_text())
    assert result["metrics"]["dice"] == pytest.approx(history[-1]["val_dice"])


def test_evaluate_checkpoint_on_a_labelled_folder(segmentation_run, tmp_path):
    images, masks = make_cells(3, 40, seed=9)
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "masks").mkdir()
    for index, (image, mask) in enumerate(zip(images, masks, strict=True)):
        Image.fromarray(image).save(tmp_path / "data" / "images" / f"{index}.tif")
        np.save(tmp_path / "data" / "masks" / f"{index}.npy", mask)
    output = tmp_path / "eval"
    args = ["evaluate", str(segmentation_run / "last.json"), "--data", str(tmp_path / "data")]
    args += ["--output", str(output), "--no-progress", "--device", "cpu"]
    code = main(args)
    assert code == 0
    assert json.loads((output / "metrics.json").read_text())["num_samples"] == 3
    assert len(list((output / "overlays").glob("*.png"))) == 3


def test_evaluate_tiles_large_images_with_metrics_close_to_whole_ones(
    segmentation_run, tmp_path, capsys
):
    images, masks = make_cells(2, 150, seed=4)
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "masks").mkdir()
    for index, (image, mask) in enumerate(zip(images, masks, strict=True)):
        Image.fromarray(image).save(tmp_path / "data" / "images" / f"{index}.png")
        Image.fromarray(mask).save(tmp_path / "data" / "masks" / f"{index}.png")
    metrics = {}
    for tile in ("64", "1024"):
        args = ["evaluate", str(segmentation_run), "--data", str(tmp_path / "data")]
        args += ["--output", str(tmp_path / tile), "--tile-size", tile, "--overlays", "1"]
        assert main([*args, "--no-progress", "--device", "cpu"]) == 0
        metrics[tile] = json.loads((tmp_path / tile / "metrics.json").read_text())["metrics"]
        tiled_line = "2 image(s) with a side above 64 px evaluated tile by tile"
        assert (tiled_line in capsys.readouterr().out) == (tile == "64")
    assert metrics["64"]["pixel_accuracy"] == pytest.approx(
        metrics["1024"]["pixel_accuracy"], abs=0.02
    )
    assert metrics["64"]["dice"] == pytest.approx(metrics["1024"]["dice"], abs=0.02)
    assert (tmp_path / "64" / "overlays" / "0.png").stat().st_size > 0


def test_predict_folder_with_a_large_image_goes_through_tiling(segmentation_run, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    small, _ = make_cells(1, 32, seed=3)
    large, _ = make_cells(1, 150, seed=4)
    Image.fromarray(small[0]).save(inputs / "small.png")
    np.save(inputs / "large.npy", large[0])
    output = tmp_path / "out"
    args = ["predict", str(segmentation_run), str(inputs), "--output", str(output)]
    args += ["--tile-size", "64", "--format", "png,npy", "--device", "cpu", "--no-progress"]
    code = main(args)
    assert code == 0
    assert "1 large image(s) tiled at 64 px" in capsys.readouterr().out
    large_mask = read_mask(output / "masks" / "large.png")
    assert large_mask.shape == (150, 150)
    assert set(np.unique(large_mask)) <= {0, 255}  # viewable by default
    assert np.array_equal(np.load(output / "masks" / "large.npy") * 255, large_mask)
    assert read_mask(output / "masks" / "small.png").shape == (32, 32)
    assert sorted(p.name for p in (output / "overlays").iterdir()) == ["large.png", "small.png"]


def test_tiled_prediction_matches_whole_image_prediction_in_the_interior(segmentation_run):
    import torch

    from concatnets.cli.predict_command import predict_logits
    from concatnets.training.loading import load_trained_model

    trained = load_trained_model(segmentation_run)
    image, _ = make_cells(1, 96, seed=5)
    whole = predict_logits(trained, image[0], tile_size=512)
    tiled = predict_logits(trained, image[0], tile_size=64)
    assert whole.shape == tiled.shape == (2, 96, 96)
    agreement = (whole.argmax(0) == tiled.argmax(0)).float().mean()
    assert agreement > 0.97
    assert not torch.equal(whole, tiled) or agreement == 1.0


def test_predict_single_file_classification_writes_csv(classification_run, tmp_path):
    images, _ = make_shapes(2, 16, seed=11)
    Image.fromarray(images[0]).save(tmp_path / "shape.png")
    output = tmp_path / "out"
    args = ["predict", str(classification_run), str(tmp_path / "shape.png")]
    args += ["--output", str(output), "--device", "cpu"]
    code = main(args)
    assert code == 0
    rows = list(csv.DictReader((output / "predictions.csv").open()))
    assert len(rows) == 1 and rows[0]["class"] in {"circle", "square", "triangle"}
    assert 0.0 <= float(rows[0]["probability"]) <= 1.0


def test_evaluate_classification_on_fresh_builtin_images(classification_run, tmp_path, capsys):
    output = tmp_path / "eval"
    args = ["evaluate", str(classification_run), "--data", "builtin:shapes"]
    args += ["--num-images", "6", "--image-size", "16", "--output", str(output)]
    args += ["--device", "cpu", "--no-progress"]
    code = main(args)
    assert code == 0
    assert "all split, 6 image(s)" in capsys.readouterr().out
    metrics = json.loads((output / "metrics.json").read_text())["metrics"]
    assert 0.0 <= metrics["top1"] <= 1.0


def test_predict_missing_input_is_a_clear_error(segmentation_run, tmp_path, capsys):
    code = main(["predict", str(segmentation_run), str(tmp_path / "nope.png")])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "evaluate", "predict"])
def test_an_image_above_the_pixel_limit_is_a_one_line_error(
    segmentation_run, tmp_path, monkeypatch, capsys, command
):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    images, masks = make_cells(2, 32, seed=1)
    for index, (image, mask) in enumerate(zip(images, masks, strict=True)):
        Image.fromarray(image).save(data / "images" / f"{index}.png")
        Image.fromarray(mask.astype(np.uint8)).save(data / "masks" / f"{index}.png")
    monkeypatch.setenv("CONCATNETS_MAX_IMAGE_PIXELS", "1000")  # 32 x 32 = 1024 pixels
    args = {
        "train": ["train", "--model", "unet_small", "--data", str(data), "--output", "r"],
        "evaluate": ["evaluate", str(segmentation_run), "--data", str(data)],
        "predict": ["predict", str(segmentation_run), str(data), "--output", str(tmp_path / "p")],
    }[command]
    monkeypatch.chdir(tmp_path)
    assert main([*args, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "0.png: 32 x 32 = 1,024 pixels" in err[-1]
    assert "CONCATNETS_MAX_IMAGE_PIXELS=1024" in err[-1] and "Traceback" not in "\n".join(err)


def test_predict_writes_viewable_png_masks_and_class_indices_on_request(
    segmentation_run, tmp_path, capsys
):
    image, _ = make_cells(1, 32, seed=3)
    Image.fromarray(image[0]).save(tmp_path / "cells.png")
    common = ["--format", "png,npy", "--no-overlay", "--device", "cpu", "--no-progress"]
    for flag in ([], ["--class-indices"]):
        output = tmp_path / ("indices" if flag else "viewable")
        args = ["predict", str(segmentation_run), str(tmp_path / "cells.png")]
        assert main([*args, "--output", str(output), *common, *flag]) == 0
    out = capsys.readouterr().out
    assert "mask PNGs hold 0=border, 255=cell (--class-indices for 0, 1, ...)" in out
    assert "mask PNGs hold 0=border, 1=cell\n" in out
    classes = np.load(tmp_path / "viewable" / "masks" / "cells.npy")
    assert np.array_equal(np.load(tmp_path / "indices" / "masks" / "cells.npy"), classes)
    assert np.array_equal(read_mask(tmp_path / "viewable" / "masks" / "cells.png"), classes * 255)
    assert np.array_equal(read_mask(tmp_path / "indices" / "masks" / "cells.png"), classes)


def _labelled_rgb_folder(root, count=2):
    images, masks = make_cells(count, 32, seed=6)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for index, (image, mask) in enumerate(zip(images, masks, strict=True)):
        Image.fromarray(image).convert("RGB").save(root / "images" / f"{index}.png")
        Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"{index}.png")
    return root


def test_colour_images_for_a_grayscale_model_are_converted_with_one_notice(
    segmentation_run, tmp_path, capsys
):
    data = _labelled_rgb_folder(tmp_path / "rgb")
    args = ["predict", str(segmentation_run), str(data), "--output", str(tmp_path / "p")]
    assert main([*args, "--no-overlay", "--device", "cpu", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert err.count("notice: all image(s) are colour but the model takes 1 channel") == 1
    assert "grayscale (ITU-R 601 luma)" in err
    args = ["evaluate", str(segmentation_run), "--data", str(data), "--output", str(tmp_path / "e")]
    assert main([*args, "--device", "cpu", "--no-progress", "--overlays", "1"]) == 0
    assert "are colour but the model takes 1 channel" in capsys.readouterr().err
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["num_samples"] == 2


@pytest.fixture(scope="module")
def class_tree_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree")
    images, labels = make_shapes(9, 16, seed=2)
    names = ["circle", "square", "triangle"]
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        (root / "tree" / names[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "tree" / names[label] / f"{index}.png")
    args = ["train", "--model", "densenet_bc", "--model-arg", "depth=10"]
    args += ["--model-arg", "growth_rate=4", "--data", str(root / "tree"), *FAST]
    assert main([*args, "--epochs", "2", "--output", str(root / "run")]) == 0
    return root / "tree", root / "run"


def test_classification_predict_takes_a_class_folder_tree(class_tree_run, tmp_path, capsys):
    tree, run = class_tree_run
    output = tmp_path / "out"
    assert main(["predict", str(run), str(tree), "--output", str(output), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "holds class folders (circle, square, triangle): predicting every image" in err
    assert f"concatnets evaluate {run} --data {tree}" in err
    rows = list(csv.DictReader((output / "predictions.csv").open()))
    assert sorted(row["file"] for row in rows) == sorted(str(p) for p in tree.rglob("*.png"))


def test_predicted_probabilities_are_the_softmax_of_the_model_as_trained(class_tree_run, tmp_path):
    """The mean -log p(true class) over the validation split equals the run's val loss."""
    from pathlib import Path

    from concatnets.data.sources import open_labelled_data
    from concatnets.data.split import split_indices

    tree, run = class_tree_run
    output = tmp_path / "out"
    assert main(["predict", str(run), str(tree), "--output", str(output), "--device", "cpu"]) == 0
    rows = list(csv.DictReader((output / "predictions.csv").open()))
    by_name = {Path(r["file"]).relative_to(tree).with_suffix("").as_posix(): r for r in rows}
    for row in rows:
        probabilities = [float(row[f"p_{n}"]) for n in ("circle", "square", "triangle")]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
        assert float(row["probability"]) == max(probabilities)
    best = json.loads((run / "best.json").read_text())["metadata"]
    data = open_labelled_data(str(tree), task="classification")
    config = best["config"]
    _, val = split_indices(len(data), config["val_fraction"], config["seed"], labels=data.labels)
    losses = [
        -np.log(float(by_name[data.names[i]][f"p_{data.class_names[data.labels[i]]}"])) for i in val
    ]
    assert np.mean(losses) == pytest.approx(best["metrics"]["val_loss"], rel=1e-4)


def test_overlays_of_large_images_are_downscaled(segmentation_run, tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (1100, 40), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "tall.png")
    output = tmp_path / "out"
    args = ["predict", str(segmentation_run), str(tmp_path / "tall.png"), "--output", str(output)]
    assert main([*args, "--format", "png,npy", "--device", "cpu", "--no-progress"]) == 0
    assert read_mask(output / "masks" / "tall.png").shape == (1100, 40)  # masks keep full size
    assert np.load(output / "masks" / "tall.npy").dtype == np.int64
    _, height = Image.open(output / "overlays" / "tall.png").size
    # The image panel is shrunk by 2 to fit 1024 (550 high, not 1100); titles and the
    # class legend add a fixed band of rows above and below it.
    assert 550 < height < 800


@pytest.mark.parametrize("tile_size", [512, 64])
def test_streamed_mask_equals_the_argmax_of_the_whole_logits(segmentation_run, tile_size):
    from concatnets.cli.predict_command import predict_logits, predict_mask
    from concatnets.training.loading import load_trained_model

    trained = load_trained_model(segmentation_run)
    image, _ = make_cells(1, 100, seed=7)
    logits = predict_logits(trained, image[0], tile_size=tile_size)
    mask = predict_mask(trained, image[0], tile_size=tile_size)
    assert mask.dtype == np.uint8 and mask.shape == (100, 100)
    assert (mask == logits.argmax(0).numpy()).mean() > 0.999  # ties may flip a pixel


def test_predict_with_a_resize_trained_model_gives_masks_of_the_input_size(tmp_path):
    run = tmp_path / "run"
    args = ["train", "--model", "unet_small", "--model-arg", "features=4", "--model-arg", "depth=2"]
    args += ["--data", "builtin:cells", "--num-images", "6", "--image-size", "32", *FAST]
    assert main([*args, "--size-policy", "resize", "--patch-size", "32", "--output", str(run)]) == 0
    image, _ = make_cells(1, 48, seed=2)
    Image.fromarray(image[0]).save(tmp_path / "other.png")
    output = tmp_path / "out"
    args = ["predict", str(run), str(tmp_path / "other.png"), "--output", str(output)]
    assert main([*args, "--device", "cpu", "--no-progress"]) == 0
    assert read_mask(output / "masks" / "other.png").shape == (48, 48)
