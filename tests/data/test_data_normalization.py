"""``--normalization dataset``: the training split's channel statistics keep colour."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from concatnets.cli.main import main
from concatnets.data.transforms import ChannelStatistics, normalize_image
from concatnets.training.config import TrainConfig
from concatnets.training.loading import load_trained_model
from concatnets.training.runner import prepare_data, run_training

TINTS = {"blue": (40, 40, 200), "green": (40, 200, 40), "red": (200, 40, 40)}


def _tinted_class_folders(root, per_class: int = 6, side: int = 16):
    """RGB class folders whose classes differ only in tint (the noise is the same)."""
    rng = np.random.default_rng(0)
    for name, tint in TINTS.items():
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            noise = rng.integers(-40, 40, (side, side, 1))
            pixels = np.clip(np.array(tint) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{index}.png")
    return root


def test_statistics_are_the_pixel_weighted_mean_and_std_per_channel():
    images = [torch.rand(3, 4, 5), torch.rand(3, 2, 2)]
    stats = ChannelStatistics.of_images(images)
    flat = torch.cat([i.reshape(3, -1) for i in images], dim=1).double()
    assert stats.images == 2
    torch.testing.assert_close(torch.tensor(stats.mean).double(), flat.mean(1))
    torch.testing.assert_close(torch.tensor(stats.std).double(), flat.std(1, correction=0))


def test_a_flat_channel_keeps_its_scale():
    stats = ChannelStatistics.of_images([torch.full((1, 4, 4), 0.5)])
    assert stats.mean == (0.5,) and stats.std == (1.0,)


def test_dataset_normalization_keeps_tint_differences_that_image_normalization_erases():
    red = torch.tensor([0.8, 0.2, 0.2]).view(3, 1, 1) + 0.05 * torch.rand(3, 8, 8)
    blue = torch.tensor([0.2, 0.2, 0.8]).view(3, 1, 1) + 0.05 * torch.rand(3, 8, 8)
    stats = ChannelStatistics.of_images([red, blue])
    per_image = [normalize_image(x, "image").mean((1, 2)) for x in (red, blue)]
    torch.testing.assert_close(per_image[0], per_image[1], atol=1e-5, rtol=0)  # colour gone
    kept = [normalize_image(x, "dataset", stats).mean((1, 2)) for x in (red, blue)]
    assert (kept[0][0] - kept[1][0]) > 1.5 and (kept[1][2] - kept[0][2]) > 1.5


def test_dataset_normalization_needs_matching_statistics():
    with pytest.raises(ValueError, match="needs the training split's channel statistics"):
        normalize_image(torch.rand(3, 4, 4), "dataset")
    with pytest.raises(ValueError, match="statistics have 1; use images"):
        normalize_image(torch.rand(3, 4, 4), "dataset", ChannelStatistics((0.5,), (0.2,)))


@pytest.mark.parametrize(
    "stored",
    [[0.5], {"mean": [0.5]}, {"mean": [0.5], "std": [0.0]}, {"mean": ["x"], "std": [1.0]}],
)
def test_malformed_saved_statistics_are_refused_with_the_source(stored):
    with pytest.raises(ValueError, match=r"config\.json: normalization_statistics must be"):
        ChannelStatistics.from_json(stored, "config.json")


def test_default_training_input_keeps_the_classes_tint(tmp_path):
    data = _tinted_class_folders(tmp_path / "tints")
    prepared = prepare_data(TrainConfig(data=str(data), model="densenet_bc"), "classification")
    assert prepared.statistics is not None and prepared.statistics.images == len(prepared.train_set)
    means: dict[int, list[torch.Tensor]] = {}
    for item in prepared.train_set:
        means.setdefault(int(item["target"]), []).append(item["image"].mean((1, 2)))
    per_class = {k: torch.stack(v).mean(0) for k, v in means.items()}
    names = prepared.data.class_names
    red, blue = per_class[names.index("red")], per_class[names.index("blue")]
    assert red[0] - blue[0] > 1.0 and blue[2] - red[2] > 1.0


def test_tint_only_classes_are_learned_with_default_flags(tmp_path):
    data = _tinted_class_folders(tmp_path / "tints", per_class=8)
    config = TrainConfig(
        data=str(data),
        model="densenet_bc",
        model_args={"depth": 10, "growth_rate": 4},
        epochs=4,
        batch_size=6,
        lr=1e-2,
        augment="none",
        val_fraction=0.25,
        device="cpu",
        progress=False,
        output=str(tmp_path / "run"),
    )
    result = run_training(config)
    accuracy = max(row["val_top1"] for row in result.state.history)
    assert accuracy > 0.9, result.state.history  # per-image normalization stays at 1/3
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["normalization"] == "dataset"
    stats = ChannelStatistics.from_json(saved["normalization_statistics"], "config.json")
    assert stats.mean[0] > stats.mean[1]  # red and blue classes lift their channels
    assert stats.images == 18  # the training split only (24 images, 6 held out)
    # evaluate and predict read the statistics from the checkpoint and apply them.
    trained = load_trained_model(tmp_path / "run")
    assert trained.normalization_statistics == stats
    assert main(["evaluate", str(tmp_path / "run"), "--no-progress", "--device", "cpu"]) == 0
    evaluated = json.loads((tmp_path / "run" / "evaluation" / "metrics.json").read_text())
    best = max(result.state.history, key=lambda row: row["val_top1"])
    assert evaluated["metrics"]["top1"] == pytest.approx(best["val_top1"])


def test_saved_statistics_are_reused_not_recomputed(tmp_path):
    # A resumed run reads its statistics back from config.json / the checkpoint.
    data = _tinted_class_folders(tmp_path / "tints", per_class=2)
    saved = {"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.5, 0.5], "images": 3}
    config = TrainConfig(data=str(data), model="densenet_bc", normalization_statistics=saved)
    prepared = prepare_data(config, "classification")
    assert prepared.statistics == ChannelStatistics((0.1, 0.2, 0.3), (0.5, 0.5, 0.5), 3)
    assert prepared.train_set.statistics == prepared.statistics


def test_saved_statistics_of_other_channels_are_refused(tmp_path):
    data = _tinted_class_folders(tmp_path / "tints", per_class=2)
    saved = {"mean": [0.1], "std": [0.5], "images": 3}
    config = TrainConfig(data=str(data), model="densenet_bc", normalization_statistics=saved)
    with pytest.raises(ValueError, match=r"hold 1 channel\(s\) but the images in .* have 3"):
        prepare_data(config, "classification")
