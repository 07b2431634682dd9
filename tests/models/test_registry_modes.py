"""Every registered model, in a tiny configuration, in every memory mode it offers.

The engine (``memory_efficient=True``) equals the naive model in float64 (outputs,
input and parameter gradients, running statistics); state dicts load strictly across
modes; ``set_memory_efficient`` switches back and forth at any time; the engine keeps
for backward exactly the tensors each family's documentation promises.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from torch import nn

from concatnets.models import create_model, get_model_spec, list_models

# Tiny settings per family; every registered variant keeps its own wiring otherwise.
TINY: dict[str, dict[str, Any]] = {
    "densenet": dict(growth_rate=4, block_config=(2, 2), num_init_features=8, num_classes=3),
    "unet": dict(depth=2, features=4, num_classes=3),
    "unet_plusplus": dict(depth=2, features=4, num_classes=3, deep_supervision=True),
    "fc_densenet": dict(
        down_layers=(2, 2), bottleneck_layers=2, growth_rate=4, first_features=6, dropout=0.2
    ),
}
# CIFAR DenseNet-BC builders take depth and growth rate rather than block_config.
TINY_CIFAR = dict(depth=10, growth_rate=4, num_classes=3)
AFFINE_NORMS = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
)


def tiny(name: str, **overrides: Any) -> nn.Module:
    spec = get_model_spec(name)
    cifar = spec.family == "densenet" and "block_config" not in spec.defaults
    config = TINY_CIFAR if cifar else TINY[spec.family]
    torch.manual_seed(0)
    model = create_model(name, **{**config, **overrides}).double()
    for module in model.modules():  # off the identity, so a wrong norm parameter shows
        if isinstance(module, AFFINE_NORMS) and module.weight is not None:
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.2, 0.2)
    return model


def tiny_input(model: nn.Module) -> torch.Tensor:
    dims = getattr(model, "spatial_dims", 2)
    side = 44 if getattr(model, "padding", "same") == "valid" else 12  # valid: depth 2
    return torch.randn(2, model.in_channels, *(side,) * dims, dtype=torch.float64)


def eval_reference(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The naive model in eval mode, a tiny input and its output."""
    model = tiny(name).eval()
    x = tiny_input(model)
    with torch.no_grad():
        return model, x, model(x)


MODELS = list_models()


def test_every_family_is_covered() -> None:
    assert {get_model_spec(name).family for name in MODELS} <= set(TINY)


@pytest.mark.parametrize("name", MODELS)
def test_engine_equals_naive_in_float64(name: str, assert_same_step) -> None:
    naive = tiny(name)
    engine = copy.deepcopy(naive)
    engine.set_memory_efficient(True)
    assert_same_step(naive, engine, tiny_input(naive))


def _modes(name: str) -> tuple[object, ...]:
    return type(tiny(name)).memory_modes  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", MODELS)
def test_state_dicts_load_strictly_across_modes(name: str) -> None:
    naive, x, expected = eval_reference(name)
    for mode in _modes(name):
        other = tiny(name, memory_efficient=mode)
        other.load_state_dict(naive.state_dict(), strict=True)
        with torch.no_grad():
            torch.testing.assert_close(other.eval()(x), expected, msg=str(mode))
        naive.load_state_dict(other.state_dict(), strict=True)


@pytest.mark.parametrize("name", MODELS)
def test_set_memory_efficient_round_trip(name: str) -> None:
    model, x, expected = eval_reference(name)
    with torch.no_grad():
        for mode in (*_modes(name), False):
            assert model.set_memory_efficient(mode) is model
            assert model.memory_efficient is mode or model.memory_efficient == mode
            torch.testing.assert_close(model(x), expected, msg=str(mode))
            model.memory_efficient = mode  # assignment is the same switch
            assert model.memory_efficient == mode
    with pytest.raises(ValueError, match="memory_efficient"):
        model.set_memory_efficient("fast")
    assert model.memory_efficient is False


@pytest.mark.parametrize("name", MODELS)
def test_every_model_offers_the_engine(name: str) -> None:
    assert True in _modes(name), f"{name} does not list True in memory_modes"


# What the engine promises to keep for backward, written from each family's documentation
# (not read from the model's run): per entry ``(channels, spatial size, dtype)`` of one
# distinct activation storage. Parameters and per-channel statistics are left out.
Saved = list[tuple[int, tuple[int, ...], torch.dtype]]


def _unet_promise(model: Any, side: int) -> Saved:
    """U-Net: the image (level 0's first convolution is recomputed from it), level 0's
    second convolution output, both convolution outputs of every other block; nothing of
    the concatenations, poolings or up-convolutions."""
    assert model.upsampling == "transpose"  # interpolation stores the interpolated map
    trim = 2 if model.padding == "valid" else 0  # each valid 3x3 convolution trims 2
    f64, dims = torch.float64, model.spatial_dims
    kept: Saved = [(model.in_channels, (side,) * dims, f64)]
    size, sizes = side, []
    for level in range(model.depth + 1):  # encoder levels, then the bottleneck
        if level:
            size //= 2
        channels = model.features * 2**level
        if level:
            kept.append((channels, (size - trim,) * dims, f64))
        size -= 2 * trim
        kept.append((channels, (size,) * dims, f64))
        sizes.append(size)
    for level in reversed(range(model.depth)):
        size *= 2  # the 2x2 up-convolution
        channels = model.features * 2**level
        kept += [(channels, (size - trim,) * dims, f64), (channels, (size - 2 * trim,) * dims, f64)]
        size -= 2 * trim
    return kept


