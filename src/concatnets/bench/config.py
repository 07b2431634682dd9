"""One benchmark configuration: what a child process builds and measures."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "MODE_VALUES",
    "SOURCES",
    "TORCHVISION_MODES",
    "BenchConfig",
    "add_model_options",
    "comparison_key",
]

# Bench mode name -> the model's ``memory_efficient`` argument.
MODE_VALUES: dict[str, bool | str] = {
    "naive": False,
    "checkpoint": "checkpoint",
    "efficient": True,
}

# torchvision's densenet121 takes a bool: True is its torch.utils.checkpoint technique.
TORCHVISION_MODES: dict[str, bool] = {"tv-naive": False, "tv-checkpoint": True}

SOURCES = ("concatnets", "torchvision")


@dataclass(frozen=True)
class BenchConfig:
    """A single (model, mode, batch, image size) measurement.

    Args:
        model: Registry name (``concatnets.create_model``) or torchvision builder name.
        mode: ``naive``, ``checkpoint``, ``efficient``, ``tv-naive`` or ``tv-checkpoint``.
        batch: Batch size of the random training batch.
        image_size: Side of the square (or cubic, for 3-D models) random input.
        steps: Timed training steps after the warm-up.
        warmup: Untimed training steps before the timed ones (their memory still counts).
        device: ``cpu`` or a CUDA device such as ``cuda`` / ``cuda:0``.
        threads: ``torch.set_num_threads`` value; ``None`` keeps torch's default.
        model_kwargs: Extra keyword arguments for the model builder (e.g. ``depth``).
        group: Report section: ``targets``, ``sweep``, ``deep`` or ``custom``.
        label: Row name in reports; defaults to ``model``.
        depth: Network depth for depth-sweep plots; ``None`` outside sweeps.
        source: ``concatnets`` (registry) or ``torchvision``.
        builder: Optional ``"module:callable"`` used instead of the registry, for
            benchmarking a model defined outside concatnets.
        channels_last: Convert the model and the input to the channels-last memory
            format, as a plain PyTorch user can (``model.to(memory_format=...)``); a
            fairer reference for the efficient U-Net, which computes in channels-last.
    """

    model: str
    mode: str
    batch: int
    image_size: int
    steps: int = 3
    warmup: int = 1
    device: str = "cpu"
    threads: int | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    group: str = "custom"
    label: str = ""
    depth: int | None = None
    source: str = "concatnets"
    builder: str | None = None
    channels_last: bool = False

    def __post_init__(self) -> None:
        known = MODE_VALUES if self.source == "concatnets" else TORCHVISION_MODES
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if self.mode not in known:
            raise ValueError(
                f"mode {self.mode!r} is not valid for source {self.source!r}; "
                f"use one of {sorted(known)}"
            )
        if self.batch < 1 or self.image_size < 1:
            raise ValueError("batch and image_size must be positive integers")
        if self.steps < 1 or self.warmup < 0:
            raise ValueError("steps must be >= 1 and warmup >= 0")
        if not self.label:
            suffix = " (channels-last)" if self.channels_last else ""
            object.__setattr__(self, "label", self.model + suffix)

    @property
    def memory_efficient(self) -> bool | str:
        """The value passed as the model's ``memory_efficient`` argument."""
        if self.source == "torchvision":
            return TORCHVISION_MODES[self.mode]
        return MODE_VALUES[self.mode]

    def to_json(self) -> str:
        """Serialise for the child process's command line."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BenchConfig:
        """Inverse of :meth:`to_json`."""
        return cls(**json.loads(text))


def comparison_key(config: BenchConfig) -> tuple[Any, ...]:
    """Configurations sharing this key are compared to the same naive row.

    torchvision's densenet121 shares the key of our densenet121, so its rows are
    reported against our naive reference of the same architecture and batch.
    """
    kwargs = json.dumps(config.model_kwargs, sort_keys=True)
    return (
        config.model,
        config.builder,
        kwargs,
        config.batch,
        config.image_size,
        config.device,
        config.channels_last,
    )


def add_model_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--model-arg`` and ``--channels-last``: how every mode's model is built.

    They fill :attr:`BenchConfig.model_kwargs` and :attr:`BenchConfig.channels_last`.
    """
    from concatnets.training.config import model_arg_type  # CLI only: children stay light

    parser.add_argument(
        "--model-arg",
        dest="model_args",
        action="append",
        type=model_arg_type,
        default=[],
        metavar="KEY=VALUE",
        help="builder argument for every model, repeatable, e.g. "
        "--model-arg normalization=instance",
    )
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="model and input in the channels-last memory format, in every mode",
    )
