"""``--normalization dataset``: the training split's channel statistics keep colour."""

from __future__ import annotations

import pytest
import torch

from concatnets.data.transforms import ChannelStatistics, normalize_image


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
