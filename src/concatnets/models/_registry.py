"""Model registry: variants are data, builders are functions, names are unique."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

__all__ = ["ModelSpec", "create_model", "get_model_spec", "list_models", "register_model"]

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelSpec:
    """One registered variant.

    Args:
        name: Registry name, e.g. ``"densenet121"``.
        builder: Callable that builds the model from keyword arguments.
        defaults: The variant's settings, passed to ``builder`` before user overrides.
        family: ``"densenet"``, ``"unet"``, ``"fc_densenet"`` or ``"unet_plusplus"``; tells
            the CLI which task a model solves.
        task: ``"classification"`` or ``"segmentation"``.
        description: One line for ``concatnets models``.
    """

    name: str
    builder: Builder
    defaults: dict[str, Any] = field(default_factory=dict)
    family: str = ""
    task: str = "classification"
    description: str = ""

    def build(self, **overrides: Any) -> nn.Module:
        config = {**self.defaults, **overrides}
        return self.builder(**config)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    builder: Builder,
    *,
    defaults: dict[str, Any] | None = None,
    family: str = "",
    task: str = "classification",
    description: str = "",
) -> ModelSpec:
    """Register ``name``; a second registration of the same name is an error."""
    if name in _REGISTRY:
        raise ValueError(f"model name {name!r} is already registered; pick another name")
    spec = ModelSpec(name, builder, dict(defaults or {}), family, task, description)
    _REGISTRY[name] = spec
    return spec


def _ensure_builtin_models_loaded() -> None:
    # Importing the family modules registers their variants.
    from concatnets.models import densenet, fc_densenet, unet, unet_plusplus  # noqa: F401


def get_model_spec(name: str) -> ModelSpec:
    """Return the spec of ``name`` or raise a ``KeyError`` listing close names.

    ``LIBRARY:NAME`` (``torchvision:densenet121``, ``monai:BasicUNet``, ...) names a
    third-party model (:mod:`concatnets.models.external`).
    """
    _ensure_builtin_models_loaded()
    if ":" in name and name not in _REGISTRY:
        from concatnets.models.external import external_model_spec

        return external_model_spec(name)
    try:
        return _REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(
            f"unknown model {name!r}.{hint} Run `concatnets models` to list all models."
        ) from None


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build the registered model ``name``; keyword overrides replace its defaults.

    >>> model = create_model("densenet_bc_100", num_classes=10)
    >>> sum(p.numel() for p in model.parameters()) > 700_000
    True
    """
    return get_model_spec(name).build(**overrides)


def list_models(family: str | None = None) -> list[str]:
    """Sorted names of all registered models, optionally of one family."""
    _ensure_builtin_models_loaded()
    return sorted(n for n, s in _REGISTRY.items() if family is None or s.family == family)
