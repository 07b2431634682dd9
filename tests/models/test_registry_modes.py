"""Every registered model, in a tiny configuration, in every memory mode it offers.

The engine (``memory_efficient=True``) equals the naive model in float64 (outputs,
input and parameter gradients, running statistics); state dicts load strictly across
modes; ``set_memory_efficient`` switches back and forth at any time.
"""

from __future__ import annotations

import copy
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
