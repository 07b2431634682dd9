"""Old-style DenseNet keys (``norm.1``) are renamed to the model's (``norm1``), nothing else."""

from __future__ import annotations

import re

import torch

from concatnets.models import create_model
from concatnets.training.legacy_keys import rename_legacy_densenet_keys


def _legacy(key: str) -> str:
    return re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", key)


def test_old_hub_keys_load_strict_into_a_densenet():
    torch.manual_seed(0)
    source = create_model("densenet_bc", depth=16, growth_rate=4, memory_efficient=False)
    target = create_model("densenet_bc", depth=16, growth_rate=4, memory_efficient=False)
    old = {_legacy(k): v for k, v in source.state_dict().items()}
    assert "features.denseblock1.denselayer1.norm.1.running_mean" in old
    renamed = rename_legacy_densenet_keys(old, target.state_dict())
    assert list(renamed) == list(source.state_dict())
    target.load_state_dict(renamed, strict=True)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value, msg=key)


def test_keys_the_model_has_or_cannot_use_are_kept():
    model_keys = {"features.denselayer1.norm1.weight", "features.denselayer1.norm.1.bias"}
    weights = {
        "features.denselayer1.norm.1.weight": torch.ones(1),  # renamed: the model has norm1
        "features.denselayer1.norm.1.bias": torch.ones(1),  # kept: the model has it as is
        "features.denselayer1.conv.2.weight": torch.ones(1),  # kept: no conv2 in the model
        "classifier.weight": torch.ones(1),
    }
    assert list(rename_legacy_densenet_keys(weights, model_keys)) == [
        "features.denselayer1.norm1.weight",
        "features.denselayer1.norm.1.bias",
        "features.denselayer1.conv.2.weight",
        "classifier.weight",
    ]
