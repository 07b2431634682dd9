"""One-line notices to the user about how their data was interpreted."""

from __future__ import annotations

import sys

__all__ = ["notice"]


def notice(message: str) -> None:
    """Print ``notice: message`` on standard error.

    Args:
        message: One line saying what was done and how to change it.
    """
    print(f"notice: {message}", file=sys.stderr, flush=True)
