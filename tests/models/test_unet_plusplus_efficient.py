"""UNet++ on the engine equals the naive UNet++ and stores each node once."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from concatnets.models.unet_plusplus import UNetPlusPlus

TINY = dict(in_channels=2, num_classes=3, depth=2, features=4)
AFFINE_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


def pair(**config: object) -> tuple[UNetPlusPlus, UNetPlusPlus]:
    torch.manual_seed(0)
    naive = UNetPlusPlus(**{**TINY, **config}).double()  # type: ignore[arg-type]
    for module in naive.modules():
        if isinstance(module, AFFINE_NORMS):
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.2, 0.2)
    return naive, copy.deepcopy(naive).set_memory_efficient(True)


@pytest.mark.parametrize(
    ("dims", "norm", "deep_supervision", "size"),
    [
        pytest.param(2, "batch", True, (13, 10), id="2d-batch-deep"),
        pytest.param(2, "batch", False, (8, 8), id="2d-batch"),
        pytest.param(2, "instance", True, (9, 8), id="2d-instance-deep"),
        pytest.param(2, "none", False, (8, 12), id="2d-none"),
        pytest.param(3, "batch", True, (8, 6, 5), id="3d-batch-deep"),
        pytest.param(3, "batch", False, (4, 4, 4), id="3d-batch"),
    ],
)
def test_engine_matches_naive_in_float64(
    dims: int, norm: str, deep_supervision: bool, size: tuple[int, ...], assert_same_step
) -> None:
    naive, engine = pair(spatial_dims=dims, normalization=norm, deep_supervision=deep_supervision)
    assert_same_step(naive, engine, torch.randn(2, 2, *size, dtype=torch.float64))


def test_eval_mode_and_forward_heads_match() -> None:
    naive, engine = pair(depth=3, deep_supervision=True)
    naive.eval()
    engine.eval()
    x = torch.randn(1, 2, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        for a, b in zip(naive.forward_heads(x), engine.forward_heads(x), strict=True):
            torch.testing.assert_close(b, a)


def test_engine_makes_no_cat_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    _, engine = pair(deep_supervision=True)

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.cat called by UNet++ on the engine")

    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    heads = engine.forward_heads(x)  # the deep-supervision average stacks the heads
    monkeypatch.setattr(torch, "cat", forbidden)
    sum(head.square().sum() for head in heads).backward()  # type: ignore[union-attr]
    monkeypatch.undo()


def saved_activation_shapes(model: nn.Module, x: torch.Tensor) -> list[tuple[int, ...]]:
    """Shapes of the distinct non-parameter storages autograd keeps after ``model(x)``."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, tuple[int, ...]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        pointer = t.untyped_storage().data_ptr()
        if pointer not in parameters and t.dim() > 2:
            kept[pointer] = tuple(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.forward_heads(x)
    return sorted(kept.values())


def test_engine_keeps_two_convolution_outputs_per_node_and_no_concatenation() -> None:
    """The image (X(0,0)'s first convolution is recomputed from it), X(0,0)'s second
    convolution output, and both convolution outputs of every other node."""
    _, engine = pair(deep_supervision=True)  # depth 2, features 4: X(0,*) 4 maps, X(1,*) 8
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    level0, level1, level2 = (2, 4, 8, 8), (2, 8, 4, 4), (2, 16, 2, 2)
    expected = sorted(
        [(2, 2, 8, 8), level0]  # the image, X(0,0)
        + [level1] * 2  # X(1,0)
        + [level2] * 2  # X(2,0)
        + [level0] * 2 * 2  # X(0,1), X(0,2)
        + [level1] * 2  # X(1,1)
    )
    assert saved_activation_shapes(engine, x) == expected
