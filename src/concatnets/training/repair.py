"""Bring a run folder back in line with its commit point, ``last.json``.

An epoch ends by writing, in this order, ``last`` (the commit point: from here on the
epoch is done), then ``best`` when the metric improved, ``epoch-NNNN`` with
``--keep-epochs``, and ``metrics.csv`` / ``metrics.json``. A ``kill -9`` between these
writes leaves a committed ``last`` whose later records are stale or missing, plus
temporary files of the interrupted write. Everything those records hold is in ``last``
itself (``best`` of an improving epoch is the same checkpoint under another name), so a
resumed run rewrites them from it before it continues.
"""

from __future__ import annotations

import contextlib
import csv
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from concatnets.training.checkpoint import (
    Checkpoint,
    CheckpointError,
    read_checkpoint_metadata,
    save_checkpoint,
)

__all__ = ["metrics_files_match", "remove_temporary_files", "repair_checkpoints"]

# Temporary files of interrupted atomic writes: ".<name>.<random>.tmp".
_TEMPORARY = re.compile(
    r"\.(?:config\.json|metrics\.csv|metrics\.json|learning_curves\.png|"
    r"(?:last|best|epoch-\d{4})(?:\.json|-[0-9a-f]{16}\.safetensors))\..+\.tmp"
)


def remove_temporary_files(run_dir: Path) -> list[str]:
    """Delete what interrupted writes left in ``run_dir``; return the names removed."""
    removed = []
    for path in sorted(run_dir.iterdir()):
        if _TEMPORARY.fullmatch(path.name) and path.is_file():
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path.name)
    return removed


def _saved_epoch(path: Path) -> Any:
    try:
        return read_checkpoint_metadata(path).get("epoch")
    except (CheckpointError, OSError):
        return None


def _copy_of(last: Checkpoint, run_dir: Path, name: str) -> None:
    save_checkpoint(
        run_dir,
        name,
        model_state=last.model_state,
        optimizer_state=last.optimizer_state,
        scheduler_state=last.scheduler_state,
        extra_tensors=last.extra_tensors,
        metadata=last.metadata,
    )


def repair_checkpoints(
    run_dir: Path,
    last: Checkpoint,
    keep_epochs: int,
    before_write: Callable[[], None] = lambda: None,
) -> list[str]:
    """Rewrite ``best`` / ``epoch-NNNN`` of the epoch ``last`` committed if they lag behind.

    Args:
        run_dir: The run folder.
        last: Its loaded ``last`` checkpoint.
        keep_epochs: The run's ``--keep-epochs``.
        before_write: Called before the first rewrite (e.g. to write ``config.json``).

    Returns:
        The names of the checkpoints rewritten.
    """
    metadata = last.metadata
    epoch = metadata.get("epoch")
    trainer = metadata.get("trainer", {})
    if not isinstance(epoch, int) or epoch < 1 or trainer.get("epoch_step", 0):
        return []  # nothing committed yet, or a mid-epoch position (no epoch records)
    stale = []
    if metadata.get("best_epoch") == epoch and _saved_epoch(run_dir / "best.json") != epoch:
        stale.append("best")
    numbered = f"epoch-{epoch:04d}"
    if keep_epochs > 0 and _saved_epoch(run_dir / f"{numbered}.json") != epoch:
        stale.append(numbered)
    if stale:
        before_write()
    for name in stale:
        _copy_of(last, run_dir, name)
    return [f"{name}.json" for name in stale]


def metrics_files_match(run_dir: Path, history: Sequence[dict[str, Any]]) -> bool:
    """Whether ``metrics.csv`` and ``metrics.json`` hold one row per epoch of ``history``."""
    epochs = [row.get("epoch") for row in history]
    try:
        rows = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        with (run_dir / "metrics.csv").open(newline="", encoding="utf-8") as handle:
            csv_epochs = [row.get("epoch") for row in csv.DictReader(handle)]
    except (OSError, ValueError):
        return not epochs
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        return False
    return [row.get("epoch") for row in rows] == epochs and csv_epochs == [
        str(epoch) for epoch in epochs
    ]
