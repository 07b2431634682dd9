"""Training settings: one typed dataclass, filled from defaults, a config file, then flags.

Config files are TOML, YAML or JSON with the same keys as :class:`TrainConfig` (dashes
or underscores), e.g.::

    model = "unet_small"
    data = "path/to/folder"
    epochs = 30
    [model_args]
    features = 16

Every run writes its fully resolved settings to ``config.json`` in its run folder; that
file is itself a valid ``--config``.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from concatnets.training.checkpoint import write_atomically

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "CONFIG_SUFFIXES",
    "TrainConfig",
    "apply_settings",
    "config_to_dict",
    "load_config_file",
    "model_arg_type",
    "parse_model_arg",
    "validate_config",
    "write_config",
]

CONFIG_SUFFIXES: tuple[str, ...] = (".toml", ".yaml", ".yml", ".json")
# Values a settings file may expand to (YAML aliases counted each time they are used): a
# real config holds a few dozen; an alias bomb ("billion laughs") holds billions.
MAX_CONFIG_VALUES = 10_000


@dataclass
class TrainConfig:
    """Everything a training run depends on."""

    # --- model ---
    model: str = "unet_small"  # registry name, see `concatnets models`
    model_args: dict[str, Any] = field(default_factory=dict)  # extra builder kwargs
    memory_efficient: bool | None = None  # None: the model's default
    # --- data ---
    data: str = "builtin:cells"  # builtin:cells, builtin:shapes or a folder
    val_data: str | None = None  # separate validation folder; else split off `data`
    num_images: int = 64  # images in a built-in dataset
    image_size: int | None = None  # side of built-in images (64 cells, 32 shapes)
    val_fraction: float = 0.2  # share of `data` held out for validation
    mask_values: str | None = None  # e.g. "0:0,255:1"; None: auto (0/255 -> 0/1)
    size_policy: str | None = None  # resize, pad or crop; needed for mixed sizes
    patch_size: int | None = None  # target side for size_policy
    normalization: str = "dataset"  # dataset: training split's channel stats; image; unit
    normalization_statistics: dict[str, Any] | None = None  # dataset's; None: computed
    augment: str = "flip,rot90,elastic"  # comma list from flip, rot90, elastic; or none
    elastic_sigma: float = 10.0  # displacement std in px (U-Net paper: 10)
    elastic_probability: float = 0.5  # share of training samples deformed
    # --- loss ---
    loss: str = "auto"  # auto (ce_dice / ce), ce, dice, ce_dice, weighted_ce
    border_w0: float = 10.0  # weighted_ce border weight w0 (paper: 10)
    border_sigma: float = 5.0  # weighted_ce border width sigma in px (paper: 5)
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    # --- optimization ---
    optimizer: str = "adam"  # sgd, adam, adamw
    lr: float = 1e-3  # learning rate
    weight_decay: float | None = None  # None: 0 (sgd, adam), 0.01 (adamw)
    momentum: float = 0.9  # sgd momentum (Nesterov)
    schedule: str = "cosine"  # constant, cosine, step (per epoch)
    step_size: int = 30  # epochs between decays of `step`
    gamma: float = 0.1  # decay factor of `step`
    epochs: int = 10
    batch_size: int = 8
    bf16: bool = False  # bfloat16 autocast
    sync_batchnorm: bool = False  # SyncBatchNorm across torchrun processes (GPUs only)
    init_weights: str | None = None  # start from these weights (checkpoint, .safetensors, .pth)
    # --- run ---
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    workers: int | None = None  # DataLoader workers; None: 0 on CPU, 4 on GPU
    seed: int = 0  # seeds data generation, split, order, augmentation, init
    deterministic: bool = False  # deterministic GPU kernels (CPU runs are deterministic anyway)
    output: str | None = None  # run folder; None: runs/<model>-<time>
    keep_epochs: int = 0  # also keep the last N per-epoch checkpoints (epoch-NNNN)
    overlays: int = 4  # validation overlay PNGs written at the end
    progress: bool = True  # tqdm progress bars, shown when stderr is a terminal


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def parse_model_arg(text: str) -> tuple[str, Any]:
    """Parse ``KEY=VALUE`` with a YAML value: ``depth=2``, ``padding=valid``, ``x=[1,2]``.

    >>> parse_model_arg("features=8")
    ('features', 8)

    Args:
        text: The flag value.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--model-arg {text!r} is not KEY=VALUE; write e.g. --model-arg depth=3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if _expanded_size(value, MAX_CONFIG_VALUES) > MAX_CONFIG_VALUES:
        raise ValueError(
            f"--model-arg {key.strip()} expands to more than {MAX_CONFIG_VALUES:,} values "
            "(YAML aliases); write the value out"
        )
    return key.strip(), value


