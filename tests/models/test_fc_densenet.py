"""FC-DenseNet: the paper's sizes, any input size, 2-D/3-D, checkpoint and engine modes == plain."""

from __future__ import annotations

import pytest
import torch

from concatnets.models import create_model, get_model_spec, list_models
from concatnets.models.fc_densenet import FCDenseNet

TINY = dict(num_classes=3, down_layers=(2, 3), bottleneck_layers=2, growth_rate=4, first_features=6)


def _expected_parameters(
    in_channels: int,
    num_classes: int,
    down: tuple[int, ...],
    bottleneck: int,
    k: int,
    first: int,
    dims: int = 2,
) -> int:
    """Closed-form count, written from the paper's Tables 1-2 rather than from the model."""
    tap = 3**dims

    def block(channels: int, layers: int) -> int:
        # Layer l: BN (scale, shift) on c + l*k maps, 3x3 conv to k maps with bias.
        return sum(2 * (channels + i * k) + tap * (channels + i * k) * k + k for i in range(layers))

    total = tap * in_channels * first + first  # first 3x3 conv
    channels, skips = first, []
    for layers in down:
        total += block(channels, layers)
        channels += layers * k
        skips.append(channels)
        total += 2 * channels + channels * channels + channels  # TD: BN, 1x1 conv
    total += block(channels, bottleneck)
    upsampled = bottleneck * k
    for layers, skip in zip(reversed(down), reversed(skips), strict=True):
        total += tap * upsampled * upsampled + upsampled  # TU: 3x3 transposed conv
        total += block(skip + upsampled, layers)
        channels = skip + upsampled + layers * k
        upsampled = layers * k
    return total + channels * num_classes + num_classes  # 1x1 head


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "down", "bottleneck", "k", "published_millions"),
    [
        ("fc_densenet56", (4,) * 5, 4, 12, 1.5),
        ("fc_densenet67", (5,) * 5, 5, 16, 3.5),
        ("fc_densenet103", (4, 5, 7, 10, 12), 15, 16, 9.4),
    ],
)
def test_paper_configurations_have_the_published_size(
    name: str, down: tuple[int, ...], bottleneck: int, k: int, published_millions: float
) -> None:
    model = create_model(name)
    assert model.num_classes == 11 and model.in_channels == 3  # CamVid, as in the paper
    assert _count(model) == _expected_parameters(3, 11, down, bottleneck, k, 48)
    # Paper Table 3 counts as its Lasagne code's summary() does: every parameter array,
    # batch-norm mean and inverse std included. 67 and 103 then round to the paper's
    # 3.5M and 9.4M; FC-DenseNet56 as the paper describes it (5 poolings, 4 layers per
    # block, k = 12, 48 first maps) has 1.40M, not the published 1.5M, under either count.
    with_statistics = _count(model) + sum(
        b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var"))
    )
    expected = 1.4 if name == "fc_densenet56" else published_millions
    assert round(with_statistics / 1e6, 1) == expected


def test_layer_count_names_the_network() -> None:
    # 103 = first conv + 91 dense layers + 5 transitions down + 5 up + head.
    model = create_model("fc_densenet103")
    convs = [
        m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))
    ]
    assert len(convs) == 103


def test_registered_as_segmentation_models() -> None:
    assert set(list_models(family="fc_densenet")) == {
        "fc_densenet56",
        "fc_densenet67",
        "fc_densenet103",
    }
    assert get_model_spec("fc_densenet67").task == "segmentation"


@pytest.mark.parametrize("size", [(32, 32), (13, 17), (1, 5)])
def test_any_2d_input_size_gives_a_same_size_output(size: tuple[int, int]) -> None:
    model = FCDenseNet(**TINY).eval()
    assert model(torch.randn(2, 3, *size)).shape == (2, 3, *size)


def test_3d_volumes_of_odd_size() -> None:
    model = FCDenseNet(spatial_dims=3, in_channels=1, **TINY).eval()
    assert model(torch.randn(1, 1, 16, 9, 11)).shape == (1, 3, 16, 9, 11)
    assert _count(model) == _expected_parameters(1, 3, (2, 3), 2, 4, 6, dims=3)


def test_output_does_not_depend_on_how_far_the_image_extends() -> None:
    # Padding only at the far end keeps the pooling grid: the left part's prediction is
    # the same whether or not more image follows (away from the receptive field's reach).
    torch.manual_seed(0)
    model = FCDenseNet(**TINY).eval().double()
    image = torch.randn(1, 3, 8, 64, dtype=torch.float64)
    whole = model(image)
    part = model(image[..., :40])
    assert torch.allclose(whole[..., :4], part[..., :4])


def test_up_path_upsamples_only_the_new_maps() -> None:
    model = FCDenseNet(**TINY)
    # Bottleneck: 2 layers * k=4 new maps; the last up block's new maps are 2 * 4.
    assert [t.conv.in_channels for t in model.transitions_up] == [8, 12]
    # Each up block starts from [skip, upsampled]: skip 6+2*4+3*4=26 + 8 upsampled.
    assert model.up_blocks[0].layers[0].norm.num_features == 26 + 8


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_checkpoint_mode_matches_the_plain_mode_in_float64(spatial_dims: int) -> None:
    torch.manual_seed(0)
    plain = FCDenseNet(spatial_dims=spatial_dims, **TINY).double()
    checkpointed = FCDenseNet(spatial_dims=spatial_dims, **TINY, memory_efficient="checkpoint")
    checkpointed = checkpointed.double()
    checkpointed.load_state_dict(plain.state_dict())
    size = (12, 10) if spatial_dims == 2 else (8, 6, 5)
    image = torch.randn(2, 3, *size, dtype=torch.float64)
    results = []
    for model in (plain, checkpointed):
        torch.manual_seed(1)  # same dropout masks; checkpoint replays the RNG state
        x = image.clone().requires_grad_()
        out = model(x)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        results.append((out, x.grad, [p.grad for p in model.parameters()]))
    (out_a, dx_a, grads_a), (out_b, dx_b, grads_b) = results
    torch.testing.assert_close(out_a, out_b)
    torch.testing.assert_close(dx_a, dx_b)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b)


