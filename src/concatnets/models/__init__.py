"""Architectures: the DenseNet, U-Net, FC-DenseNet and UNet++ families."""

from __future__ import annotations

from concatnets.models._registry import (
    ModelSpec,
    create_model,
    get_model_spec,
    list_models,
    register_model,
)
from concatnets.models.fc_densenet import FCDenseNet
from concatnets.models.unet_plusplus import UNetPlusPlus

__all__ = [
    "FCDenseNet",
    "ModelSpec",
    "UNetPlusPlus",
    "create_model",
    "get_model_spec",
    "list_models",
    "register_model",
]
