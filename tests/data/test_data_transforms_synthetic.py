from __future__ import annotations

import numpy as np
import pytest
import torch

from concatnets.data.datasets import LabelledDataset, sample_generator
from concatnets.data.sources import open_labelled_data
from concatnets.data.synthetic import make_cells, make_shapes
from concatnets.data.transforms import Augment, SizePolicy, elastic_deform, parse_augmentations


def test_elastic_deformation_keeps_mask_values_in_class_set():
    generator = torch.Generator().manual_seed(0)
    mask = torch.from_numpy(np.indices((32, 32)).sum(0) % 3).long()
    image = torch.rand(1, 32, 32)
    warped_image, warped_mask = elastic_deform(image, mask, generator, sigma=10.0)
    assert warped_image.shape == image.shape
    assert warped_mask is not None
    assert set(warped_mask.unique().tolist()) <= {0, 1, 2}
    assert not torch.equal(warped_mask, mask)  # it did move pixels


def test_elastic_with_zero_sigma_is_identity():
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(2, 16, 16)
    mask = (torch.rand(16, 16) > 0.5).long()
    out_image, out_mask = elastic_deform(image, mask, generator, sigma=0.0)
    torch.testing.assert_close(out_image, image, atol=1e-5, rtol=0)
    assert torch.equal(out_mask, mask)


def test_augment_moves_image_and_mask_together():
    image = torch.arange(64, dtype=torch.float32).view(1, 8, 8)
    mask = torch.arange(64).view(8, 8)
    augment = Augment(("flip", "rot90"))
    for seed in range(8):
        out_image, out_mask = augment(image, mask, torch.Generator().manual_seed(seed))
        assert torch.equal(out_image[0].long(), out_mask)


def test_size_policies_shapes_and_padding_is_ignored():
    image = torch.rand(1, 6, 10)
    mask = torch.ones(6, 10, dtype=torch.long)
    resized_image, resized_mask = SizePolicy("resize", (8, 8))(image, mask, None)
    assert resized_image.shape == (1, 8, 8) and set(resized_mask.unique().tolist()) == {1}
    padded_image, padded_mask = SizePolicy("pad", (8, 12))(image, mask, None)
    assert padded_image.shape == (1, 8, 12)
    assert (padded_mask == -1).sum() == 8 * 12 - 6 * 10
    crop = SizePolicy("crop", (4, 4))
    cropped, _ = crop(image, mask, torch.Generator().manual_seed(0))
    assert cropped.shape == (1, 4, 4)


def test_parse_augmentations():
    assert parse_augmentations("none") == ()
    with pytest.raises(ValueError, match="unknown augmentation 'blur'"):
        parse_augmentations("flip,blur")


def test_cells_are_deterministic_and_extend_without_change():
    images, masks = make_cells(3, 32, seed=5)
    more_images, _ = make_cells(4, 32, seed=5)
    for a, b in zip(images, more_images[:3], strict=True):
        assert np.array_equal(a, b)
    other, _ = make_cells(1, 32, seed=6)
    assert not np.array_equal(images[0], other[0])
    for mask in masks:
        assert set(np.unique(mask)) == {0, 1}
        # Thin borders: most pixels are cells, but borders exist.
        assert 0.5 < mask.mean() < 0.97


def test_shapes_are_balanced_and_deterministic():
    images, labels = make_shapes(9, 24, seed=1)
    assert labels == [0, 1, 2] * 3
    again, _ = make_shapes(9, 24, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(images, again, strict=True))
    assert images[0].shape == (24, 24, 3) and images[0].dtype == np.uint8


def test_dataset_augmentation_depends_on_seed_epoch_index_only():
    data = open_labelled_data("builtin:cells", num_images=4, image_size=32)
    dataset = LabelledDataset(data, [0, 1, 2, 3], augment=Augment(), train=True, seed=7)
    dataset.set_epoch(2)
    first = dataset[1]
    again = dataset[1]
    assert torch.equal(first["image"], again["image"])
    dataset.set_epoch(3)
    assert not torch.equal(dataset[1]["image"], first["image"]) or not torch.equal(
        dataset[1]["target"], first["target"]
    )
    a = torch.rand(3, generator=sample_generator(1, 2, 3))
    b = torch.rand(3, generator=sample_generator(1, 2, 3))
    assert torch.equal(a, b)
