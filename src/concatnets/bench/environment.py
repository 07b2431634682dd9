"""What machine and software a benchmark ran on, for the JSON and Markdown reports."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["cpu_model", "describe_environment", "torchvision_status"]


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo``, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def torchvision_status() -> tuple[bool, str]:
    """Whether ``import torchvision`` works here, and why not when it does not."""
    try:
        import torchvision  # noqa: F401
    except Exception as error:  # an ABI mismatch raises more than ImportError
        return False, f"{type(error).__name__}: {error}"
    return True, f"torchvision {_version('torchvision')}"


def describe_environment(
    results: Sequence[Mapping[str, Any]], child_env: Mapping[str, str], device: str
) -> dict[str, Any]:
    """Machine, software and allocator facts; torch details come from a child's report."""
    measured = next((r for r in results if r.get("status") == "ok"), {})
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "libc": " ".join(platform.libc_ver()).strip(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "torch_version": measured.get("torch_version") or _version("torch"),
        "torch_threads": measured.get("torch_threads"),
        "torch_interop_threads": measured.get("torch_interop_threads"),
        "device": device,
        "device_name": measured.get("device_name"),
        "allocator_env": {k: v for k, v in sorted(child_env.items()) if k.startswith("MALLOC_")},
        "thread_env": {
            k: child_env[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in child_env
        },
        "memory_method": measured.get("memory_method"),
        "priming": measured.get("priming"),
        "optimizer": measured.get("optimizer"),
    }
