"""Crash-safe checkpoints in safetensors + JSON; loading never executes code.

A checkpoint named ``last`` in a run folder is two files:

- ``last-<hash16>.safetensors``: every tensor (model weights under ``model.<key>``,
  optimizer tensors under ``optimizer.<path>``, scheduler tensors under
  ``scheduler.<path>``, extra tensors such as RNG states under ``extra.<key>``).
  ``<hash16>`` is the start of the file's SHA-256, so a new save never overwrites the file
  the current JSON names.
- ``last.json``: the commit record. It names the weights file, its SHA-256 and size, and
  holds the metadata (architecture, config, epoch, step, best metric, data position) and
  the non-tensor parts of the optimizer and scheduler state dicts.

Commit protocol, each file written to a temporary file in the same folder, flushed,
``fsync``-ed, renamed with ``os.replace`` and followed by an ``fsync`` of the folder:

1. write the new weights file under its new name; ``last.json`` still names the old one;
2. replace ``last.json`` (the commit point: from here on the new pair is the checkpoint);
3. delete the old weights file and orphans of earlier interrupted saves.

A crash (or a full disk) before step 2 leaves the old ``last.json`` and the weights file it
names untouched; a crash after step 2 leaves at worst an unreferenced file that the next
save deletes. Only one process may save a given name at a time (rank 0 under DDP).

Tensors are copied to contiguous CPU tensors before writing, so views, non-contiguous
tensors and tensors sharing storage (tied weights) are stored as independent values.
JSON values keep their Python types: tuples, dicts with non-string keys and non-finite
floats are tagged so ``torch.optim`` state dicts round-trip exactly.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import pickle  # only for the exception torch.load raises when it refuses a file
import re
import tempfile
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import safetensors
import safetensors.torch
import torch
from torch import Tensor, nn

from concatnets._version import __version__
from concatnets.training.distributed import unwrap_model

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "check_compatible",
    "check_optimizer_state",
    "load_checkpoint",
    "load_model_weights",
    "read_checkpoint_metadata",
    "save_checkpoint",
    "write_atomically",
]

FORMAT_VERSION = 1
_FORMAT_NAME = "concatnets.checkpoint"
_DEFAULT_RUN_CHECKPOINT = "last"
_HASH_CHARS = 16
_MODEL, _OPTIMIZER, _SCHEDULER, _EXTRA = "model.", "optimizer.", "scheduler.", "extra."
# Tags for JSON values plain JSON cannot express; a dict that could be mistaken for a tag
# is itself stored in the tagged "__dict__" form, so decoding is unambiguous.
_TENSOR_TAG, _TUPLE_TAG, _DICT_TAG, _FLOAT_TAG = "__tensor__", "__tuple__", "__dict__", "__float__"
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_MAX_LISTED = 5


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt, unsafe, or does not fit a model."""


@dataclass
class Checkpoint:
    """Everything :func:`load_checkpoint` read back.

    Args:
        model_state: Model weights, keys as in ``model.state_dict()``.
        optimizer_state: ``optimizer.state_dict()`` as saved, or ``None``.
        scheduler_state: ``scheduler.state_dict()`` as saved, or ``None``.
        extra_tensors: Extra tensors as saved (e.g. RNG states).
        metadata: The metadata dict as saved.
        path: The JSON file that was loaded.
    """

    model_state: dict[str, Tensor]
    optimizer_state: dict[str, Any] | None
    scheduler_state: dict[str, Any] | None
    extra_tensors: dict[str, Tensor]
    metadata: dict[str, Any]
    path: Path = field(default_factory=Path)


