"""A `kill -9` in the middle of an epoch loses at most that epoch (real subprocesses)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from concatnets.training.checkpoint import load_checkpoint

_TRAIN = [sys.executable, "-m", "concatnets.cli.main", "train"]
_ARGS = ["--model", "unet_small", "--model-arg", "features=4", "--model-arg", "depth=2"]
_ARGS += ["--num-images", "40", "--image-size", "32", "--batch-size", "2", "--epochs", "3"]
_ARGS += ["--device", "cpu", "--no-progress", "--overlays", "0", "--seed", "7"]
_TIMING = {"time_s", "images_per_s", "peak_memory_mb"}
_TIMEOUT_S = 120


def _env() -> dict[str, str]:
    # One thread per process: the two runs below share the CPU, and the reference and the
    # killed-then-resumed run must use the same thread count to agree bit for bit.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _history(run: Path) -> list[dict[str, Any]]:
    rows = json.loads((run / "metrics.json").read_text())
    return [{k: v for k, v in row.items() if k not in _TIMING} for row in rows]


def test_sigkill_mid_epoch_loses_at_most_that_epoch_and_resume_matches(tmp_path: Path) -> None:
    reference, victim = tmp_path / "reference", tmp_path / "victim"
    straight = subprocess.Popen(
        [*_TRAIN, *_ARGS, "--output", str(reference)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    killed = subprocess.Popen(
        [*_TRAIN, *_ARGS, "--output", str(victim)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # Each epoch prints its summary line after its checkpoints are saved; kill as soon
        # as epoch 1's line appears, i.e. early in epoch 2.
        printed: list[str] = []
        assert killed.stdout is not None
        for line in killed.stdout:
            printed.append(line)
            if line.startswith("epoch 1/3"):
                killed.send_signal(signal.SIGKILL)
                break
        killed.wait(timeout=_TIMEOUT_S)
        assert killed.returncode == -signal.SIGKILL, "".join(printed)
        assert straight.wait(timeout=_TIMEOUT_S) == 0, straight.stderr and straight.stderr.read()
    finally:
        for process in (straight, killed):
            if process.poll() is None:
                process.kill()
                process.wait()

    # What survived the kill is a complete, hash-verified checkpoint of a finished epoch.
    survived = load_checkpoint(victim)
    assert survived.metadata["epoch"] in (1, 2)  # 1 unless epoch 2 finished within the kill
    assert survived.metadata["trainer"]["epoch_step"] == 0
    assert [row["epoch"] for row in _history(victim)] == list(
        range(1, survived.metadata["epoch"] + 1)
    )

    resumed = subprocess.run(
        [*_TRAIN, "--resume", str(victim)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=_TIMEOUT_S,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after epoch {survived.metadata['epoch']} from" in resumed.stdout
    expected = load_checkpoint(reference).model_state
    actual = load_checkpoint(victim).model_state
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key
    assert _history(victim) == _history(reference)
