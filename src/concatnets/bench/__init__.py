"""Benchmarks: peak training memory and step time of each memory mode, per process.

``concatnets bench memory`` (or ``python -m concatnets.bench memory``) runs every
configuration in a fresh child process and compares each mode with the naive
reference measured in the same run.
"""

from __future__ import annotations

from concatnets.bench.config import BenchConfig
from concatnets.bench.fit import PowerLawFit, fit_power_law
from concatnets.bench.presets import PRESETS, PlanSettings, Row, build_plan
from concatnets.bench.runner import run_config, run_configs

__all__ = [
    "PRESETS",
    "BenchConfig",
    "PlanSettings",
    "PowerLawFit",
    "Row",
    "build_plan",
    "fit_power_law",
    "run_config",
    "run_configs",
]
