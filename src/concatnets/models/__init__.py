"""Architectures: the DenseNet, U-Net and FC-DenseNet families."""

from __future__ import annotations

from concatnets.models._registry import (
    ModelSpec,
    create_model,
    get_model_spec,
    list_models,
    register_model,
)
from concatnets.models.fc_densenet import FCDenseNet

__all__ = [
    "FCDenseNet",
    "ModelSpec",
    "create_model",
    "get_model_spec",
    "list_models",
    "register_model",
]
