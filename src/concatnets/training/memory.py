"""Peak memory of the current process: GPU allocator peak or CPU resident-set high-water mark."""

from __future__ import annotations

import sys

import torch

__all__ = ["format_bytes", "peak_memory_bytes", "reset_peak_memory"]


def peak_memory_bytes(device: torch.device | str) -> int:
    """Peak memory so far on ``device``.

    On CUDA: ``torch.cuda.max_memory_allocated`` (since the last :func:`reset_peak_memory`).
    On CPU: the process's resident-set high-water mark from ``getrusage``, since the last
    :func:`reset_peak_memory` on Linux (since the process started elsewhere); it includes
    the Python interpreter and PyTorch itself. 0 where unavailable.

    Args:
        device: The device training runs on.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        import resource
    except ImportError:  # Windows
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # macOS: bytes, Linux: KiB


def reset_peak_memory(device: torch.device | str) -> None:
    """Restart peak tracking: CUDA's allocator peak, or on Linux the resident-set mark.

    Linux resets a process's high-water mark when ``5`` is written to
    ``/proc/self/clear_refs``; elsewhere the CPU mark cannot be reset and this is a no-op.

    Args:
        device: The device training runs on.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass  # not Linux, or not permitted: the mark keeps counting from process start


def format_bytes(count: float) -> str:
    """Human-readable size with binary units.

    >>> format_bytes(3 * 1024**2)
    '3.0 MiB'
    """
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"  # pragma: no cover
