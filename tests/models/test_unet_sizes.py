"""Size arithmetic of the valid U-Net, checked against a layer-by-layer simulation."""

from __future__ import annotations

import pytest

from concatnets.models.unet import (
    nearest_valid_input_sizes,
    unet_input_size_for_output,
    unet_output_size,
    unet_valid_margin,
)

DEPTHS = (1, 2, 3, 4)
SIZES = range(1, 400)


def simulate(size: int, depth: int) -> int | None:
    """Walk one axis through the paper's layers; None where the network cannot run."""

    def conv3(s: int) -> int:
        return s - 3 + 1

    skips = []
    s = size
    for _ in range(depth):
        s = conv3(conv3(s))
        if s < 1 or s % 2:  # empty map, or 2x2 pooling would drop a row
            return None
        skips.append(s)
        s //= 2
    s = conv3(conv3(s))
    if s < 1:
        return None
    for skip in reversed(skips):
        s *= 2  # 2x2 up-convolution, stride 2
        assert skip >= s  # the skip map can always be cropped to the upsampled one
        s = conv3(conv3(s))
        if s < 1:
            return None
    return s


def test_paper_sizes() -> None:
    assert unet_output_size(572, 4) == (388,)
    assert unet_output_size((572, 572), 4) == (388, 388)
    assert unet_input_size_for_output(388, 4) == (572,)
    assert unet_input_size_for_output((388, 1), 4) == (572, 188)
    assert unet_valid_margin(4) == 92  # (572 - 388) / 2


@pytest.mark.parametrize("depth", DEPTHS)
def test_output_size_matches_simulation(depth: int) -> None:
    for size in SIZES:
        expected = simulate(size, depth)
        if expected is None:
            with pytest.raises(ValueError, match=f"cannot take size {size} in spatial dim 0"):
                unet_output_size(size, depth)
        else:
            assert unet_output_size(size, depth) == (expected,), size


@pytest.mark.parametrize("depth", DEPTHS)
def test_nearest_valid_input_sizes_match_brute_force(depth: int) -> None:
    valid = [s for s in range(1, 1000) if simulate(s, depth) is not None]
    for size in SIZES:
        below = max((s for s in valid if s <= size), default=None)
        above = min(s for s in valid if s >= size)
        assert nearest_valid_input_sizes(size, depth) == (below, above), size


@pytest.mark.parametrize("depth", DEPTHS)
def test_input_size_for_output_is_smallest_sufficient(depth: int) -> None:
    valid = [s for s in range(1, 1200) if simulate(s, depth) is not None]
    for wanted in range(1, 300):
        expected = min(s for s in valid if (simulate(s, depth) or 0) >= wanted)
        assert unet_input_size_for_output(wanted, depth) == (expected,), wanted


def test_invalid_size_error_names_dim_and_nearest_sizes() -> None:
    with pytest.raises(ValueError, match=r"size 570 in spatial dim 1.*556 or 572"):
        unet_output_size((572, 570), 4)
    with pytest.raises(ValueError, match=r"size 100 in spatial dim 0.*188 or larger"):
        unet_output_size((100, 572), 4)


def test_same_padding_keeps_size() -> None:
    assert unet_output_size((97, 131), 4, padding="same") == (97, 131)
    with pytest.raises(ValueError, match="padding must be"):
        unet_output_size(572, 4, padding="full")


@pytest.mark.parametrize("depth", [0, -1, 2.0])
def test_bad_depth_is_refused(depth: object) -> None:
    with pytest.raises(ValueError, match="depth must be an integer >= 1"):
        unet_output_size(572, depth)  # type: ignore[arg-type]
