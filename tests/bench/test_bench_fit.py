"""Power-law fits of cost against depth."""

from __future__ import annotations

import numpy as np
import pytest

from concatnets.bench import fit_power_law


@pytest.mark.parametrize("exponent", [1.0, 1.5, 2.0])
def test_fit_recovers_a_known_exponent(exponent: float) -> None:
    depths = np.array([40, 100, 160, 250, 1000], dtype=float)
    rng = np.random.default_rng(0)
    noise = np.exp(rng.normal(0.0, 0.01, depths.size))
    fit = fit_power_law(depths, 3.5 * depths**exponent * noise)
    assert fit is not None
    assert fit.exponent == pytest.approx(exponent, abs=0.03)
    assert fit.coefficient == pytest.approx(3.5, rel=0.15)
    assert fit.r_squared > 0.99
    assert fit.points == depths.size


def test_fit_drops_unusable_points_and_needs_two() -> None:
    assert fit_power_law([10], [5.0]) is None
    assert fit_power_law([10, 20], [5.0, 0.0]) is None
    assert fit_power_law([10, 10], [5.0, 6.0]) is None
    fit = fit_power_law([10, 20, 40], [1.0, 2.0, -1.0])
    assert fit is not None and fit.points == 2
    assert fit.exponent == pytest.approx(1.0)
