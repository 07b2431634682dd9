"""The process's resident-set high-water mark: read it, and restart it where Linux allows.

Shared by the training log and the memory benchmark; imports nothing but the standard
library, so a benchmark child process stays light.
"""

from __future__ import annotations

import sys

__all__ = ["reset_resident_peak", "resident_peak_bytes"]

_CLEAR_REFS = "/proc/self/clear_refs"


def resident_peak_bytes() -> int:
    """The process's resident-set high-water mark (``getrusage``); 0 where unavailable."""
    try:
        import resource
    except ImportError:  # Windows
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # macOS: bytes, Linux: KiB


def reset_resident_peak() -> bool:
    """Restart the resident-set high-water mark; False where it cannot be reset.

    Linux resets a process's mark when ``5`` is written to ``/proc/self/clear_refs``.
    """
    try:
        with open(_CLEAR_REFS, "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False
