"""Power-law fits: how a cost grows with depth (1 = linear, 2 = quadratic)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["PowerLawFit", "fit_power_law"]


@dataclass(frozen=True)
class PowerLawFit:
    """``y = coefficient * x ** exponent``, fitted by least squares in log-log space.

    Args:
        exponent: Slope of ``log y`` against ``log x``.
        coefficient: ``exp`` of the intercept.
        r_squared: Coefficient of determination of the log-log fit.
        points: Number of points used.
    """

    exponent: float
    coefficient: float
    r_squared: float
    points: int


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> PowerLawFit | None:
    """Fit ``y ~ c * x**k``; ``None`` when fewer than two usable points remain.

    Points with a non-positive ``x`` or ``y`` are dropped (their log is undefined).

    >>> fit = fit_power_law([10, 20, 40], [3.0, 12.0, 48.0])
    >>> round(fit.exponent, 6), round(fit.coefficient, 6)
    (2.0, 0.03)
    """
    pairs = [(a, b) for a, b in zip(x, y, strict=True) if a > 0 and b > 0]
    if len({a for a, _ in pairs}) < 2:
        return None
    log_x = np.log([a for a, _ in pairs])
    log_y = np.log([b for _, b in pairs])
    slope, intercept = np.polyfit(log_x, log_y, 1)
    predicted = slope * log_x + intercept
    total = float(np.sum((log_y - log_y.mean()) ** 2))
    residual = float(np.sum((log_y - predicted) ** 2))
    r_squared = 1.0 - residual / total if total > 0 else 1.0
    return PowerLawFit(float(slope), math.exp(float(intercept)), r_squared, len(pairs))
