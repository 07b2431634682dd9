"""One benchmark configuration: what a child process builds and measures."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "AMP_DTYPES",
    "MODE_VALUES",
    "SOURCES",
    "TORCHVISION_MODES",
    "BenchConfig",
    "add_device_options",
    "add_model_options",
    "check_device",
    "comparison_key",
    "plain_text",
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

# --amp name -> torch dtype name, for torch.autocast(device_type, dtype=...).
AMP_DTYPES: dict[str, str] = {"bf16": "bfloat16", "fp16": "float16"}


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
        amp: ``bf16`` or ``fp16``: the forward and loss run under
            ``torch.autocast(device_type, dtype)``; ``None`` is float32. ``fp16`` needs
            a CUDA device.
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
    amp: str | None = None

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
        if self.amp is not None and self.amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {sorted(AMP_DTYPES)} or None, got {self.amp!r}")
        if self.amp == "fp16" and not self.device.startswith("cuda"):
            raise ValueError(
                "amp 'fp16' needs a CUDA device: float16 autocast on a CPU is not how "
                "models are trained there; use amp 'bf16' on CPU, or device 'cuda'"
            )
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
        config.amp,
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


def add_device_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--device`` and ``--amp``: where and in which precision every mode trains.

    They fill :attr:`BenchConfig.device` and :attr:`BenchConfig.amp`.
    """
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu (default), cuda or cuda:N; CUDA timings synchronize the device",
    )
    parser.add_argument(
        "--amp",
        choices=sorted(AMP_DTYPES),
        help="train under torch.autocast in bfloat16 or float16 (default: float32); "
        "fp16 needs --device cuda",
    )


def check_device(device: str, amp: str | None, command: str) -> None:
    """Exit with a one-line message when ``device`` or ``amp`` cannot run here."""
    if not (device == "cpu" or device == "cuda" or device.startswith("cuda:")):
        raise SystemExit(f"{command}: --device {device!r}: use cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit(
                f"{command}: --device {device}: no CUDA GPU is visible to torch "
                f"{torch.__version__} (torch.cuda.is_available() is False); use --device cpu"
            )
    if amp == "fp16" and not device.startswith("cuda"):
        raise SystemExit(
            f"{command}: --amp fp16 needs --device cuda (float16 autocast is a GPU "
            "format); on CPU use --amp bf16"
        )


def plain_text(docstring: str | None) -> str:
    """A reST docstring as ``--help`` text: inline-literal backticks removed."""
    return (docstring or "").replace("``", "").replace(":mod:", "").replace(":func:", "")
