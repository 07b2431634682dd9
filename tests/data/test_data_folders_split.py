from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from concatnets.data import split
from concatnets.data.datasets import LabelledDataset, resolve_size_policy
from concatnets.data.folders import detect_layout, find_input_images
from concatnets.data.sources import open_labelled_data
from concatnets.data.split import split_indices
from concatnets.training.config import TrainConfig
from concatnets.training.runner import prepare_data


def _write_pair(root: Path, stem: str, size: tuple[int, int], mask_name: str | None = None) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    height, width = size
    Image.fromarray(np.full((height, width), 100, np.uint8)).save(root / "images" / f"{stem}.png")
    mask = np.zeros((height, width), np.uint8)
    mask[: height // 2] = 1
    Image.fromarray(mask).save(root / "masks" / (mask_name or f"{stem}.png"))


def test_masks_match_images_by_stem_including_mask_suffix(tmp_path):
    _write_pair(tmp_path, "a", (8, 8))
    _write_pair(tmp_path, "b", (8, 8), mask_name="b_mask.tif")
    data = open_labelled_data(str(tmp_path))
    assert data.task == "segmentation"
    assert data.names == ["a", "b"]
    assert data.load(1)[1].sum() == 32


def test_image_without_mask_is_a_clear_error(tmp_path):
    _write_pair(tmp_path, "a", (8, 8))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "images" / "lonely.png")
    with pytest.raises(ValueError, match=r"have no mask.*lonely\.png"):
        open_labelled_data(str(tmp_path))


def test_mixed_sizes_without_policy_error_names_sizes_and_fix(tmp_path):
    _write_pair(tmp_path, "a", (8, 8))
    _write_pair(tmp_path, "b", (12, 10))
    data = open_labelled_data(str(tmp_path))
    with pytest.raises(ValueError, match=r"2 different sizes.*8x8.*--size-policy"):
        resolve_size_policy(data, None, None)


@pytest.mark.parametrize(("policy", "expected"), [("pad", (12, 10)), ("crop", (8, 8))])
def test_mixed_sizes_with_policy_give_one_size(tmp_path, policy, expected):
    _write_pair(tmp_path, "a", (8, 8))
    _write_pair(tmp_path, "b", (12, 10))
    data = open_labelled_data(str(tmp_path))
    size_policy = resolve_size_policy(data, policy, None)
    assert size_policy is not None and size_policy.size == expected
    dataset = LabelledDataset(data, [0, 1], size_policy=size_policy, train=True)
    shapes = {tuple(dataset[i]["target"].shape) for i in range(2)}
    assert shapes == {expected}


def test_classification_folders_and_layout_detection(tmp_path):
    for name in ("dog", "cat"):
        (tmp_path / name).mkdir()
        for index in range(3):
            Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(tmp_path / name / f"{index}.jpg")
    assert detect_layout(tmp_path) == "classification"
    data = open_labelled_data(str(tmp_path))
    assert data.class_names == ["cat", "dog"]
    assert data.labels == [0, 0, 0, 1, 1, 1]
    assert data.in_channels == 3


def test_empty_folder_explains_layouts(tmp_path):
    with pytest.raises(ValueError, match="DIR/images/ and masks in DIR/masks/"):
        detect_layout(tmp_path)


def test_find_input_images_file_and_folder(tmp_path):
    _write_pair(tmp_path, "a", (8, 8))
    assert [p.name for p in find_input_images(tmp_path)] == ["a.png"]
    assert find_input_images(tmp_path / "images" / "a.png") == [tmp_path / "images" / "a.png"]
    with pytest.raises(FileNotFoundError):
        find_input_images(tmp_path / "missing.png")


def test_split_is_deterministic_disjoint_and_complete():
    first = split_indices(50, 0.2, seed=3)
    assert first == split_indices(50, 0.2, seed=3)
    assert first != split_indices(50, 0.2, seed=4)
    train, val = first
    assert len(val) == 10
    assert sorted(train + val) == list(range(50))


def test_stratified_split_keeps_class_shares():
    labels = [0] * 20 + [1] * 10
    _, val = split_indices(30, 0.2, seed=0, labels=labels)
    assert sum(labels[i] == 0 for i in val) == 4
    assert sum(labels[i] == 1 for i in val) == 2


def test_split_rejects_fraction_leaving_nothing():
    with pytest.raises(ValueError, match="val-fraction"):
        split_indices(4, 1.0, seed=0)
    assert split_indices(3, 0.01, seed=0)[1] != []


def test_a_tiny_validation_split_gets_a_notice_that_says_how_to_grow_it():
    message = split.small_validation_message(2, 8, 0.2)
    assert message is not None
    assert "only 2 of 8 images" in message and "--val-data FOLDER" in message
    assert "raise --val-fraction (e.g. 0.2)" in split.small_validation_message(5, 50, 0.1)
    folder = split.small_validation_message(3, 40, 0.2, val_folder="val/", kind="volume")
    assert folder.startswith("--val-data val/ holds only 3 volume(s)")


def test_a_large_enough_or_deliberately_empty_validation_split_gets_none():
    assert split.small_validation_message(split.MIN_VALIDATION_SAMPLES, 50, 0.2) is None
    assert split.small_validation_message(0, 50, 0.0) is None


def test_training_on_a_tiny_split_prints_the_notice(capsys):
    config = TrainConfig(data="builtin:cells", num_images=8, image_size=16)
    prepare_data(config, "segmentation")
    assert "notice: the validation split holds only 2 of 8 images" in capsys.readouterr().err
