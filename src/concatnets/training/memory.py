"""Peak memory of the current process: GPU allocator peak or CPU resident-set high-water mark."""

from __future__ import annotations

import torch

from concatnets._process_memory import reset_resident_peak, resident_peak_bytes

__all__ = ["format_bytes", "peak_memory_bytes", "peak_memory_label", "reset_peak_memory"]


def peak_memory_label(device: torch.device | str) -> str:
    """What :func:`peak_memory_bytes` measures on ``device``, for the training log.

    >>> peak_memory_label("cpu")
    'process peak RSS'

    Args:
        device: The device training runs on.
    """
    if torch.device(device).type == "cuda":
        return "peak CUDA allocated"
    return "process peak RSS"  # the whole process: interpreter, PyTorch, data, model


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
    return resident_peak_bytes()


def reset_peak_memory(device: torch.device | str) -> None:
    """Restart peak tracking: CUDA's allocator peak, or the resident-set mark on Linux.

    Elsewhere the CPU mark cannot be reset (:func:`reset_resident_peak`) and it keeps
    counting from process start.

    Args:
        device: The device training runs on.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_resident_peak()


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
