"""Child process entry: measure one configuration and write its result as JSON.

Usage (by the runner, never by hand)::

    python -m concatnets.bench._child --config '<BenchConfig JSON>' --result out.json

An error exits non-zero with its traceback on stderr; the runner reports it.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence

from concatnets.bench.config import BenchConfig
from concatnets.bench.memory import UnsupportedModeError, measure

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Measure the configuration given on the command line."""
    parser = argparse.ArgumentParser(prog="python -m concatnets.bench._child")
    parser.add_argument("--config", required=True, help="BenchConfig as JSON")
    parser.add_argument("--result", required=True, help="path of the result JSON")
    args = parser.parse_args(argv)
    config = BenchConfig.from_json(args.config)
    try:
        result = measure(config)
    except UnsupportedModeError as error:
        result = {"status": "unsupported", "pid": os.getpid(), "error": str(error)}
    with open(args.result, "w") as handle:
        json.dump(result, handle)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
