"""U-Net's memory-efficient path equals the naive one (outputs, gradients, statistics)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from concatnets.engine import use_layout
from concatnets.models.unet import UNet

CASES = [
    pytest.param(2, "batch", "transpose", "same", (29, 30), id="2d-batch-transpose-same-odd"),
    pytest.param(2, "batch", "interpolate", "same", (17, 23), id="2d-batch-interp-same"),
    pytest.param(2, "batch", "transpose", "valid", (44, 44), id="2d-batch-valid"),
    pytest.param(2, "none", "transpose", "valid", (44, 44), id="2d-paper-valid"),
    pytest.param(2, "none", "interpolate", "same", (16, 16), id="2d-none-interp"),
    pytest.param(3, "batch", "transpose", "same", (9, 11, 13), id="3d-batch-same"),
    pytest.param(3, "none", "interpolate", "same", (8, 8, 8), id="3d-none-interp"),
    pytest.param(2, "instance", "transpose", "same", (15, 18), id="2d-instance-same"),
    pytest.param(2, "group", "interpolate", "valid", (44, 44), id="2d-group-valid"),
    pytest.param(3, "instance", "transpose", "same", (7, 9, 8), id="3d-instance-same"),
    pytest.param(3, "group", "transpose", "same", (8, 8, 8), id="3d-group-same"),
]

AFFINE_NORMS = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
)


def pair(**config: object) -> tuple[UNet, UNet]:
    torch.manual_seed(0)
    naive = UNet(in_channels=2, num_classes=3, depth=2, features=4, **config).double()  # type: ignore[arg-type]
    for module in naive.modules():
        if isinstance(module, AFFINE_NORMS):
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.2, 0.2)
    efficient = copy.deepcopy(naive)
    efficient.memory_efficient = True
    return naive, efficient


def weighted_loss(out: torch.Tensor) -> torch.Tensor:
    return (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum()


@pytest.mark.parametrize(("dims", "norm", "up", "padding", "size"), CASES)
def test_efficient_matches_naive(
    dims: int, norm: str, up: str, padding: str, size: tuple[int, ...], assert_same_step
) -> None:
    naive, efficient = pair(spatial_dims=dims, normalization=norm, upsampling=up, padding=padding)
    assert_same_step(naive, efficient, torch.randn(2, 2, *size, dtype=torch.float64))


def test_two_optimizer_steps_give_the_same_weights() -> None:
    naive, efficient = pair()
    x = torch.randn(2, 2, 16, 16, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 16, 16))
    for model in (naive, efficient):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(2):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), target).backward()
            optimizer.step()
    for (name, a), b in zip(naive.named_parameters(), efficient.parameters(), strict=True):
        torch.testing.assert_close(b, a, msg=name)


def test_eval_and_no_grad_match() -> None:
    naive, efficient = pair()
    naive.eval()
    efficient.eval()
    x = torch.randn(1, 2, 20, 20, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(efficient(x), naive(x))
    torch.testing.assert_close(efficient(x), naive(x))


def test_efficient_path_makes_no_cat_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    _, efficient = pair()

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.cat called in the memory-efficient U-Net")

    monkeypatch.setattr(torch, "cat", forbidden)
    weighted_loss(efficient(torch.randn(1, 2, 16, 16, dtype=torch.float64))).backward()


def test_instance_norm_with_running_statistics_is_refused_with_the_fix() -> None:
    model = UNet(features=4, depth=1, normalization="instance", memory_efficient=True)
    model.encoder[0].norm1 = nn.InstanceNorm2d(4, affine=True, track_running_stats=True)
    with pytest.raises(ValueError, match="track_running_stats=False"):
        model(torch.randn(2, 1, 8, 8))


def test_checkpoint_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="no 'checkpoint' mode"):
        UNet(features=4, depth=2, memory_efficient="checkpoint")  # type: ignore[arg-type]


def saved_activation_shapes(model: UNet, x: torch.Tensor) -> list[tuple[int, ...]]:
    """Shapes of the distinct non-parameter storages autograd keeps after ``model(x)``."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, tuple[int, ...]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        pointer = t.untyped_storage().data_ptr()
        if pointer not in parameters:
            kept[pointer] = tuple(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sorted(kept.values())


def test_efficient_path_keeps_only_convolution_outputs() -> None:
    """What backward needs, and nothing else: no activations, pooled maps or concatenations.

    The image (level 0's first convolution is recomputed from it), level 0's second
    convolution output, and both convolution outputs of every other level.
    """
    _, efficient = pair()  # depth 2, features 4, 2 input channels, batch norm, same padding
    x = torch.randn(2, 2, 16, 16, dtype=torch.float64, requires_grad=True)
    expected = sorted(
        [
            (2, 2, 16, 16),  # the image
            (2, 4, 16, 16),  # encoder level 0: conv2 output
            (2, 8, 8, 8),  # encoder level 1: conv1 and conv2 outputs
            (2, 8, 8, 8),
            (2, 16, 4, 4),  # bottleneck
            (2, 16, 4, 4),
            (2, 8, 8, 8),  # decoder level 1
            (2, 8, 8, 8),
            (2, 4, 16, 16),  # decoder level 0
            (2, 4, 16, 16),
        ]
    )
    assert saved_activation_shapes(efficient, x) == expected


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_gradcheck_of_the_efficient_path(padding: str) -> None:
    torch.manual_seed(0)
    model = UNet(
        in_channels=1, num_classes=2, depth=1, features=2, padding=padding, memory_efficient=True
    ).double()
    size = 7 if padding == "same" else 18  # odd size for same padding: pad and crop back
    x = torch.randn(2, 1, size, size, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(model, (x,), fast_mode=True)


def test_torch_compile_runs_the_efficient_path() -> None:
    naive, efficient = pair()
    compiled = torch.compile(efficient, backend="eager")
    x = torch.randn(2, 2, 16, 16, dtype=torch.float64)
    weighted_loss(compiled(x)).backward()
    weighted_loss(naive(x)).backward()
    for (name, a), b in zip(naive.named_parameters(), efficient.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, msg=name)


@pytest.mark.parametrize("dims", [2, 3])
def test_one_channel_images_still_compute_in_channels_last(dims: int) -> None:
    """A one-channel image fits every layout; the engine must not fall back to NCHW."""
    torch.manual_seed(0)
    model = UNet(spatial_dims=dims, in_channels=1, num_classes=2, depth=2, features=4)
    model.memory_efficient = True
    layout = torch.channels_last if dims == 2 else torch.channels_last_3d
    saved: list[torch.Tensor] = []
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in parameters and t.dim() == dims + 2:
            saved.append(t)
        return t

    with use_layout("channels_last"), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(torch.randn(2, 1, *(16,) * dims))
    maps = [t for t in saved if t.shape[1] > 1]
    assert maps and all(t.is_contiguous(memory_format=layout) for t in maps)
    out.sum().backward()
