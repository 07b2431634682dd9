"""Per-epoch metric logs: CSV and JSON in the run folder, TensorBoard when installed."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from concatnets.training.checkpoint import write_atomically

__all__ = ["MetricsLogger"]


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLogger:
    """Writes ``metrics.csv`` and ``metrics.json`` (one record per epoch) into a run folder.

    Both files are rewritten (atomically) from the full history at every epoch, so they
    are always complete and a resumed run continues them. TensorBoard scalars go to
    ``run_dir/tensorboard`` when ``torch.utils.tensorboard`` can be imported.

    Args:
        run_dir: The run folder.
        history: Records of earlier epochs (when resuming).
        tensorboard: Also log to TensorBoard if it is installed.
    """

    def __init__(
        self, run_dir: str | Path, history: Sequence[dict[str, Any]] = (), tensorboard: bool = True
    ) -> None:
        self.run_dir = Path(run_dir)
        self.history: list[dict[str, Any]] = [dict(r) for r in history]
        self._writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                pass
            else:
                self._writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    @property
    def csv_path(self) -> Path:
        """``run_dir/metrics.csv``."""
        return self.run_dir / "metrics.csv"

    @property
    def json_path(self) -> Path:
        """``run_dir/metrics.json``."""
        return self.run_dir / "metrics.json"

    def log(self, record: dict[str, Any]) -> None:
        """Append one epoch's record (must contain ``epoch``) and rewrite the files."""
        self.history.append(dict(record))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        columns: list[str] = []
        for row in self.history:
            columns.extend(k for k in row if k not in columns)
        table = io.StringIO(newline="")
        writer = csv.DictWriter(table, fieldnames=columns)
        writer.writeheader()
        writer.writerows(self.history)
        rows = [{k: _json_value(v) for k, v in row.items()} for row in self.history]
        # Atomic: a full disk leaves the previous complete files, never half of one.
        write_atomically(self.csv_path, table.getvalue().encode("utf-8"))
        write_atomically(self.json_path, (json.dumps(rows, indent=2) + "\n").encode("utf-8"))
        if self._writer is not None:
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self._writer.add_scalar(key, value, record["epoch"])
            self._writer.flush()

    def close(self) -> None:
        """Close the TensorBoard writer, if any."""
        if self._writer is not None:
            self._writer.close()