def save_checkpoint(
    directory: str | Path,
    name: str,
    *,
    model_state: Mapping[str, Tensor],
    optimizer_state: dict[str, Any] | None = None,
    scheduler_state: dict[str, Any] | None = None,
    extra_tensors: Mapping[str, Tensor] | None = None,
    metadata: dict[str, Any],
) -> Path:
    """Atomically write checkpoint ``name`` into ``directory`` (protocol in the module notes).

    Args:
        directory: Run folder; created if missing.
        name: Checkpoint name such as ``"last"`` or ``"best"``; no path separators.
        model_state: ``unwrap_model(model).state_dict()``.
        optimizer_state: ``optimizer.state_dict()``.
        scheduler_state: ``scheduler.state_dict()``.
        extra_tensors: Further tensors, e.g. ``capture_rng_state()``.
        metadata: JSON-friendly facts about the run: ``architecture``, ``config``,
            ``epoch``, ``step``, ``best_metric``, data-order position. Tensors belong in
            ``extra_tensors``.

    Returns:
        The path of the written JSON file.
    """
    _check_name(name)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / f"{name}.json"

    tensors: dict[str, Tensor] = {}
    _add_tensors(tensors, _MODEL, model_state, "model_state")
    _add_tensors(tensors, _EXTRA, extra_tensors or {}, "extra_tensors")
    record: dict[str, Any] = {
        "format": _FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "concatnets_version": __version__,
        "torch_version": torch.__version__,
        "metadata": _encode(metadata, "metadata", None),
        "optimizer": _encode_state(optimizer_state, _OPTIMIZER, tensors),
        "scheduler": _encode_state(scheduler_state, _SCHEDULER, tensors),
    }
    weights = safetensors.torch.save(
        tensors, metadata={"format": "pt", _FORMAT_NAME: str(FORMAT_VERSION)}
    )
    digest = hashlib.sha256(weights).hexdigest()
    weights_path = directory / f"{name}-{digest[:_HASH_CHARS]}.safetensors"
    record.update(
        weights_file=weights_path.name,
        weights_sha256=digest,
        weights_bytes=len(weights),
        tensor_order=list(tensors),  # safetensors sorts keys; state dicts are ordered
    )
    encoded_record = json.dumps(record, indent=2, allow_nan=False).encode("utf-8")

    previous_weights = _referenced_weights(json_path)
    weights_existed = weights_path.exists()
    try:
        _write_atomically(weights_path, weights)
        _write_atomically(json_path, encoded_record)  # commit point
    except BaseException as exc:
        # The old JSON and the weights it names were never touched; drop only what is new.
        if not weights_existed and weights_path != previous_weights:
            _remove_quietly(weights_path)
        if isinstance(exc, OSError):
            raise _save_error(exc, json_path, previous_weights) from exc
        raise
    _remove_stale_files(directory, name, keep=weights_path)
    return json_path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` and verify its hash.

    Args:
        path: The ``.json`` file, its stem (``runs/x/last``), its weights file, or a run
            folder (which loads ``last.json``).
    """
    json_path = _resolve_json(Path(path))
    record = _read_record(json_path)
    try:
        tensors = _read_weights(json_path, record)
    except FileNotFoundError:
        # A concurrent save may have committed a new pair and removed ours; reread once.
        record = _read_record(json_path)
        try:
            tensors = _read_weights(json_path, record)
        except FileNotFoundError as exc:
            raise _corrupt(
                json_path, f"the weights file {record['weights_file']} it names is missing"
            ) from exc

    order = record.get("tensor_order")
    ordered_keys = order if isinstance(order, list) and set(order) == set(tensors) else tensors
    groups: dict[str, dict[str, Tensor]] = {_MODEL: {}, _EXTRA: {}}
    for key in ordered_keys:
        tensor = tensors[key]
        for prefix, group in groups.items():
            if key.startswith(prefix):
                group[key[len(prefix) :]] = tensor
    try:
        metadata = _decode(record["metadata"], {})
        optimizer_state = _decode(record.get("optimizer"), tensors)
        scheduler_state = _decode(record.get("scheduler"), tensors)
    except RecursionError:
        raise _corrupt(json_path, "its contents are nested too deeply") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise _corrupt(json_path, f"its contents are malformed ({exc})") from exc
    if not isinstance(metadata, dict):
        raise _corrupt(json_path, f"its metadata is a {type(metadata).__name__}, not a mapping")
    for name, state in (("optimizer", optimizer_state), ("scheduler", scheduler_state)):
        if state is not None and not isinstance(state, dict):
            raise _corrupt(
                json_path, f"its {name} state is a {type(state).__name__}, not a mapping"
            )
    return Checkpoint(
        model_state=groups[_MODEL],
        optimizer_state=optimizer_state,
        scheduler_state=scheduler_state,
        extra_tensors=groups[_EXTRA],
        metadata=metadata,
        path=json_path,
    )


def read_checkpoint_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a checkpoint, read from its JSON record alone (weights untouched).

    Args:
        path: As for :func:`load_checkpoint`.
    """
    json_path = _resolve_json(Path(path))
    record = _read_record(json_path)
    try:
        metadata = _decode(record["metadata"], {})
    except RecursionError:
        raise _corrupt(json_path, "its metadata is nested too deeply") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise _corrupt(json_path, f"its metadata is malformed ({exc})") from exc
    if not isinstance(metadata, dict):
        raise _corrupt(json_path, f"its metadata is a {type(metadata).__name__}, not a mapping")
    return metadata


def check_compatible(checkpoint: Checkpoint, model: nn.Module, architecture: str) -> None:
    """Raise :class:`CheckpointError` listing every way ``checkpoint`` does not fit ``model``.

    Args:
        checkpoint: A loaded checkpoint.
        model: The model about to receive the weights (DDP wrappers are looked through).
        architecture: The registry name ``model`` was built from.
    """
    problems = []
    saved_architecture = checkpoint.metadata.get("architecture")
    if saved_architecture is not None and saved_architecture != architecture:
        problems.append(f"it was saved from {saved_architecture!r}")
    expected = unwrap_model(model).state_dict()
    saved = checkpoint.model_state
    missing = [key for key in expected if key not in saved]
    unexpected = [key for key in saved if key not in expected]
    mismatched = [
        f"{key} {tuple(saved[key].shape)} in checkpoint vs {tuple(value.shape)} in model"
        for key, value in expected.items()
        if key in saved and saved[key].shape != value.shape
    ]
    # Floating weights stored as integers (or the reverse) lost their values: never cast.
    wrong_kind = [
        f"{key} {_dtype_name(saved[key])} in checkpoint vs {_dtype_name(value)} in model"
        for key, value in expected.items()
        if key in saved and saved[key].is_floating_point() != value.is_floating_point()
    ]
    for label, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", mismatched),
        ("dtype mismatches", wrong_kind),
    ):
        if items:
            problems.append(f"{len(items)} {label}: {_shorten(items)}")
    if problems:
        raise CheckpointError(
            f"checkpoint {checkpoint.path} does not fit model {architecture!r}: "
            + "; ".join(problems)
            + "; build the model with the checkpoint's architecture and config "
            "(its metadata 'architecture' and 'config') or train from scratch"
        )


def check_optimizer_state(
    checkpoint: Checkpoint, optimizer: torch.optim.Optimizer, model: nn.Module | None = None
) -> None:
    """Raise :class:`CheckpointError` naming the first way the saved optimizer state does
    not fit ``optimizer``: groups, parameters, tensor shapes and dtypes, hyperparameters.

    Args:
        checkpoint: A loaded checkpoint.
        optimizer: The optimizer about to receive ``checkpoint.optimizer_state``.
        model: The model the optimizer trains, to name parameters in the message.
    """
    state = checkpoint.optimizer_state
    if state is None:
        return
    problem = _optimizer_mismatch(state, optimizer, model)
    if problem is not None:
        raise CheckpointError(
            f"checkpoint {checkpoint.path} does not fit the optimizer: {problem}; it was "
            "damaged, edited or saved for another model; resume from another copy of the run "
            "folder, or start a new run with --init-weights (weights only)"
        )


def _dtype_name(tensor: Tensor) -> str:
    return str(tensor.dtype).replace("torch.", "")


def _finite_numbers(value: Any) -> bool:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return True
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    if isinstance(value, (tuple, list)):
        return all(_finite_numbers(item) for item in value)
    return not isinstance(value, Tensor) or bool(torch.isfinite(value).all())


def _optimizer_mismatch(
    state: Any, optimizer: torch.optim.Optimizer, model: nn.Module | None
) -> str | None:
    if not isinstance(state, dict) or not isinstance(state.get("param_groups"), list):
        return "its optimizer state has no list of parameter groups"
    saved_groups, groups = state["param_groups"], optimizer.param_groups
    if len(saved_groups) != len(groups):
        return f"{len(saved_groups)} parameter group(s) in checkpoint vs {len(groups)} now"
    names = {id(p): n for n, p in model.named_parameters()} if model is not None else {}
    parameters: dict[Any, Tensor] = {}
    for index, (saved, group) in enumerate(zip(saved_groups, groups, strict=True)):
        if not isinstance(saved, dict) or not isinstance(saved.get("params"), list):
            return f"parameter group {index} is malformed"
        if len(saved["params"]) != len(group["params"]):
            return (
                f"parameter group {index} holds {len(saved['params'])} parameters in "
                f"checkpoint vs {len(group['params'])} now"
            )
        for key, value in saved.items():
            if key != "params" and not _finite_numbers(value):
                return f"parameter group {index} has {key} = {value!r}, not a finite number"
        parameters.update(zip(saved["params"], group["params"], strict=True))
    per_parameter = state.get("state", {})
    if not isinstance(per_parameter, dict):
        return "its per-parameter state is not a mapping"
    for key, entry in per_parameter.items():
        if key not in parameters:
            return f"it holds state for parameter {key!r}, which no parameter group lists"
        parameter = parameters[key]
        label = names.get(id(parameter), f"parameter {key}")
        if not isinstance(entry, dict):
            return f"the state of {label} is not a mapping"
        for name, value in entry.items():
            if not isinstance(value, Tensor):
                if not _finite_numbers(value):
                    return f"{name} of {label} is {value!r}, not a finite number"
                continue
            if name == "step":
                if value.numel() != 1:
                    return f"step of {label} has shape {tuple(value.shape)}, not a scalar"
                continue
            if value.shape != parameter.shape:
                return (
                    f"{name} of {label} has shape {tuple(value.shape)} in checkpoint vs "
                    f"{tuple(parameter.shape)} for the parameter"
                )
            if value.is_floating_point() != parameter.is_floating_point():
                return (
                    f"{name} of {label} is {_dtype_name(value)} in checkpoint vs "
                    f"{_dtype_name(parameter)} for the parameter"
                )
    return None


def load_model_weights(path: str | Path) -> dict[str, Tensor]:
    """Read model weights without running code from the file.

    Accepts a concatnets checkpoint (JSON, stem, weights file or run folder), a plain
    ``.safetensors`` file, or a foreign PyTorch file (``.pth``, ``.pt``, ...) through
    ``torch.load(weights_only=True)``. Containers ``{"state_dict": ...}`` and
    ``{"model": ...}`` are unwrapped and a DDP ``module.`` prefix is stripped.

    Args:
        path: The file or folder to read.
    """
    path = Path(path)
    if path.is_dir() or path.suffix == ".json" or path.with_name(path.name + ".json").exists():
        return load_checkpoint(path).model_state
    if not path.exists():
        raise CheckpointError(f"weights file {path} does not exist; check the path")
    if path.suffix == ".safetensors":
        return _load_safetensors_weights(path)
    return _load_torch_weights(path)


def write_atomically(path: str | Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` so that a reader sees the old file or the new, never half.

    The bytes go to a temporary file in the same folder, are ``fsync``-ed and renamed over
    ``path``; on any error (a full disk) the temporary file is removed and ``path`` is
    untouched.

    Args:
        path: Destination file; its folder must exist.
        data: The new contents.
    """
    _write_atomically(Path(path), data)


# --- saving -------------------------------------------------------------------------------


def _check_name(name: str) -> None:
    if not name or name.startswith(".") or "/" in name or "\\" in name or name != name.strip():
        raise ValueError(
            f"checkpoint name {name!r} is invalid; use a plain file stem such as 'last' or 'best'"
        )


def _add_tensors(
    sink: dict[str, Tensor], prefix: str, tensors: Mapping[str, Tensor], argument: str
) -> None:
    for key, value in tensors.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise TypeError(
                f"{argument}[{key!r}] is a {type(value).__name__} under a "
                f"{type(key).__name__} key; {argument} must map strings to tensors"
            )
        sink[prefix + key] = _detached_copy(value)


def _detached_copy(tensor: Tensor) -> Tensor:
    # A private contiguous CPU copy: safetensors refuses views and shared storage, and the
    # caller may keep training while the bytes are written.
    return tensor.detach().to(device="cpu", copy=True).contiguous()


def _encode_state(state: Mapping[str, Any] | None, prefix: str, tensors: dict[str, Tensor]) -> Any:
    if state is None:
        return None
    return _encode(state, prefix.rstrip("."), tensors)


def _encode(value: Any, where: str, tensors: dict[str, Tensor] | None) -> Any:
    """JSON-safe form of ``value``; tensors move into ``tensors`` and leave a reference."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        # Python's float repr round-trips exactly; inf and nan are not JSON.
        return value if math.isfinite(value) else {_FLOAT_TAG: repr(value)}
    if isinstance(value, Tensor):
        if tensors is None:
            raise TypeError(
                f"{where} is a tensor; JSON metadata cannot hold tensors, pass it in "
                "extra_tensors instead"
            )
        key = where
        while key in tensors:  # dict keys containing dots could collide
            key += "_"
        tensors[key] = _detached_copy(value)
        return {_TENSOR_TAG: key}
    if isinstance(value, np.generic):
        return _encode(value.item(), where, tensors)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, list):
        return [_encode(item, f"{where}.{i}", tensors) for i, item in enumerate(value)]
    if isinstance(value, tuple):
        return {
            _TUPLE_TAG: [_encode(item, f"{where}.{i}", tensors) for i, item in enumerate(value)]
        }
    if isinstance(value, Mapping):
        if all(isinstance(key, str) and not key.startswith("__") for key in value):
            return {key: _encode(item, f"{where}.{key}", tensors) for key, item in value.items()}
        return {
            _DICT_TAG: [
                [_encode(key, f"{where}.<key>", None), _encode(item, f"{where}.{key}", tensors)]
                for key, item in value.items()
            ]
        }
    raise TypeError(
        f"{where} is a {type(value).__name__}, which a checkpoint cannot store; use "
        "numbers, strings, booleans, None, lists, tuples, dicts or tensors (convert a "
        "dataclass with dataclasses.asdict)"
    )


