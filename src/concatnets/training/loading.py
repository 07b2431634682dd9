"""Loading a trained model back from a run folder or a checkpoint, ready for inference."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from concatnets.data.transforms import ChannelStatistics
from concatnets.models import create_model
from concatnets.training.checkpoint import CheckpointError, check_compatible, load_checkpoint
from concatnets.training.dimensions import model_spatial_dims

__all__ = ["TrainedModel", "load_trained_model", "resolve_checkpoint"]

_REQUIRED = ("architecture", "model_kwargs", "task", "class_names", "in_channels")


@dataclass
class TrainedModel:
    """A model in eval mode with the facts needed to feed it and read its output.

    Args:
        model: The model, on its device, in eval mode.
        metadata: The checkpoint's metadata (see :mod:`concatnets.training.runner`).
        checkpoint: The loaded checkpoint's JSON file.
    """

    model: nn.Module
    metadata: dict[str, Any]
    checkpoint: Path

    @property
    def task(self) -> str:
        """``'segmentation'`` or ``'classification'``."""
        return str(self.metadata["task"])

    @property
    def class_names(self) -> list[str]:
        """One name per class."""
        return list(self.metadata["class_names"])

    @property
    def in_channels(self) -> int:
        """Channels the model takes (1 or 3)."""
        return int(self.metadata["in_channels"])

    @property
    def architecture(self) -> str:
        """Registry name of the model."""
        return str(self.metadata["architecture"])

    @property
    def spatial_dims(self) -> int:
        """2 for a model of images, 3 for a model of volumes."""
        return model_spatial_dims(self.architecture, self.metadata["model_kwargs"])

    @property
    def normalization(self) -> str:
        """Input normalization used in training."""
        return str(self.metadata.get("normalization", "image"))

    @property
    def normalization_statistics(self) -> ChannelStatistics | None:
        """The training split's channel statistics (``'dataset'`` normalization), else None."""
        if self.normalization != "dataset":
            return None
        stored = self.metadata.get("normalization_statistics")
        if stored is None:
            raise CheckpointError(
                f"{self.checkpoint} was trained with normalization 'dataset' but holds no "
                "normalization_statistics; use a checkpoint written by `concatnets train`"
            )
        return ChannelStatistics.from_json(stored, str(self.checkpoint))

    @property
    def config(self) -> dict[str, Any]:
        """The training settings, as saved."""
        return dict(self.metadata.get("config", {}))


def resolve_checkpoint(path: str | Path, which: str = "best") -> Path:
    """The checkpoint JSON to load for ``path``.

    Args:
        path: A run folder (its ``best`` checkpoint, else ``last``), a checkpoint
            ``.json``, its weights file, or its stem.
        which: ``'best'`` or ``'last'`` for run folders.
    """
    path = Path(path)
    if path.is_dir():
        for name in (which, "last", "best"):
            candidate = path / f"{name}.json"
            if candidate.exists():
                return candidate
        raise FileNotFoundError(
            f"{path} holds no best.json or last.json; pass a run folder written by "
            "`concatnets train` or a checkpoint file"
        )
    if not path.exists() and not path.with_name(path.name + ".json").exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist; check the path")
    return path


def load_trained_model(
    path: str | Path, device: torch.device | str = "cpu", which: str = "best"
) -> TrainedModel:
    """Rebuild the model a run trained and load its weights.

    Args:
        path: Run folder or checkpoint (see :func:`resolve_checkpoint`).
        device: Where to put the model.
        which: ``'best'`` or ``'last'`` for run folders.
    """
    checkpoint = load_checkpoint(resolve_checkpoint(path, which))
    metadata = checkpoint.metadata
    missing = [key for key in _REQUIRED if key not in metadata]
    if missing:
        raise CheckpointError(
            f"checkpoint {checkpoint.path} lacks {', '.join(missing)} in its metadata; "
            "evaluate and predict need a checkpoint written by `concatnets train`"
        )
    model = create_model(metadata["architecture"], **metadata["model_kwargs"])
    check_compatible(checkpoint, model, metadata["architecture"])
    model.load_state_dict(checkpoint.model_state)
    model.to(device).eval()
    return TrainedModel(model, metadata, checkpoint.path)