def test_checkpoint_mode_keeps_fewer_tensors_for_backward(saved_storage_bytes) -> None:
    def saved_bytes(mode: object) -> int:
        torch.manual_seed(0)
        model = FCDenseNet(**TINY, memory_efficient=mode)
        return saved_storage_bytes(model, torch.randn(2, 3, 32, 32))

    assert saved_bytes("checkpoint") < 0.5 * saved_bytes(False)


def run_step(model: torch.nn.Module, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(1)  # same dropout masks in every mode
    x = image.clone().requires_grad_()
    out = model(x)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return out.detach(), x.grad  # type: ignore[return-value]


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_engine_mode_matches_the_plain_mode_in_float64(spatial_dims: int) -> None:
    torch.manual_seed(0)
    plain = FCDenseNet(spatial_dims=spatial_dims, **TINY).double()
    engine = FCDenseNet(spatial_dims=spatial_dims, **TINY, memory_efficient=True).double()
    engine.load_state_dict(plain.state_dict(), strict=True)
    size = (12, 10) if spatial_dims == 2 else (8, 6, 5)
    image = torch.randn(2, 3, *size, dtype=torch.float64)
    out_a, dx_a = run_step(plain, image)
    out_b, dx_b = run_step(engine, image)
    torch.testing.assert_close(out_b, out_a)
    torch.testing.assert_close(dx_b, dx_a)
    for (name, a), b in zip(plain.named_parameters(), engine.parameters(), strict=True):
        assert b.grad is not None, name
        torch.testing.assert_close(b.grad, a.grad, msg=name)
    # Running statistics after the step, each updated exactly once.
    for (name, a), b in zip(plain.named_buffers(), engine.buffers(), strict=True):
        torch.testing.assert_close(b, a, msg=name)


def test_engine_mode_keeps_less_for_backward_than_checkpointing(saved_storage_bytes) -> None:
    def saved_bytes(mode: object) -> int:
        torch.manual_seed(0)
        model = FCDenseNet(**TINY, memory_efficient=mode)
        return saved_storage_bytes(model, torch.randn(2, 3, 32, 32))

    engine, checkpoint, plain = saved_bytes(True), saved_bytes("checkpoint"), saved_bytes(False)
    assert engine < checkpoint < 0.5 * plain
    assert engine < 0.4 * plain


def test_engine_up_blocks_start_from_skip_and_upsampled_and_reuse_moments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from concatnets.engine import block_buffer

    model = FCDenseNet(**TINY, memory_efficient=True)
    measured: list[int] = []
    original = block_buffer.batch_moments

    monkeypatch.setattr(
        block_buffer, "batch_moments", lambda x: (measured.append(int(x.shape[1])), original(x))[1]
    )
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    k = TINY["growth_rate"]
    # Down blocks and bottleneck: the input, then each layer's k maps. Up blocks: only
    # the upsampled part (8, then 12 maps); the skip's moments come from its down block.
    assert measured == [6, k, k, 14, k, k, k, 26, k, k, 8, k, k, k, 12, k, k]


def test_mode_switches_at_any_time() -> None:
    torch.manual_seed(0)
    model = FCDenseNet(**TINY).double()
    image = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    plain = run_step(model, image)[0]
    for mode in ("checkpoint", True, False):
        assert model.set_memory_efficient(mode) is model
        model.zero_grad()
        torch.testing.assert_close(run_step(model, image)[0], plain)
    with pytest.raises(ValueError, match="memory_efficient must be"):
        model.memory_efficient = "engine"  # type: ignore[assignment]
    assert model.memory_efficient is False


def test_bad_inputs_name_the_fix() -> None:
    model = FCDenseNet(**TINY)
    with pytest.raises(ValueError, match="in_channels=1"):
        model(torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match="4-D input"):
        model(torch.randn(3, 8, 8))
    with pytest.raises(ValueError, match="down_layers"):
        FCDenseNet(down_layers=())
    with pytest.raises(ValueError, match="dropout"):
        FCDenseNet(dropout=1.5)


def test_checkpoint_mode_updates_dense_layer_running_statistics_twice() -> None:
    # The documented caveat: backward reruns each checkpointed layer's batch norm.
    counts = {}
    for mode in (False, "checkpoint"):
        model = FCDenseNet(**TINY, memory_efficient=mode).train()
        model(torch.randn(2, 3, 8, 8)).sum().backward()
        layer_norm = model.down_blocks[0].layers[0].norm
        counts[mode] = (
            int(layer_norm.num_batches_tracked),
            int(model.transitions_down[0].norm.num_batches_tracked),
        )
    assert counts == {False: (1, 1), "checkpoint": (2, 1)}


@pytest.mark.parametrize("name", list_models(family="fc_densenet"))
def test_every_registered_variant_runs_an_odd_sized_image(name: str) -> None:
    model = create_model(name).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 20, 23)).shape == (1, 11, 20, 23)
