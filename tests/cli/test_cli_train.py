from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from concatnets.cli.main import main

UNET_TINY = ["--model", "unet_small", "--model-arg", "features=4", "--model-arg", "depth=2"]
DENSENET_TINY = [
    "--model",
    "densenet_bc",
    "--model-arg",
    "depth=10",
    "--model-arg",
    "growth_rate=4",
]
FAST = ["--epochs", "1", "--batch-size", "4", "--no-progress", "--device", "cpu"]


def _write_png_segmentation_folder(root: Path, count: int, sizes=None) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for index in range(count):
        height, width = sizes[index] if sizes else (32, 32)
        mask = np.zeros((height, width), np.uint8)
        mask[4 : height // 2, 4 : width // 2] = 255
        image = rng.integers(0, 60, size=(height, width, 3), dtype=np.uint8)
        image[mask > 0] += 150
        Image.fromarray(image).save(root / "images" / f"s{index}.png")
        Image.fromarray(mask).save(root / "masks" / f"s{index}.png")


def test_train_segmentation_on_builtin_cells_writes_a_complete_run(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", *UNET_TINY, "--data", "builtin:cells", "--num-images", "8"]
    code = main([*args, "--image-size", "32", *FAST, "--epochs", "2", "--output", str(run)])
    assert code == 0
    for name in ("config.json", "last.json", "best.json", "metrics.csv", "metrics.json"):
        assert (run / name).exists(), name
    assert (run / "learning_curves.png").stat().st_size > 0
    assert list((run / "overlays").glob("*.png"))
    history = json.loads((run / "metrics.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    assert {"train_loss", "val_loss", "val_dice", "val_iou", "val_pixel_accuracy"} <= set(
        history[0]
    )
    assert "peak_memory_mb" in history[0] and "images_per_s" in history[0]
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert "val_dice_cell" in header
    assert "done: best dice" in capsys.readouterr().out


def test_train_on_png_folder_maps_0_255_masks_with_a_notice(tmp_path, capsys):
    data = tmp_path / "data"
    _write_png_segmentation_folder(data, 6)
    code = main(["train", *UNET_TINY, "--data", str(data), *FAST, "--output", str(tmp_path / "r")])
    captured = capsys.readouterr()
    assert code == 0
    assert "notice: masks hold only 0 and 255" in captured.err
    assert "3 channels, 2 classes" in captured.out


def test_train_on_mixed_sizes_needs_a_policy(tmp_path, capsys):
    data = tmp_path / "data"
    _write_png_segmentation_folder(data, 4, sizes=[(32, 32), (40, 36), (32, 32), (24, 28)])
    out = tmp_path / "r"
    code = main(["train", *UNET_TINY, "--data", str(data), *FAST, "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "error: images in" in err and "3 different sizes" in err
    assert "--size-policy" in err and "Traceback" not in err
    args = ["train", *UNET_TINY, "--data", str(data), *FAST, "--output", str(out)]
    args += ["--size-policy", "crop", "--patch-size", "24"]
    code = main(args)
    assert code == 0


def test_train_classification_on_builtin_shapes(tmp_path):
    run = tmp_path / "run"
    args = ["train", *DENSENET_TINY, "--data", "builtin:shapes", "--num-images", "12"]
    assert main([*args, "--image-size", "16", *FAST, "--output", str(run)]) == 0
    record = json.loads((run / "metrics.json").read_text())[0]
    assert "val_top1" in record and "train_top1" in record
    metadata = json.loads((run / "best.json").read_text())["metadata"]
    assert metadata["class_names"] == ["circle", "square", "triangle"]


def test_train_classification_on_class_folders(tmp_path, capsys, monkeypatch):
    data = tmp_path / "classes"
    rng = np.random.default_rng(0)
    for name, level in (("dark", 30), ("light", 220)):
        (data / name).mkdir(parents=True)
        for index in range(4):
            pixels = np.clip(rng.normal(level, 10, size=(16, 16)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(data / name / f"{index}.png")
    run = tmp_path / "run"
    args = ["train", *DENSENET_TINY, "--data", str(data), *FAST, "--output", str(run)]
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # bars are drawn on terminals
    assert main([*args, "--progress"]) == 0  # the progress bars run too
    assert "epoch 1/1" in capsys.readouterr().err
    metadata = json.loads((run / "last.json").read_text())["metadata"]
    assert metadata["class_names"] == ["dark", "light"]
    assert metadata["in_channels"] == 1


def test_config_file_with_flag_override_and_resolved_config(tmp_path):
    config = tmp_path / "settings.yaml"
    config.write_text(
        "model: unet_small\nmodel_args:\n  features: 4\n  depth: 3\n"
        "data: builtin:cells\nnum_images: 8\nimage_size: 32\nepochs: 3\nlr: 0.005\n"
        "batch_size: 4\nprogress: false\ndevice: cpu\n"
    )
    run = tmp_path / "run"
    args = ["train", "--config", str(config), "--epochs", "1", "--model-arg", "depth=2"]
    args += ["--output", str(run)]
    code = main(args)
    assert code == 0
    resolved = json.loads((run / "config.json").read_text())
    assert resolved["epochs"] == 1  # the flag won
    assert resolved["lr"] == 0.005  # from the file
    assert resolved["model_args"] == {"features": 4, "depth": 2}
    assert resolved["output"] == str(run)
    assert resolved["workers"] == 0  # resolved, not left as "auto"
    # The resolved config is itself a valid --config.
    again = tmp_path / "again"
    assert main(["train", "--config", str(run / "config.json"), "--output", str(again)]) == 0


def test_config_file_typo_is_a_clear_error(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text("epoch = 2\n")
    assert main(["train", "--config", str(config)]) == 2
    assert "unknown setting 'epoch'; did you mean 'epochs'" in capsys.readouterr().err


def test_resume_via_cli_extends_a_run(tmp_path, capsys):
    run = tmp_path / "run"
    base = ["train", *UNET_TINY, "--num-images", "8", "--image-size", "32", *FAST]
    assert main([*base, "--output", str(run)]) == 0
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0
    assert "resuming after epoch 1" in capsys.readouterr().out
    history = json.loads((run / "metrics.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]


def test_valid_padding_unet_with_border_weights_bf16_and_memory_efficient(tmp_path):
    run = tmp_path / "run"
    args = ["train", "--model", "unet_original", "--model-arg", "features=4"]
    args += ["--model-arg", "depth=2", "--num-images", "6", "--image-size", "44", *FAST]
    args += ["--loss", "weighted_ce", "--bf16", "--memory-efficient", "--output", str(run)]
    assert main(args) == 0
    metadata = json.loads((run / "last.json").read_text())["metadata"]
    assert metadata["loss"] == "weighted_ce"
    assert metadata["model_kwargs"]["memory_efficient"] is True
    assert metadata["config"]["bf16"] is True
    record = json.loads((run / "metrics.json").read_text())[0]
    assert 0.0 <= record["val_dice"] <= 1.0


def test_predict_can_write_the_original_0_255_values(tmp_path):
    data = tmp_path / "data"
    _write_png_segmentation_folder(data, 4)
    run = tmp_path / "run"
    assert main(["train", *UNET_TINY, "--data", str(data), *FAST, "--output", str(run)]) == 0
    output = tmp_path / "pred"
    args = ["predict", str(run), str(data / "images" / "s0.png"), "--output", str(output)]
    assert main([*args, "--original-values", "--device", "cpu", "--no-overlay"]) == 0
    values = np.unique(np.asarray(Image.open(output / "masks" / "s0.png")))
    assert set(values.tolist()) <= {0, 255}
    assert not (output / "overlays").exists()


def test_resume_restores_the_engine_choices_the_run_recorded(tmp_path):
    from concatnets.engine.layout_choice import clear_layout_decisions, layout_decisions

    run = tmp_path / "run"
    base = ["train", *UNET_TINY, "--memory-efficient", "--num-images", "8", "--image-size", "32"]
    clear_layout_decisions()
    assert main([*base, *FAST, "--output", str(run)]) == 0
    record = json.loads((run / "last.json").read_text())
    rows = record["metadata"]["engine_choices"]["layout"]
    assert rows  # the engine timed its layout in the first run
    # Flip the recorded choice: the resumed run must take it instead of timing again.
    flipped = {"channels_last": "contiguous", "contiguous": "channels_last"}
    for row in rows:
        row["layout"] = flipped[row["layout"]]
    (run / "last.json").write_text(json.dumps(record))
    clear_layout_decisions()  # as in a new process
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0
    used = {(d.layout, d.source) for d in layout_decisions().values()}
    assert used == {(rows[0]["layout"], "restored")}
    clear_layout_decisions()
