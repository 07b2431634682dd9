"""UNet: shapes in both padding modes, the paper's network, options, errors, registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from concatnets.models import create_model, get_model_spec, list_models
from concatnets.models.unet import UNet, unet_output_size


def tiny(**overrides: object) -> UNet:
    config: dict[str, object] = dict(depth=2, features=4)
    config.update(overrides)
    return UNet(**config)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spatial_dims", "shape", "depth"),
    [
        (2, (1, 1, 97, 131), 3),  # odd and prime, not multiples of 8
        (2, (1, 1, 3, 5), 3),  # smaller than 2**depth
        (2, (1, 1, 1, 1), 2),
        (3, (1, 1, 17, 23, 29), 2),  # primes
        (3, (1, 1, 3, 2, 5), 2),
    ],
)
def test_same_padding_keeps_any_size(spatial_dims: int, shape: tuple[int, ...], depth: int) -> None:
    model = tiny(spatial_dims=spatial_dims, depth=depth, num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.randn(shape))
    assert out.shape == (shape[0], 3, *shape[2:])


def test_same_padding_prediction_does_not_depend_on_image_extent() -> None:
    # Padding only at the far end keeps the pooling grid anchored at the first pixel.
    torch.manual_seed(0)
    model = tiny().eval()
    image = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        big = model(image)
        small = model(image[..., :37, :41])
    # Far from the cut (more than the receptive radius 23 away) the two agree.
    assert torch.allclose(big[..., :12, :16], small[..., :12, :16], atol=1e-5)


@pytest.mark.parametrize(
    ("spatial_dims", "size", "depth"),
    [(2, (60, 44), 2), (2, (18, 20), 1), (3, (18, 20, 22), 1)],
)
def test_valid_padding_output_size_matches_helper(
    spatial_dims: int, size: tuple[int, ...], depth: int
) -> None:
    model = tiny(spatial_dims=spatial_dims, depth=depth, padding="valid").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, *size))
    assert tuple(out.shape[2:]) == unet_output_size(size, depth)
    assert model.output_size(size) == unet_output_size(size, depth)


def test_valid_padding_accepts_exactly_the_helper_sizes() -> None:
    model = tiny(padding="valid", features=2).eval()
    for size in range(36, 70):
        try:
            expected = unet_output_size(size, 2)
        except ValueError:
            with pytest.raises(ValueError, match="Nearest input sizes that work"):
                model(torch.zeros(1, 1, size, 44))
            continue
        with torch.no_grad():
            assert model(torch.zeros(1, 1, size, 44)).shape[2] == expected[0]


def test_valid_padding_error_lists_nearest_sizes() -> None:
    model = tiny(padding="valid")
    with pytest.raises(ValueError, match=r"size 61 in spatial dim 0.*60 or 64"):
        model(torch.zeros(1, 1, 61, 60))
    with pytest.raises(ValueError, match=r"size 10 in spatial dim 1.*44 or larger"):
        model(torch.zeros(1, 1, 60, 10))


def conv(c_in: int, c_out: int, k: int) -> int:
    """Parameters of a 2-D convolution with bias (k x k kernel)."""
    return k * k * c_in * c_out + c_out


@pytest.fixture(scope="module")
def unet_original() -> UNet:
    model = create_model("unet_original")
    assert isinstance(model, UNet)
    return model


def test_unet_original_parameter_count_matches_hand_formula(unet_original: UNet) -> None:
    model = unet_original
    contracting = (
        conv(1, 64, 3) + conv(64, 64, 3)
        + conv(64, 128, 3) + conv(128, 128, 3)
        + conv(128, 256, 3) + conv(256, 256, 3)
        + conv(256, 512, 3) + conv(512, 512, 3)
        + conv(512, 1024, 3) + conv(1024, 1024, 3)
    )  # fmt: skip
    # Each expanding level: 2x2 up-convolution halving channels, then two 3x3 convolutions
    # on [skip, up] (twice the channels) -- the same count as a 2x2 conv with bias.
    expanding = (
        conv(1024, 512, 2) + conv(1024, 512, 3) + conv(512, 512, 3)
        + conv(512, 256, 2) + conv(512, 256, 3) + conv(256, 256, 3)
        + conv(256, 128, 2) + conv(256, 128, 3) + conv(128, 128, 3)
        + conv(128, 64, 2) + conv(128, 64, 3) + conv(64, 64, 3)
    )  # fmt: skip
    head = conv(64, 2, 1)
    expected = contracting + expanding + head
    assert expected == 31_030_658  # the "~31.0 M" quoted for the paper's network
    assert sum(p.numel() for p in model.parameters()) == expected


def test_unet_original_layer_structure(unet_original: UNet) -> None:
    model = unet_original
    assert (model.padding, model.depth, model.in_channels, model.num_classes) == ("valid", 4, 1, 2)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.padding == (0, 0) and m.bias is not None for m in convs)
    assert not any(
        isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)) for m in model.modules()
    )
    assert [(b.conv1.in_channels, b.conv2.out_channels) for b in model.encoder] == [
        (1, 64),
        (64, 128),
        (128, 256),
        (256, 512),
    ]
    assert (model.bottleneck.conv1.in_channels, model.bottleneck.conv2.out_channels) == (512, 1024)
    for up_block, (c_in, c_out) in zip(
        model.decoder, [(1024, 512), (512, 256), (256, 128), (128, 64)], strict=True
    ):
        assert isinstance(up_block.up, nn.ConvTranspose2d)
        assert (up_block.up.in_channels, up_block.up.out_channels) == (c_in, c_out)
        assert up_block.up.kernel_size == (2, 2) and up_block.up.stride == (2, 2)
        assert up_block.block.conv1.in_channels == 2 * c_out
        assert up_block.block.conv1.kernel_size == (3, 3)
    assert (model.head.in_channels, model.head.out_channels, model.head.kernel_size) == (
        64,
        2,
        (1, 1),
    )
    assert model.output_size((572, 572)) == (388, 388)


def test_unet_original_depth_reduced_copy_runs() -> None:
    # The 572x572 forward is too slow for CI; the same wiring at depth 2 runs instead.
    model = create_model("unet_original", depth=2, features=4).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 60, 64)).shape == (1, 2, 20, 24)


def test_skip_is_concatenated_first_and_centre_cropped() -> None:
    torch.manual_seed(0)
    model = tiny(padding="valid", normalization="none").eval()
    captured: dict[str, torch.Tensor] = {}
    model.encoder[0].register_forward_hook(lambda m, i, o: captured.update(skip=o))
    model.decoder[-1].block.register_forward_pre_hook(lambda m, i: captured.update(cat=i[0]))
    with torch.no_grad():
        model(torch.randn(1, 1, 60, 64))
    skip, cat = captured["skip"], captured["cat"]  # skip (1, 4, 56, 60); cat (1, 8, 24, 28)
    top, left = (skip.shape[2] - cat.shape[2]) // 2, (skip.shape[3] - cat.shape[3]) // 2
    cropped = skip[..., top : top + cat.shape[2], left : left + cat.shape[3]]
    assert torch.equal(cat[:, :4], cropped)


@pytest.mark.parametrize("normalization", ["batch", "instance", "group", "none"])
@pytest.mark.parametrize("upsampling", ["transpose", "interpolate"])
def test_every_option_runs_forward_and_backward(normalization: str, upsampling: str) -> None:
    torch.manual_seed(0)
    model = tiny(normalization=normalization, upsampling=upsampling, num_classes=3)
    out = model(torch.randn(2, 1, 12, 10))
    assert out.shape == (2, 3, 12, 10)
    out.square().mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    # A conv bias is redundant when a normalization (which subtracts the mean) follows.
    assert (model.encoder[0].conv1.bias is None) == (normalization != "none")
    if normalization == "none":
        assert isinstance(model.encoder[0].norm1, nn.Identity)


def test_interpolate_upsampling_in_3d_valid_mode() -> None:
    model = tiny(spatial_dims=3, depth=1, padding="valid", upsampling="interpolate").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 18, 18, 20)).shape == (1, 2, 2, 2, 4)


def test_group_norm_groups_default_and_validation() -> None:
    assert tiny(normalization="group", features=64).encoder[0].norm1.num_groups == 32
    assert tiny(normalization="group", features=6).encoder[0].norm1.num_groups == 2
    with pytest.raises(ValueError, match=r"num_groups=4 must divide features=6.*\[1, 2, 3, 6\]"):
        tiny(normalization="group", features=6, num_groups=4)


@pytest.mark.parametrize(
    ("option", "value"),
    [("normalization", "layer"), ("upsampling", "pixelshuffle"), ("padding", "reflect")],
)
def test_unknown_option_is_refused(option: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"{option} must be one of"):
        tiny(**{option: value})


def test_wrong_channel_count_error_says_how_to_fix() -> None:
    with pytest.raises(
        ValueError, match=r"UNet expects 1 input channel\(s\), got 3.*in_channels=3"
    ):
        tiny()(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"expects a 4-D input \(N, C, H, W\)"):
        tiny()(torch.zeros(16, 16))


def test_memory_efficient_flag_gives_the_reference_result() -> None:
    torch.manual_seed(0)
    reference = tiny().eval()
    efficient = tiny(memory_efficient=True).eval()
    efficient.load_state_dict(reference.state_dict())
    image = torch.randn(1, 1, 20, 20)
    with torch.no_grad():
        assert torch.allclose(efficient(image), reference(image), atol=1e-6)


def test_state_dict_keys_are_stable() -> None:
    keys = set(tiny(normalization="batch").state_dict())
    for key in [
        "encoder.0.conv1.weight",
        "encoder.1.norm2.running_mean",
        "bottleneck.conv2.weight",
        "decoder.0.up.weight",
        "decoder.1.block.conv1.weight",
        "head.bias",
    ]:
        assert key in keys
    interpolate_keys = set(tiny(upsampling="interpolate").state_dict())
    assert "decoder.0.up.conv.weight" in interpolate_keys


def test_registry_presets() -> None:
    assert set(list_models(family="unet")) >= {"unet", "unet3d", "unet_original", "unet_small"}
    for name in ["unet", "unet3d", "unet_original", "unet_small"]:
        spec = get_model_spec(name)
        assert (spec.family, spec.task) == ("unet", "segmentation")
    small = create_model("unet_small")
    assert (small.features, small.depth, small.padding, small.normalization) == (
        16,
        3,
        "same",
        "batch",
    )
    volume = create_model("unet3d", features=4, depth=2, num_classes=3).eval()
    assert volume.spatial_dims == 3 and volume.padding == "same"
    with torch.no_grad():
        assert volume(torch.randn(1, 1, 9, 10, 11)).shape == (1, 3, 9, 10, 11)
    modern = create_model("unet", features=4, depth=2, in_channels=1)
    assert (modern.padding, modern.normalization, modern.in_channels) == ("same", "batch", 1)
