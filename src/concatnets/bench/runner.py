"""Run each configuration in a fresh child process and collect its result.

A fresh process per configuration keeps the CPU high-water mark of one run out of
the next. Every child of one run gets the same environment, allocator settings included;
by default that is the user's own (``user``), so a child does what a user's script does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from concatnets.bench.config import BenchConfig

__all__ = [
    "ALLOCATOR_SETTINGS",
    "child_environment",
    "run_config",
    "run_configs",
]

# The C-allocator environment of every child, by name:
# - user: the environment as the user has it. Unless the user set CONCATNETS_MALLOC,
#   ``import concatnets`` changes nothing: glibc's dynamic mmap threshold, which rises
#   after the first large free and keeps later freed tensors in the heap, and the engine
#   allocating through malloc like any model; exactly a user's own script.
# - glibc: that default stated explicitly (CONCATNETS_MALLOC=system), whatever the
#   user's environment says.
# - pool: CONCATNETS_MALLOC=pool: the engine keeps its large CPU buffers in its own
#   reused mappings (concatnets.engine.buffer_pool); glibc untouched.
# - trim: CONCATNETS_MALLOC=trim: glibc untouched; the engine gives piled-up free heap
#   pages back at its block boundaries (concatnets.engine.heap_release).
# - pinned: CONCATNETS_MALLOC=pinned: glibc's mmap threshold pinned at 128 KiB for the
#   whole process (resident follows live tensors; page faults for every model).
# - fixed: the MALLOC_* settings earlier benchmarks used for every mode. The trim
#   threshold is glibc's own default pairing (twice the mmap threshold).
ALLOCATOR_SETTINGS: dict[str, dict[str, str]] = {
    "user": {},
    "glibc": {"CONCATNETS_MALLOC": "system"},
    "pool": {"CONCATNETS_MALLOC": "pool"},
    "trim": {"CONCATNETS_MALLOC": "trim"},
    "pinned": {"CONCATNETS_MALLOC": "pinned"},
    "fixed": {
        "MALLOC_ARENA_MAX": "2",
        "MALLOC_MMAP_THRESHOLD_": "131072",
        "MALLOC_TRIM_THRESHOLD_": "262144",
    },
}

_STDERR_TAIL_CHARS = 4000
_CHILD_MODULE = "concatnets.bench._child"


def child_environment(allocator: str = "user") -> dict[str, str]:
    """The environment every child runs in: ours, plus the chosen allocator settings."""
    if allocator not in ALLOCATOR_SETTINGS:
        raise ValueError(
            f"allocator {allocator!r} is unknown: choose from {', '.join(ALLOCATOR_SETTINGS)}"
        )
    return {**os.environ, **ALLOCATOR_SETTINGS[allocator]}


def _tail(text: str) -> str:
    return text[-_STDERR_TAIL_CHARS:].strip()


def _death_reason(returncode: int) -> str:
    if returncode >= 0:
        return f"exited with status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    hint = " (likely out of memory: the OOM killer sends SIGKILL)" if name == "SIGKILL" else ""
    return f"killed by {name}{hint}"


def run_config(
    config: BenchConfig,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Measure ``config`` in a new process; a dead child becomes a ``failed`` result.

    Returns the child's result with ``config``, ``child_pid`` and ``wall_s`` added.
    ``status`` is ``ok``, ``unsupported``, ``failed`` or ``timeout``.
    """
    with tempfile.TemporaryDirectory(prefix="concatnets-bench-") as tmp:
        result_path = Path(tmp) / "result.json"
        command = [
            sys.executable,
            "-m",
            _CHILD_MODULE,
            "--config",
            config.to_json(),
            "--result",
            str(result_path),
        ]
        start = time.perf_counter()
        process = subprocess.Popen(
            command,
            env=dict(env) if env is not None else child_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
            result: dict[str, Any] = {
                "status": "timeout",
                "error": f"no result after {timeout} s; child killed. {_tail(stderr)}",
            }
        else:
            if process.returncode == 0 and result_path.exists():
                result = json.loads(result_path.read_text())
            else:
                result = {
                    "status": "failed",
                    "error": f"child {_death_reason(process.returncode)}: {_tail(stderr)}",
                }
        wall = time.perf_counter() - start
    result.setdefault("pid", process.pid)
    return {**result, "config": asdict(config), "child_pid": process.pid, "wall_s": wall}


def run_configs(
    configs: Iterable[BenchConfig],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    progress: Callable[[int, int, BenchConfig, dict[str, Any] | None], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every configuration, one process at a time, in order.

    ``progress(index, total, config, result)`` is called before each run (``result``
    is ``None``) and after it.
    """
    plan = list(configs)
    results = []
    for index, config in enumerate(plan, start=1):
        if progress is not None:
            progress(index, len(plan), config, None)
        result = run_config(config, env=env, timeout=timeout)
        results.append(result)
        if progress is not None:
            progress(index, len(plan), config, result)
    return results
