"""3-D volumes in the data pipeline: builtin:cells3d, .npy folders, transforms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from concatnets.data.datasets import LabelledDataset, resolve_size_policy
from concatnets.data.sources import open_labelled_data
from concatnets.data.synthetic import make_cells3d
from concatnets.data.transforms import IGNORE_INDEX, Augment, SizePolicy, elastic_deform


def _volume_folder(root: Path, count: int = 3, side: int = 10, channels: int = 0) -> Path:
    """A segmentation folder of ``(D, H, W[, C])`` uint8 volumes with 0/255 masks."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for index in range(count):
        shape = (side, side + 1, side + 2) + ((channels,) if channels else ())
        np.save(root / "images" / f"v{index}.npy", rng.integers(0, 256, shape, dtype=np.uint8))
        mask = (rng.random((side, side + 1, side + 2)) < 0.5).astype(np.uint8) * 255
        np.save(root / "masks" / f"v{index}.npy", mask)
    return root


def test_cells3d_is_deterministic_and_balanced():
    volumes, masks = make_cells3d(3, 16, seed=4)
    again, again_masks = make_cells3d(3, 16, seed=4)
    other, _ = make_cells3d(3, 16, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(volumes, again, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(masks, again_masks, strict=True))
    assert not np.array_equal(volumes[0], other[0])
    assert volumes[0].shape == masks[0].shape == (16, 16, 16)
    assert volumes[0].dtype == np.uint8 and set(np.unique(masks[0])) == {0, 1}
    cell_fraction = float(np.mean(masks))
    assert 0.35 < cell_fraction < 0.85  # thin borders, yet both classes well present
    # Borders are dark: the image carries the label.
    assert volumes[0][masks[0] == 1].mean() > volumes[0][masks[0] == 0].mean() + 40


def test_cells3d_extends_without_changing_earlier_volumes_and_rejects_tiny_sides():
    short, _ = make_cells3d(2, 12, seed=1)
    long, _ = make_cells3d(4, 12, seed=1)
    assert np.array_equal(short[1], long[1])
    with pytest.raises(ValueError, match="--image-size 4 is too small for builtin:cells3d"):
        make_cells3d(2, 4)


def test_builtin_cells3d_opens_as_volumes():
    data = open_labelled_data("builtin:cells3d", num_images=3, image_size=12, seed=0)
    assert data.spatial_dims == 3 and data.task == "segmentation"
    assert data.sizes == [(12, 12, 12)] * 3 and data.size_summary() == "12x12x12 (3)"
    item = LabelledDataset(data, [0])[0]
    assert item["image"].shape == (1, 12, 12, 12) and item["target"].shape == (12, 12, 12)


def test_npy_volume_folder_maps_0_255_masks_and_keeps_channels(tmp_path, capsys):
    data = open_labelled_data(str(_volume_folder(tmp_path / "d", channels=2)))
    assert "255 -> class 1" in capsys.readouterr().err
    assert data.spatial_dims == 3 and data.in_channels == 2 and data.num_classes == 2
    assert data.sizes[0] == (10, 11, 12)
    image, mask = data.load(0)
    assert image.shape == (10, 11, 12, 2) and mask.shape == (10, 11, 12)
    assert set(np.unique(mask)) <= {0, 1}
    item = LabelledDataset(data, [0])[0]
    assert item["image"].shape == (2, 10, 11, 12)


def test_single_channel_volume_with_trailing_axis_of_one(tmp_path):
    root = _volume_folder(tmp_path / "d", count=2, channels=1)
    data = open_labelled_data(str(root))
    assert data.spatial_dims == 3 and data.in_channels == 1
    assert data.load(0)[0].shape == (10, 11, 12)


def test_folder_mixing_images_and_volumes_is_refused(tmp_path):
    root = _volume_folder(tmp_path / "d", count=1)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "images" / "flat.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / "flat.png")
    with pytest.raises(ValueError, match=r"mixes 2-D images \(e.g. flat.png\) and 3-D volumes"):
        open_labelled_data(str(root))


def test_channels_first_volume_is_refused_with_the_fix(tmp_path):
    root = _volume_folder(tmp_path / "d", count=1)
    np.save(root / "images" / "v0.npy", np.zeros((2, 8, 8, 20), np.uint8))
    with pytest.raises(ValueError, match=r"np.moveaxis\(volume, 0, -1\)"):
        open_labelled_data(str(root))


def test_volume_mask_of_another_shape_is_refused(tmp_path):
    root = _volume_folder(tmp_path / "d", count=1)
    np.save(root / "masks" / "v0.npy", np.zeros((10, 11, 5), np.uint8))
    data = open_labelled_data(str(root))
    with pytest.raises(ValueError, match="mask is 10x11x5 but its image is 10x11x12"):
        data.load(0)


def _labelled_volume(side: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Image channel 0 equals the mask; channel 1 numbers the voxels (tracks positions)."""
    mask = torch.randint(0, 3, side, generator=torch.Generator().manual_seed(0))
    ids = torch.arange(mask.numel(), dtype=torch.float32).reshape(side)
    return torch.stack([mask.float(), ids]), mask


@pytest.mark.parametrize("side", [(6, 6, 6), (4, 6, 6), (6, 5, 6)])
def test_volume_flips_and_rotations_keep_image_and_mask_aligned(side):
    image, mask = _labelled_volume(side)
    augment = Augment(("flip", "rot90"))
    shapes = set()
    for seed in range(24):
        out_image, out_mask = augment(image, mask, torch.Generator().manual_seed(seed))
        assert torch.equal(out_image[0], out_mask.float())
        assert torch.equal(out_image[1].flatten().sort().values, image[1].flatten())
        shapes.add(tuple(out_mask.shape))
    assert shapes == {side}  # only planes with two equal sides are rotated


def test_volume_rotations_use_more_than_one_plane():
    image, mask = _labelled_volume((5, 5, 5))
    augment = Augment(("rot90",))
    results = {
        tuple(augment(image, mask, torch.Generator().manual_seed(s))[1].flatten().tolist())
        for s in range(40)
    }
    assert len(results) > 4  # the (H, W) plane alone gives at most 4 orientations


def test_elastic_deformation_of_a_volume_keeps_mask_values():
    image, mask = _labelled_volume((8, 9, 10))
    warped, warped_mask = elastic_deform(image, mask, torch.Generator().manual_seed(1), sigma=2.0)
    assert warped.shape == image.shape and warped_mask is not None
    assert warped_mask.shape == mask.shape and warped_mask.dtype == mask.dtype
    assert set(warped_mask.unique().tolist()) <= set(mask.unique().tolist())
    assert not torch.equal(warped_mask, mask)
    full = Augment(("flip", "rot90", "elastic"), elastic_sigma=2.0, elastic_probability=1.0)
    out_image, out_mask = full(image, mask, torch.Generator().manual_seed(2))
    assert out_image.shape == (2, 8, 9, 10) and out_mask is not None


def test_size_policies_on_volumes():
    image, mask = _labelled_volume((5, 6, 9))
    crop = SizePolicy("crop", (4, 4, 4))
    patch, patch_mask = crop(image, mask, torch.Generator().manual_seed(0))
    assert patch.shape == (2, 4, 4, 4) and torch.equal(patch[0], patch_mask.float())
    centre, _ = crop(image, mask, None)
    assert torch.equal(centre, image[:, 0:4, 1:5, 2:6])
    padded, padded_mask = SizePolicy("pad", (7, 6, 10))(image, mask, None)
    assert padded.shape == (2, 7, 6, 10) and padded_mask is not None
    assert (padded_mask[0] == IGNORE_INDEX).all() and (padded_mask[:, :, -1] == IGNORE_INDEX).all()
    assert torch.equal(padded_mask[1:6, :, 0:9], mask)
    resized, resized_mask = SizePolicy("resize", (10, 12, 18))(image, mask, None)
    assert resized.shape == (2, 10, 12, 18) and resized_mask is not None
    assert set(resized_mask.unique().tolist()) <= {0, 1, 2}
    with pytest.raises(ValueError, match="one dimensionality"):
        crop(image[:, 0], mask[0], None)


def test_resolve_size_policy_for_volumes(tmp_path):
    root = _volume_folder(tmp_path / "d", count=2)
    np.save(root / "images" / "v1.npy", np.zeros((8, 14, 9), np.uint8))
    np.save(root / "masks" / "v1.npy", np.zeros((8, 14, 9), np.uint8))
    data = open_labelled_data(str(root))
    with pytest.raises(ValueError, match="2 different sizes"):
        resolve_size_policy(data, None, None)
    assert resolve_size_policy(data, "pad", None) == SizePolicy("pad", (10, 14, 12))
    assert resolve_size_policy(data, "crop", None) == SizePolicy("crop", (8, 11, 9))
    assert resolve_size_policy(data, "crop", 6) == SizePolicy("crop", (6, 6, 6))
    with pytest.raises(ValueError, match="has 2 sides but the data needs 3"):
        resolve_size_policy(data, "crop", (6, 6))
