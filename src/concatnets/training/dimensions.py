"""Matching a model's spatial dimensionality (2-D images, 3-D volumes) to its data.

A 3-D model fed 2-D images (or the reverse) fails deep inside the first convolution;
these checks stop before anything is built, naming the data and models that fit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from concatnets.data.sources import LabelledData, describe_dims
from concatnets.models import get_model_spec

__all__ = ["check_model_fits_data", "dims_mismatch_message", "model_spatial_dims"]

_DATA_ADVICE = {
    ("segmentation", 2): "use --data builtin:cells or a folder of 2-D images",
    ("segmentation", 3): "use --data builtin:cells3d or a folder of .npy volumes (D, H, W)",
    ("classification", 2): "use --data builtin:shapes or class folders of 2-D images",
    ("classification", 3): "use class folders of .npy volumes (D, H, W)",
}
_SEGMENTATION_MODEL = {2: "unet_small", 3: "unet3d"}


def model_spatial_dims(name: str, model_args: Mapping[str, Any] | None = None) -> int:
    """2 or 3: the registry defaults of ``name`` with ``model_args`` applied.

    Args:
        name: Registry name.
        model_args: Builder overrides (``spatial_dims`` among them, if set).
    """
    settings = {**get_model_spec(name).defaults, **dict(model_args or {})}
    return int(settings.get("spatial_dims", 2))


def dims_mismatch_message(model: str, model_dims: int, source: str, data_dims: int) -> str:
    """The one-line error for ``model`` (``model_dims``) given ``source`` (``data_dims``)."""
    task = get_model_spec(model).task
    if task == "segmentation":
        other = f"a {data_dims}-D model such as {_SEGMENTATION_MODEL[data_dims]}"
    else:
        other = f"--model-arg spatial_dims={data_dims}"
    return (
        f"{model} takes {describe_dims(model_dims)} but {source} has "
        f"{describe_dims(data_dims)}; {_DATA_ADVICE[task, model_dims]}, or {other}"
    )


def check_model_fits_data(model: str, model_dims: int, data: LabelledData) -> None:
    """Raise ``ValueError`` when ``data`` has another dimensionality than ``model``.

    Args:
        model: Registry name (for the message).
        model_dims: The model's spatial dims (see :func:`model_spatial_dims`).
        data: The opened dataset.
    """
    if data.spatial_dims != model_dims:
        raise ValueError(dims_mismatch_message(model, model_dims, data.address, data.spatial_dims))