def model_arg_type(text: str) -> tuple[str, Any]:
    """:func:`parse_model_arg` as an argparse ``type``: a bad flag becomes a usage error."""
    try:
        return parse_model_arg(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML, YAML or JSON config file into a dict.

    Args:
        path: The file.
    """
    path = Path(path)
    if path.suffix.lower() not in CONFIG_SUFFIXES:
        raise ValueError(
            f"--config {path}: unknown file type {path.suffix!r}; use {', '.join(CONFIG_SUFFIXES)}"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"--config {path} does not exist; check the path") from None
    try:
        if path.suffix.lower() == ".toml":
            values = tomllib.loads(text)
        elif path.suffix.lower() == ".json":
            values = json.loads(text)
        else:
            values = yaml.safe_load(text) or {}
    except RecursionError:
        raise ValueError(
            f"--config {path} nests its values too deeply to read; a settings file is a flat "
            "list of key = value settings"
        ) from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        reason = str(exc).splitlines()[0]
        raise ValueError(f"--config {path} is not valid {path.suffix[1:]}: {reason}") from None
    if not isinstance(values, dict):
        raise ValueError(f"--config {path} must hold key = value settings at the top level")
    if _expanded_size(values, MAX_CONFIG_VALUES) > MAX_CONFIG_VALUES:
        raise ValueError(
            f"--config {path} expands to more than {MAX_CONFIG_VALUES:,} values (YAML "
            "aliases repeat what they name each time they are used); a settings file holds "
            "a few dozen: remove the aliases"
        )
    return values


def _expanded_size(value: Any, limit: int) -> int:
    """How many values ``value`` holds with shared (aliased) parts counted at each use.

    Stops counting once past ``limit``, so a structure that would expand to billions of
    values is measured in about ``limit`` steps (and without recursion).
    """
    count = 0
    pending = [value]
    while pending and count <= limit:
        item = pending.pop()
        count += 1
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, (list, tuple)):
            pending.extend(item)
    return count


def _type_name(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if args:
        return " or ".join(_type_name(a) for a in args) + (
            " or null" if type(None) in typing.get_args(hint) else ""
        )
    return getattr(hint, "__name__", str(hint))


def _coerce(key: str, value: Any, hint: Any, source: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(key, value, option, source)
            except ValueError as exc:
                errors.append(exc)
        raise errors[0]
    expected = origin or hint
    ok = False
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif expected is str:
        if key == "augment" and isinstance(value, list):
            value = ",".join(str(v) for v in value) or "none"
        ok = isinstance(value, str)
    elif expected is dict:
        ok = isinstance(value, dict)
    if not ok:
        raise ValueError(f"{source}: {key} must be {_type_name(hint)}, got {value!r}")
    return value


def apply_settings(config: TrainConfig, values: Mapping[str, Any], source: str) -> TrainConfig:
    """Return ``config`` with ``values`` applied, each checked against its field's type.

    ``model_args`` is merged key by key, so a flag can change one builder argument that
    a config file set.

    Args:
        config: Settings so far.
        values: New settings; keys may use dashes.
        source: Where they come from, for error messages (``'--config x.toml'``).
    """
    hints = typing.get_type_hints(TrainConfig)
    updates: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = str(raw_key).replace("-", "_")
        if key not in _FIELDS:
            close = difflib.get_close_matches(key, _FIELDS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"{source}: unknown setting {raw_key!r}{hint} "
                "(see `concatnets train --help` for all settings)"
            )
        coerced = _coerce(key, value, hints[key], source)
        if key == "model_args":
            coerced = {**config.model_args, **updates.get("model_args", {}), **coerced}
        updates[key] = coerced
    return dataclasses.replace(config, **updates)


# Whole-number settings: (lowest allowed value, an example).
_INT_RANGES: dict[str, tuple[int, str]] = {
    "num_images": (1, "--num-images 64"),
    "image_size": (1, "--image-size 64"),
    "patch_size": (1, "--patch-size 256"),
    "step_size": (1, "--step-size 30"),
    "epochs": (1, "--epochs 10"),
    "batch_size": (1, "--batch-size 8"),
    "workers": (0, "--workers 4"),
    "keep_epochs": (0, "--keep-epochs 3"),
    "overlays": (0, "--overlays 4"),
}
_FLOAT_RANGES: dict[str, tuple[float, float, bool, bool, str]] = {
    # name: (low, high, low allowed, high allowed, example)
    "val_fraction": (0.0, 1.0, True, False, "--val-fraction 0.2"),
    "elastic_sigma": (0.0, math.inf, True, False, "--elastic-sigma 10"),
    "elastic_probability": (0.0, 1.0, True, True, "--elastic-probability 0.5"),
    "border_w0": (0.0, math.inf, True, False, "--border-w0 10"),
    "border_sigma": (0.0, math.inf, False, False, "--border-sigma 5"),
    "label_smoothing": (0.0, 1.0, True, False, "--label-smoothing 0.1"),
    "lr": (0.0, math.inf, False, False, "--lr 1e-3"),
    "weight_decay": (0.0, math.inf, True, False, "--weight-decay 1e-4"),
    "momentum": (0.0, 1.0, True, False, "--momentum 0.9"),
    "gamma": (0.0, math.inf, False, False, "--gamma 0.1"),
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _interval(low: float, high: float, low_in: bool, high_in: bool) -> str:
    if math.isinf(high):
        return f"{'at least' if low_in else 'greater than'} {low:g}"
    return f"in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"


def validate_config(config: TrainConfig) -> None:
    """Refuse numeric settings out of range, naming the flag, before anything runs.

    Args:
        config: The resolved settings.

    Raises:
        ValueError: The first setting out of range (NaN and infinities included).
    """
    for name, (low, example) in _INT_RANGES.items():
        value = getattr(config, name)
        if value is not None and value < low:
            raise ValueError(f"{_flag(name)} {value} must be at least {low}; e.g. {example}")
    for name, (low, high, low_in, high_in, example) in _FLOAT_RANGES.items():
        value = getattr(config, name)
        if value is None:
            continue
        inside = (
            math.isfinite(value)
            and (value > low or (low_in and value == low))
            and (value < high or (high_in and value == high))
        )
        if not inside:
            raise ValueError(
                f"{_flag(name)} {value} must be a finite number "
                f"{_interval(low, high, low_in, high_in)}; e.g. {example}"
            )


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """The settings as a JSON-friendly dict (field order kept)."""
    return dataclasses.asdict(config)


def write_config(config: TrainConfig, path: str | Path) -> Path:
    """Write the resolved settings as JSON (loadable again with ``--config``).

    Args:
        config: The settings.
        path: Destination ``.json`` file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, (json.dumps(config_to_dict(config), indent=2) + "\n").encode("utf-8"))
    return path
