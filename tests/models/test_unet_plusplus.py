"""UNet++: the paper's size, nested skip wiring, deep supervision, checkpoint == plain."""

from __future__ import annotations

import pytest
import torch

from concatnets.models import create_model, get_model_spec, list_models
from concatnets.models.unet_plusplus import UNetPlusPlus

TINY = dict(in_channels=2, num_classes=3, depth=2, features=4)


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_paper_configuration_has_the_published_size() -> None:
    # Zhou et al. 2018 (Table 2) report 9.04M parameters for UNet++ and 7.76M for the
    # U-Net it extends (filters 32..512). Their Keras code (biased convolutions, no batch
    # norm, one sigmoid output map) prints 9,041,601 and 7,759,521: exactly those here.
    paper_code = create_model("unet_plusplus", normalization="none", num_classes=1)
    assert _count(paper_code) == 9_041_601
    unet = create_model("unet", in_channels=1, features=32, normalization="none", num_classes=1)
    assert _count(unet) == 7_759_521
    # Batch norm (our default) replaces each convolution's bias by its shift and adds a
    # scale: one more parameter per convolution output channel; a second class adds 33.
    ours = create_model("unet_plusplus")
    conv_channels = sum(
        m.out_channels for m in ours.modules() if isinstance(m, torch.nn.Conv2d) and m.bias is None
    )
    assert conv_channels == 3648
    assert _count(ours) == 9_041_601 + conv_channels + 33 == 9_045_282
    # Deep supervision adds only three 1x1 heads (32 -> 2 maps each).
    with_heads = _count(create_model("unet_plusplus", deep_supervision=True))
    assert with_heads - _count(ours) == 3 * (32 * 2 + 2)


def test_registered_as_segmentation_models() -> None:
    assert set(list_models(family="unet_plusplus")) == {"unet_plusplus", "unet_plusplus_small"}
    assert get_model_spec("unet_plusplus_small").task == "segmentation"


def test_node_inputs_are_all_earlier_nodes_of_the_level_and_the_upsampled_one() -> None:
    model = UNetPlusPlus(depth=4, features=8)
    assert len(model.nodes) == 4 + 3 + 2 + 1  # X(i, j) for j >= 1, i + j <= 4
    for name, node in model.nodes.items():
        level, position = map(int, name[1:].split("_"))
        width = 8 * 2**level
        assert node.block.conv1.in_channels == (position + 1) * width
        assert (node.up.in_channels, node.up.out_channels) == (2 * width, width)


@pytest.mark.parametrize("size", [(32, 32), (13, 17), (1, 6)])
@pytest.mark.parametrize("deep_supervision", [False, True])
def test_any_2d_input_size_gives_a_same_size_output(
    size: tuple[int, int], deep_supervision: bool
) -> None:
    model = UNetPlusPlus(**TINY, deep_supervision=deep_supervision).eval()
    assert model(torch.randn(2, 2, *size)).shape == (2, 3, *size)


def test_3d_volumes_of_odd_size() -> None:
    model = UNetPlusPlus(spatial_dims=3, **TINY, deep_supervision=True).eval()
    assert model(torch.randn(1, 2, 16, 9, 7)).shape == (1, 3, 16, 9, 7)


def test_deep_supervision_averages_the_heads_of_the_top_row() -> None:
    torch.manual_seed(0)
    model = UNetPlusPlus(**{**TINY, "depth": 3}, deep_supervision=True).eval().double()
    image = torch.randn(1, 2, 16, 16, dtype=torch.float64)
    heads = model.forward_heads(image)
    assert len(heads) == 3 and all(h.shape == (1, 3, 16, 16) for h in heads)
    # The heads are different functions (different nodes X(0, 1..3), different weights).
    assert not torch.allclose(heads[0], heads[2])
    torch.testing.assert_close(model(image), sum(heads) / 3)
    model.train()
    torch.testing.assert_close(model(image), sum(model.forward_heads(image)) / 3)


def test_without_deep_supervision_one_head_on_the_last_node() -> None:
    model = UNetPlusPlus(**TINY).eval()
    image = torch.randn(1, 2, 8, 8)
    (head,) = model.forward_heads(image)
    torch.testing.assert_close(model(image), head)
    assert len(model.side_heads) == 0


def test_state_dict_without_deep_supervision_loads_into_one_with_it() -> None:
    plain = UNetPlusPlus(**TINY)
    supervised = UNetPlusPlus(**TINY, deep_supervision=True)
    result = supervised.load_state_dict(plain.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert all(key.startswith("side_heads.") for key in result.missing_keys)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_checkpoint_mode_matches_the_plain_mode_in_float64(spatial_dims: int) -> None:
    torch.manual_seed(0)
    options = dict(spatial_dims=spatial_dims, **TINY, deep_supervision=True)
    plain = UNetPlusPlus(**options).double()
    checkpointed = UNetPlusPlus(**options, memory_efficient="checkpoint").double()
    checkpointed.load_state_dict(plain.state_dict())
    size = (12, 10) if spatial_dims == 2 else (8, 6, 5)
    image = torch.randn(2, 2, *size, dtype=torch.float64)
    results = []
    for model in (plain, checkpointed):
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
        model = UNetPlusPlus(**{**TINY, "depth": 3}, memory_efficient=mode)
        return saved_storage_bytes(model, torch.randn(2, 2, 32, 32))

    assert saved_bytes("checkpoint") < 0.5 * saved_bytes(False)


def test_bad_settings_are_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match=r"False \(naive\) or 'checkpoint' or True"):
        UNetPlusPlus(**TINY, memory_efficient="engine")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="deep_supervision"):
        UNetPlusPlus(**TINY, deep_supervision="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="normalization"):
        UNetPlusPlus(**TINY, normalization="layer")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="in_channels=1"):
        UNetPlusPlus(**TINY)(torch.randn(1, 1, 8, 8))


def test_checkpoint_mode_updates_node_running_statistics_twice() -> None:
    # The documented caveat: backward reruns each checkpointed node's batch norms.
    counts = {}
    for mode in (False, "checkpoint"):
        model = UNetPlusPlus(**TINY, memory_efficient=mode).train()
        model(torch.randn(2, 2, 8, 8)).sum().backward()
        node_norm = model.nodes["x0_1"].block.norm1
        counts[mode] = (
            int(node_norm.num_batches_tracked),
            int(model.encoder[0].norm1.num_batches_tracked),
        )
    assert counts == {False: (1, 1), "checkpoint": (2, 1)}


def test_mode_switches_by_assignment_and_refuses_what_it_lacks() -> None:
    model = UNetPlusPlus(**TINY).double().eval()
    image = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    plain = model(image)
    model.memory_efficient = "checkpoint"
    torch.testing.assert_close(model(image), plain)
    torch.testing.assert_close(model.set_memory_efficient(True)(image), plain)
    with pytest.raises(ValueError, match="memory_efficient must be"):
        model.memory_efficient = "fast"  # type: ignore[assignment]
    assert model.memory_efficient is True


@pytest.mark.parametrize("name", list_models(family="unet_plusplus"))
@pytest.mark.parametrize("deep_supervision", [False, True])
def test_every_registered_variant_runs_an_odd_sized_image(
    name: str, deep_supervision: bool
) -> None:
    model = create_model(name, deep_supervision=deep_supervision).eval()
    with torch.no_grad():
        out = model(torch.randn(1, model.in_channels, 20, 23))
    assert out.shape == (1, 2, 20, 23)
