"""Skip-connection alignment: centre crop and pad of ``(N, C, *spatial)`` maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from concatnets import center_crop_to, concatenate, pad_to
from concatnets.ops import crop_or_pad_to, crop_slices, padding_amounts


class TestHelpers:
    def test_crop_slices_put_the_odd_pixel_at_the_end(self) -> None:
        assert crop_slices((7, 6, 5), (4, 4, 5)) == (slice(1, 5), slice(1, 5), slice(0, 5))

    def test_padding_amounts_put_the_odd_pixel_after(self) -> None:
        assert padding_amounts((4, 4, 5), (7, 6, 5)) == [(1, 2), (1, 1), (0, 0)]

    def test_crop_undoes_pad(self) -> None:
        x = torch.randn(1, 2, 5, 6)
        torch.testing.assert_close(center_crop_to(pad_to(x, (8, 9)), x), x)

    def test_original_unet_crop_offsets(self) -> None:
        # Ronneberger et al. 2015: 64x64 encoder map cropped to the decoder's 56x56.
        assert crop_slices((64, 64), (56, 56)) == (slice(4, 60), slice(4, 60))

    def test_size_lists_must_have_equal_length(self) -> None:
        with pytest.raises(ValueError, match=r"different numbers of dimensions"):
            crop_slices((4, 4), (4,))

    def test_crop_slices_refuses_to_grow(self) -> None:
        with pytest.raises(ValueError, match=r"spatial dimension 1 .* size 3, smaller than .* 4"):
            crop_slices((5, 3), (5, 4))

    def test_padding_amounts_refuses_to_shrink(self) -> None:
        with pytest.raises(ValueError, match=r"size 5, larger than the target 4.*center_crop_to"):
            padding_amounts((5,), (4,))


class TestCenterCrop:
    @pytest.mark.parametrize(
        ("spatial", "target"),
        [((10,), (7,)), ((6, 9), (4, 4)), ((5, 6, 7), (3, 6, 4))],
        ids=["1d", "2d", "3d"],
    )
    def test_crops_to_the_centre(self, spatial: tuple[int, ...], target: tuple[int, ...]) -> None:
        x = torch.randn(2, 3, *spatial)
        result = center_crop_to(x, torch.zeros(1, 1, *target))
        assert result.shape == (2, 3, *target)
        index = tuple(
            slice((s - t) // 2, (s - t) // 2 + t) for s, t in zip(spatial, target, strict=True)
        )
        torch.testing.assert_close(result, x[(slice(None), slice(None), *index)])

    def test_odd_difference_drops_the_last_pixel(self) -> None:
        x = torch.arange(6).view(1, 1, 6)
        assert center_crop_to(x, (3,)).flatten().tolist() == [1, 2, 3]

    def test_returns_a_view(self) -> None:
        x = torch.zeros(1, 1, 5, 5)
        center_crop_to(x, (3, 3))[...] = 1.0
        assert x.sum() == 9

    def test_gradient_flows_to_the_cropped_region(self) -> None:
        x = torch.randn(1, 2, 5, 4, requires_grad=True)
        center_crop_to(x, (3, 2)).sum().backward()
        expected = torch.zeros_like(x)
        expected[:, :, 1:4, 1:3] = 1.0
        torch.testing.assert_close(x.grad, expected)

    def test_works_on_numpy_arrays(self) -> None:
        x = np.arange(2 * 7).reshape(1, 2, 7)
        np.testing.assert_array_equal(center_crop_to(x, np.zeros((1, 1, 4))), x[:, :, 1:5])

    def test_smaller_input_names_dim_sizes_and_pad_to(self) -> None:
        with pytest.raises(ValueError) as info:
            center_crop_to(torch.zeros(1, 1, 8, 45), torch.zeros(1, 1, 8, 46))
        message = str(info.value)
        assert message.startswith("center_crop_to:")
        assert "spatial dimension 1 (dimension 3" in message
        assert "size 45, smaller than the target 46" in message
        assert "pad_to(x, reference)" in message

    def test_full_shape_given_as_size_is_explained(self) -> None:
        with pytest.raises(ValueError, match=r"4 entries but x has 2 spatial.*shape\[2:\]"):
            center_crop_to(torch.zeros(1, 1, 8, 8), (1, 1, 4, 4))

    def test_reference_with_other_spatial_rank_is_rejected(self) -> None:
        with pytest.raises(ValueError, match=r"reference must be 4-D"):
            center_crop_to(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 4))

    def test_input_without_spatial_dims_is_rejected(self) -> None:
        with pytest.raises(ValueError, match=r"at least one spatial dimension, got shape \(2, 3\)"):
            center_crop_to(torch.zeros(2, 3), (1,))

    def test_non_array_input_is_rejected(self) -> None:
        with pytest.raises(TypeError, match=r"torch.as_tensor"):
            center_crop_to([[[1.0]]], (1,))


class TestPad:
    @pytest.mark.parametrize("spatial", [(3,), (3, 4), (2, 3, 4)], ids=["1d", "2d", "3d"])
    @pytest.mark.parametrize("mode", ["constant", "reflect", "replicate", "circular"])
    def test_pads_every_spatial_dim(self, spatial: tuple[int, ...], mode: str) -> None:
        x = torch.randn(2, 3, *spatial)
        target = tuple(
            size + extra for size, extra in zip(spatial, (2, 1, 0)[: len(spatial)], strict=True)
        )
        result = pad_to(x, target, mode=mode)  # type: ignore[arg-type]
        assert result.shape == (2, 3, *target)
        torch.testing.assert_close(center_crop_to(result, x), x)

    def test_constant_value_and_odd_pixel_after(self) -> None:
        result = pad_to(torch.ones(1, 1, 2), (5,), value=-1.0)
        assert result.flatten().tolist() == [-1.0, 1.0, 1.0, -1.0, -1.0]

    def test_modes_match_numpy_pad(self) -> None:
        x = np.arange(12.0).reshape(1, 1, 3, 4)
        tensor = torch.from_numpy(x)
        for mode in ("constant", "reflect", "replicate", "circular"):
            expected = pad_to(x, (5, 6), mode=mode)  # type: ignore[arg-type]
            np.testing.assert_array_equal(pad_to(tensor, (5, 6), mode=mode).numpy(), expected)  # type: ignore[arg-type]

    def test_matching_size_returns_input(self) -> None:
        x = torch.zeros(1, 1, 3)
        assert pad_to(x, x) is x

    def test_gradient_flows_through_padding(self) -> None:
        x = torch.randn(1, 1, 3, 3, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: pad_to(t, (6, 5), mode="reflect"), (x,))

    def test_larger_input_suggests_center_crop_to(self) -> None:
        with pytest.raises(ValueError, match=r"^pad_to: .*size 6, larger than the target 4"):
            pad_to(torch.zeros(1, 1, 6), (4,))

    def test_reflect_needs_pad_smaller_than_size(self) -> None:
        with pytest.raises(ValueError, match=r"reflect.*size 2 and needs a pad of 2.*replicate"):
            pad_to(torch.zeros(1, 1, 2), (5,), mode="reflect")

    def test_circular_wraps_at_most_once(self) -> None:
        with pytest.raises(ValueError, match=r"circular.*size 1 and needs a pad of 2"):
            pad_to(torch.zeros(1, 1, 1), (4,), mode="circular")

    def test_replicate_needs_something_to_repeat(self) -> None:
        with pytest.raises(ValueError, match=r"replicate.*empty"):
            pad_to(torch.zeros(1, 1, 0), (2,), mode="replicate")

    def test_unknown_mode_lists_the_choices(self) -> None:
        with pytest.raises(ValueError, match=r"'reflect', 'replicate', 'circular'"):
            pad_to(torch.zeros(1, 1, 2), (3,), mode="mirror")  # type: ignore[arg-type]


def test_crop_or_pad_to_handles_mixed_directions() -> None:
    x = torch.arange(10.0).view(1, 1, 5, 2)
    result = crop_or_pad_to(x, (3, 4))
    assert result.shape == (1, 1, 3, 4)
    torch.testing.assert_close(result[:, :, :, 1:3], x[:, :, 1:4, :])
    assert result[:, :, :, 0].abs().sum() == 0 and result[:, :, :, 3].abs().sum() == 0


def test_alignment_fixes_the_unet_concatenation_error() -> None:
    skip, upsampled = torch.randn(1, 4, 46, 46), torch.randn(1, 4, 45, 45)
    with pytest.raises(ValueError, match=r"center_crop_to"):
        concatenate((skip, upsampled), axis=1)
    assert concatenate((center_crop_to(skip, upsampled), upsampled), axis=1).shape == (
        1,
        8,
        45,
        45,
    )
    assert concatenate((skip, pad_to(upsampled, skip)), axis=1).shape == (1, 8, 46, 46)