def _unet_plusplus_promise(model: Any, side: int) -> Saved:
    """UNet++: the image, X(0,0)'s second convolution output, both convolution outputs
    of every other node X(i, j); none of the nested concatenations."""
    f64, dims = torch.float64, model.spatial_dims
    kept: Saved = [(model.in_channels, (side,) * dims, f64)]
    for level in range(model.depth + 1):
        nodes = model.depth + 1 - level  # X(level, 0..depth-level)
        convs = 2 * nodes - (1 if level == 0 else 0)
        kept += [(model.features * 2**level, (side // 2**level,) * dims, f64)] * convs
    return kept


def _fc_densenet_promise(model: Any, side: int) -> Saved:
    """FC-DenseNet: the image; per level one buffer ``[skip, upsampled, up block's new
    maps]`` shared by the down and up blocks; the bottleneck's buffer; each dense layer's
    dropout mask; each transition down's argmax offsets (int8) and dropout bits (bool)."""
    k, dims = model.growth_rate, model.spatial_dims
    channels = model.first_conv.out_channels
    kept: Saved = [(model.in_channels, (side,) * dims, torch.float64)]
    below = [*model.down_layers[1:], model.bottleneck_layers]
    for level, (layers, upsampled) in enumerate(zip(model.down_layers, below, strict=True)):
        size = (side // 2**level,) * dims
        channels += layers * k  # the skip
        kept.append((channels + (upsampled + layers) * k, size, torch.float64))
        kept += [(k, size, torch.bool)] * (2 * layers)  # down and up block masks
        pooled = (side // 2 ** (level + 1),) * dims
        kept += [(channels, pooled, torch.int8), (channels, pooled, torch.bool)]
    coarsest = (side // 2**model.depth,) * dims
    kept.append((channels + model.bottleneck_layers * k, coarsest, torch.float64))
    kept += [(k, coarsest, torch.bool)] * model.bottleneck_layers
    return kept


PROMISES = {
    "unet": _unet_promise,
    "unet_plusplus": _unet_plusplus_promise,
    "fc_densenet": _fc_densenet_promise,
}


def _entry(t: torch.Tensor) -> tuple[int, tuple[int, ...], torch.dtype]:
    """``(channels, spatial size, dtype)`` of ``t``'s whole storage (a view's base buffer)."""
    spatial = tuple(int(s) for s in t.shape[2:])
    per_channel = int(t.shape[0]) * math.prod(spatial) * t.element_size()
    return t.untyped_storage().nbytes() // per_channel, spatial, t.dtype


def _saved_activations(model: nn.Module, x: torch.Tensor) -> Saved:
    """:func:`_entry` of each distinct storage of rank > 2 that autograd keeps after
    ``model(x)``, parameters excluded."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, tuple[int, tuple[int, ...], torch.dtype]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in parameters and t.dim() > 2:
            kept[t.untyped_storage().data_ptr()] = _entry(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sorted(kept.values(), key=str)


@pytest.mark.parametrize("name", [n for n in MODELS if get_model_spec(n).family in PROMISES])
def test_engine_keeps_for_backward_what_it_promises(name: str) -> None:
    model = tiny(name).set_memory_efficient(True)
    x = tiny_input(model).requires_grad_()
    promised = PROMISES[get_model_spec(name).family](model, int(x.shape[-1]))
    assert _saved_activations(model, x) == sorted(promised, key=str)


@pytest.mark.parametrize("name", [n for n in MODELS if get_model_spec(n).family == "densenet"])
def test_dense_blocks_keep_their_buffer_and_bottlenecks_only(name: str) -> None:
    """DenseNet-BC's engine promise, per dense block: its buffer ``(N, C0 + L*k, *s)``
    and each layer's bottleneck output ``(N, bn_size * k, *s)`` (policy "keep"); the
    stem, transitions and head around the blocks are plain autograd."""
    model = tiny(name).set_memory_efficient(True)
    kept: dict[int, tuple[int, tuple[int, ...], torch.dtype]] = {}
    promised: Saved = []
    hooks: list[Any] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, nn.Parameter) and t.dim() > 2:
            kept[t.untyped_storage().data_ptr()] = _entry(t)
        return t

    def enter(block: nn.ModuleDict, args: tuple[torch.Tensor, ...]) -> None:
        hooks.append(torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t))
        hooks[-1].__enter__()
        x, layers = args[0], list(block.values())
        spatial = tuple(int(s) for s in x.shape[2:])
        growth = sum(layer.conv2.out_channels for layer in layers)
        promised.append((int(x.shape[1]) + growth, spatial, x.dtype))
        promised.extend((layer.conv1.out_channels, spatial, x.dtype) for layer in layers)

    blocks = [m for m in model.modules() if type(m).__name__ == "_DenseBlock"]
    for block in blocks:
        block.register_forward_pre_hook(enter)
        block.register_forward_hook(lambda *_: hooks.pop().__exit__(None, None, None))
    model(tiny_input(model).requires_grad_())
    assert len(blocks) >= 2 and sorted(kept.values(), key=str) == sorted(promised, key=str)
