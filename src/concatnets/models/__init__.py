"""Architectures built on the memory engine: the DenseNet and U-Net families."""

from __future__ import annotations

from concatnets.models._registry import (
    ModelSpec,
    create_model,
    get_model_spec,
    list_models,
    register_model,
)

__all__ = ["ModelSpec", "create_model", "get_model_spec", "list_models", "register_model"]
