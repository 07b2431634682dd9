"""Check a proposed engine forward against the module's own forward before installing it.

Conversion proposes a site from the module's structure; this numerical check on the probe
input (training and eval mode, the same random draws for dropout) is what makes a site
safe to convert, whatever the module's code looks like.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from concatnets.convert.probe import preserved_state

__all__ = ["difference", "mismatch"]

_SEED = 20170706


def _tolerance(t: Tensor) -> float:
    return 1e-6 if t.dtype == torch.float64 else 1e-3


def difference(expected: Any, actual: Any) -> str | None:
    if isinstance(expected, Tensor):
        if not isinstance(actual, Tensor) or actual.shape != expected.shape:
            shape = getattr(actual, "shape", type(actual).__name__)
            return f"output shape {shape} instead of {tuple(expected.shape)}"
        if expected.is_floating_point():
            scale = float(expected.abs().max()) + 1.0
            error = float((actual - expected).abs().max()) if expected.numel() else 0.0
            if error > _tolerance(expected) * scale:
                return f"output differs by {error:.3g} (scale {scale:.3g})"
        elif not torch.equal(expected, actual):
            return "integer output differs"
        return None
    if isinstance(expected, list | tuple):
        if not isinstance(actual, list | tuple) or len(actual) != len(expected):
            return "output structure differs"
        for e, a in zip(expected, actual, strict=True):
            problem = difference(e, a)
            if problem is not None:
                return problem
        return None
    return None


def mismatch(
    module: nn.Module,
    original: Callable[..., Any],
    candidate: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> str | None:
    """Why ``candidate`` does not compute what ``original`` does on ``args``, or None."""
    with preserved_state(module):
        for training in (True, False):
            module.train(training)
            torch.manual_seed(_SEED)
            expected = original(*args, **kwargs)
            torch.manual_seed(_SEED)
            try:
                actual = candidate(*args, **kwargs)
            except Exception as error:
                return f"engine forward failed: {type(error).__name__}: {error}"
            problem = difference(expected, actual)
            if problem is not None:
                mode = "training" if training else "eval"
                return f"engine forward disagrees in {mode} mode: {problem}"
    return None
