"""``python -m concatnets.bench memory ...``: the benchmark without the main CLI."""

from __future__ import annotations

from concatnets.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