def _write_bytes(handle: IO[bytes], data: bytes) -> None:
    handle.write(data)


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new, never half."""
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    try:
        # mkstemp creates the file 0600; give it the mode a plain open() would (0644
        # under umask 022), so run files stay readable by the group as the user expects.
        if hasattr(os, "fchmod"):  # not on Windows before Python 3.13
            os.fchmod(descriptor, 0o666 & ~_current_umask())
        with os.fdopen(descriptor, "wb") as handle:
            _write_bytes(handle, data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        _remove_quietly(Path(temporary))
        raise
    _fsync_directory(path.parent)


def _current_umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; directories cannot be opened this way on Windows.
    if os.name == "nt":
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _save_error(exc: OSError, json_path: Path, previous_weights: Path | None) -> OSError:
    if previous_weights is not None or json_path.exists():
        intact = f"the previous checkpoint {json_path} is intact"
    else:
        intact = f"no previous checkpoint {json_path} existed"
    if exc.errno == errno.ENOSPC:
        reason = f"no space left on device while saving checkpoint to {json_path}"
        fix = "free space or choose --output elsewhere"
    else:
        reason = f"could not save checkpoint to {json_path} ({exc.strerror or exc})"
        fix = "check that the folder is writable or choose --output elsewhere"
    return OSError(exc.errno, f"{reason}; {fix}; {intact}")


def _referenced_weights(json_path: Path) -> Path | None:
    """The weights file the current JSON names, or None if there is no readable JSON."""
    try:
        record = json.loads(json_path.read_bytes())
        return json_path.parent / str(record["weights_file"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None


def _remove_stale_files(directory: Path, name: str, *, keep: Path) -> None:
    stem = re.escape(name)
    weights = rf"{stem}-[0-9a-f]{{{_HASH_CHARS}}}\.safetensors"
    stale = re.compile(rf"{weights}|\.(?:{stem}\.json|{weights})\..+\.tmp")
    for candidate in directory.iterdir():
        if candidate != keep and stale.fullmatch(candidate.name):
            _remove_quietly(candidate)


def _remove_quietly(path: Path) -> None:
    # A leftover file is harmless; the next successful save retries the removal.
    with contextlib.suppress(OSError):
        path.unlink()


# --- loading ------------------------------------------------------------------------------


def _resolve_json(path: Path) -> Path:
    if path.is_dir():
        candidate = path / f"{_DEFAULT_RUN_CHECKPOINT}.json"
        if not candidate.exists():
            raise CheckpointError(
                f"run folder {path} has no {candidate.name}; "
                + _alternatives_hint(path, exclude=None)
            )
        return candidate
    if path.suffix == ".json":
        candidate = path
    elif path.suffix == ".safetensors":
        stem = re.sub(rf"-[0-9a-f]{{{_HASH_CHARS}}}$", "", path.stem)
        candidate = path.with_name(f"{stem}.json")
    else:
        candidate = path.with_name(path.name + ".json")
    if not candidate.exists():
        raise CheckpointError(
            f"checkpoint {candidate} does not exist; "
            + _alternatives_hint(candidate.parent, exclude=None)
        )
    return candidate


def _read_record(json_path: Path) -> dict[str, Any]:
    try:
        record = json.loads(json_path.read_bytes())
    except RecursionError:
        raise _corrupt(json_path, "it is nested too deeply to be a checkpoint record") from None
    except ValueError as exc:
        raise _corrupt(json_path, "it is truncated or corrupt (not valid JSON)") from exc
    if not isinstance(record, dict) or record.get("format") != _FORMAT_NAME:
        raise _corrupt(json_path, "it is not a concatnets checkpoint record")
    version = record.get("format_version")
    if not isinstance(version, int):
        raise _corrupt(json_path, "its field 'format_version' is missing or malformed")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {json_path} has format version {version!r}, newer than this "
            f"concatnets understands ({FORMAT_VERSION}); upgrade concatnets to load it"
        )
    for key, kind in (("weights_file", str), ("weights_sha256", str), ("weights_bytes", int)):
        if not isinstance(record.get(key), kind):
            raise _corrupt(json_path, f"its field {key!r} is missing or malformed")
    if Path(record["weights_file"]).name != record["weights_file"]:
        # Only files next to the JSON: a record must not point elsewhere on the disk.
        raise _corrupt(json_path, "its 'weights_file' is not a plain file name")
    return record


def _read_weights(json_path: Path, record: Mapping[str, Any]) -> dict[str, Tensor]:
    weights_path = json_path.parent / record["weights_file"]
    data = weights_path.read_bytes()  # FileNotFoundError is handled by the caller
    if len(data) != record["weights_bytes"]:
        raise _corrupt(
            weights_path,
            f"it is truncated or corrupt ({len(data)} bytes, {json_path.name} expects "
            f"{record['weights_bytes']})",
        )
    if hashlib.sha256(data).hexdigest() != record["weights_sha256"]:
        raise _corrupt(weights_path, f"it is corrupt (SHA-256 differs from {json_path.name})")
    try:
        return safetensors.torch.load(data)
    except Exception as exc:  # safetensors raises its own error types
        raise _corrupt(weights_path, f"it is corrupt ({exc})") from exc


def _decode(value: Any, tensors: Mapping[str, Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(item, tensors) for item in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((tag, payload),) = value.items()
        if tag == _TENSOR_TAG:
            if payload not in tensors:
                raise ValueError(f"tensor {payload!r} is missing from the weights file")
            return tensors[payload]
        if tag == _TUPLE_TAG:
            return tuple(_decode(item, tensors) for item in payload)
        if tag == _DICT_TAG:
            return {_decode(key, {}): _decode(item, tensors) for key, item in payload}
        if tag == _FLOAT_TAG:
            return float(payload)
    return {key: _decode(item, tensors) for key, item in value.items()}


def _corrupt(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(
        f"checkpoint file {path} cannot be used: {problem}; "
        + _alternatives_hint(path.parent, exclude=path)
    )


def _alternatives_hint(directory: Path, exclude: Path | None) -> str:
    exclude_stem = None
    if exclude is not None:
        exclude_stem = re.sub(rf"-[0-9a-f]{{{_HASH_CHARS}}}$", "", exclude.stem)
    others = sorted(
        candidate.name
        for candidate in directory.glob("*.json")
        if candidate.stem != exclude_stem and _referenced_weights(candidate) is not None
    )
    if others:
        return f"other checkpoints in {directory}: {', '.join(others)}"
    return f"no other checkpoint in {directory}; train from scratch or restore a backup"


def _load_safetensors_weights(path: Path) -> dict[str, Tensor]:
    try:
        with safetensors.safe_open(path, framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(
            f"weights file {path} is truncated or corrupt ({exc}); re-download or re-export it"
        ) from exc
    if _FORMAT_NAME in header:
        # One of our weights files, passed without its JSON: keep only the model part.
        return {key[len(_MODEL) :]: t for key, t in tensors.items() if key.startswith(_MODEL)}
    return _strip_wrapper_prefixes(tensors)


def _load_torch_weights(path: Path) -> dict[str, Tensor]:
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols before failing; our error says it all.
            warnings.simplefilter("ignore", UserWarning)
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _unpickler_reason(exc)
        if "unsupported global" in reason.lower():
            raise CheckpointError(
                f"{path} contains Python objects besides tensors ({reason}) and would need "
                "pickle code execution, which concatnets refuses; in the environment that made "
                "it, load it and re-save the state dict with safetensors.torch.save_file("
                "model.state_dict(), 'weights.safetensors')"
            ) from exc
        if _is_raw_pickle(path):
            raise CheckpointError(
                f"{path} is a plain Python pickle, not a file written by torch.save ({reason}); "
                "loading it would need pickle, which can run code and which concatnets "
                "refuses; in the environment that made it, re-save the weights with "
                "safetensors.torch.save_file(model.state_dict(), 'weights.safetensors') or "
                "torch.save(model.state_dict(), 'weights.pth')"
            ) from exc
        raise CheckpointError(
            f"weights file {path} is truncated, corrupt or not a PyTorch file ({reason}); "
            "re-download or re-export it"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"weights file {path} is truncated, corrupt or not a PyTorch file "
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
            "re-download or re-export it"
        ) from exc
    return _strip_wrapper_prefixes(_unwrap_container(loaded, path))


def _is_raw_pickle(path: Path) -> bool:
    """A pickle stream of protocol 2 or later that is not a torch.save zip archive."""
    try:
        with path.open("rb") as handle:
            head = handle.read(2)
    except OSError:
        return False
    return not zipfile.is_zipfile(path) and len(head) == 2 and head[0] == 0x80


def _unpickler_reason(exc: Exception) -> str:
    # torch's message is long; the line naming a blocked GLOBAL, else the line after
    # "WeightsUnpickler error:", names the cause.
    text = str(exc)
    marker = "WeightsUnpickler error:"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if "unsupported global" in line.lower():
            return line.split(marker, 1)[-1].strip().split(". ")[0].rstrip(".")
    if marker in text:
        lines = [line.strip() for line in text.split(marker, 1)[1].splitlines() if line.strip()]
    return lines[0].split(". ")[0] if lines else type(exc).__name__


def _unwrap_container(loaded: Any, path: Path) -> dict[str, Tensor]:
    state = loaded
    while isinstance(state, Mapping) and not _is_tensor_mapping(state):
        inner = next((state[key] for key in _WRAPPER_KEYS if key in state), None)
        if not isinstance(inner, Mapping):
            break
        state = inner
    if isinstance(state, Mapping) and _is_tensor_mapping(state):
        return {str(key): value for key, value in state.items()}
    found = (
        f"keys {_shorten([str(key) for key in state])}"
        if isinstance(state, Mapping)
        else f"a {type(state).__name__}"
    )
    raise CheckpointError(
        f"{path} holds {found}, not a state dict of tensors; save model.state_dict() "
        "(or {'state_dict': model.state_dict()}) instead"
    )


def _is_tensor_mapping(state: Mapping[Any, Any]) -> bool:
    return bool(state) and all(
        isinstance(key, str) and isinstance(value, Tensor) for key, value in state.items()
    )


def _strip_wrapper_prefixes(state: dict[str, Tensor]) -> dict[str, Tensor]:
    for prefix in _WRAPPER_PREFIXES:  # DDP's module., torch.compile's _orig_mod.
        if state and all(key.startswith(prefix) for key in state):
            state = {key[len(prefix) :]: value for key, value in state.items()}
    return state


def _shorten(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    hidden = len(items) - _MAX_LISTED
    return f"{shown} (+{hidden} more)" if hidden > 0 else shown
