"""Old DenseNet weight files whose layer keys read ``norm.1`` where the model says ``norm1``.

DenseNet weights published before torchvision 0.3 (and the hub files made from them)
name a dense layer's modules ``norm.1``, ``relu.1``, ``conv.1``, ``norm.2``, ...
(``nn.Sequential.add_module("norm.1", ...)`` was allowed then); today's torchvision,
timm and this package's DenseNets name them ``norm1``, ``conv1``, ... . The tensors are
the same, so renaming the keys is all it takes.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping

from torch import Tensor

__all__ = ["rename_legacy_densenet_keys"]

# ``...denselayerN.norm.1.weight`` -> ``...denselayerN.norm1.weight``
_LEGACY = re.compile(
    r"^(?P<layer>.*denselayer\d+\.(?:norm|relu|conv))\.(?P<index>[12])"
    r"\.(?P<tensor>weight|bias|running_mean|running_var|num_batches_tracked)$"
)


def rename_legacy_densenet_keys(
    weights: Mapping[str, Tensor], model_keys: Collection[str]
) -> dict[str, Tensor]:
    """``weights`` with every old-style dense-layer key the model lacks renamed to the
    new-style key it has; every other key is kept as it is.

    Args:
        weights: A state dict read from a file.
        model_keys: The keys of the state dict of the model that will load it.
    """
    renamed: dict[str, Tensor] = {}
    for key, tensor in weights.items():
        match = _LEGACY.match(key)
        if match is not None and key not in model_keys:
            new = f"{match['layer']}{match['index']}.{match['tensor']}"
            if new in model_keys and new not in weights:
                key = new
        renamed[key] = tensor
    return renamed
