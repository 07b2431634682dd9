"""One-line notices to the user about how their data was interpreted."""

from __future__ import annotations

import os
import sys

__all__ = ["notice"]


def notice(message: str) -> None:
    """Print ``notice: message`` on standard error (only on rank 0 under ``torchrun``).

    Args:
        message: One line saying what was done and how to change it.
    """
    if os.environ.get("RANK", "0") not in ("", "0"):
        return  # every process reads the same data; one notice is enough
    print(f"notice: {message}", file=sys.stderr, flush=True)
