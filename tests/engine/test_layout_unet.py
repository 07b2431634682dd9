"""The efficient U-Net equals the naive one in each forced layout."""

from __future__ import annotations

import copy

import pytest
import torch

from concatnets.engine import layout_decisions, use_layout
from concatnets.engine.layout_choice import clear_layout_decisions
from concatnets.models.unet import UNet


@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
@pytest.mark.parametrize(
    ("dims", "norm", "size"),
    [(2, "batch", (17, 22)), (2, "group", (16, 16)), (3, "batch", (8, 9, 8))],
)
def test_efficient_unet_matches_naive_in_a_forced_layout(
    layout: str, dims: int, norm: str, size: tuple[int, ...]
) -> None:
    torch.manual_seed(0)
    naive = UNet(
        in_channels=1, num_classes=2, depth=2, features=4, spatial_dims=dims, normalization=norm
    ).double()
    efficient = copy.deepcopy(naive)
    efficient.memory_efficient = True
    x = torch.randn(2, 1, *size, dtype=torch.float64)
    inputs = [x.clone().requires_grad_() for _ in range(2)]
    clear_layout_decisions()
    with use_layout(layout):
        outputs = [model(t) for model, t in zip((naive, efficient), inputs, strict=True)]
        for out in outputs:
            (out * torch.arange(out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    assert {(d.layout, d.source) for d in layout_decisions().values()} == {(layout, "use_layout")}
    torch.testing.assert_close(outputs[1], outputs[0])
    torch.testing.assert_close(inputs[1].grad, inputs[0].grad)
    for (name, a), b in zip(naive.named_parameters(), efficient.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, msg=name)
    for (name, a), b in zip(naive.named_buffers(), efficient.buffers(), strict=True):
        torch.testing.assert_close(b, a, msg=name)


@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
@pytest.mark.parametrize("dims", [2, 3])
def test_efficient_unet_stores_its_maps_in_the_forced_layout(layout: str, dims: int) -> None:
    torch.manual_seed(0)
    model = UNet(spatial_dims=dims, in_channels=1, num_classes=2, depth=2, features=4)
    model.memory_efficient = True
    memory_format = {
        "contiguous": torch.contiguous_format,
        "channels_last": torch.channels_last if dims == 2 else torch.channels_last_3d,
    }[layout]
    saved: list[torch.Tensor] = []
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in parameters and t.dim() == dims + 2:
            saved.append(t)
        return t

    with use_layout(layout), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.randn(2, 1, *(16,) * dims)).sum().backward()
    maps = [t for t in saved if t.shape[1] > 1]
    assert maps and all(t.is_contiguous(memory_format=memory_format) for t in maps)
