"""Mixed precision for the engine's custom autograd functions.

The engine calls ATen kernels directly and recomputes activations in backward, where
autocast is not active. So it does not rely on autocast: under ``torch.autocast`` it
turns autocast off for its own operations and applies autocast's rules itself, the same
way in forward and in backward.

* Activations entering the engine are cast to the autocast dtype (differentiably, as
  autocast casts them, so input gradients come back in the input's dtype); everything
  the engine computes from them and stores for backward (feature buffers, bottleneck
  and convolution outputs) is in that dtype.
* Convolutions run in the dtype of their input (:mod:`concatnets.engine.conv` casts the
  weights) and return parameter gradients in the parameters' dtype.
* Normalisation statistics and running statistics stay float32
  (:func:`stats_dtype`), as autocast's own batch norm keeps them.
* Without autocast, an input whose dtype differs from the weights' is refused
  (:func:`check_input_dtype`), as the naive modules refuse it, instead of silently
  computing in the input's dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import TypeVar

import torch
from torch import Tensor

__all__ = [
    "REDUCED_DTYPES",
    "autocast_dtype",
    "check_input_dtype",
    "in_engine_precision",
    "is_reduced",
    "stats_dtype",
]

T = TypeVar("T")

# The floating dtypes autocast computes in; the engine keeps statistics of them in float32.
REDUCED_DTYPES = (torch.float16, torch.bfloat16)

# The autocast dtype of the engine call now running with autocast turned off (nested
# engine calls then see reduced tensors beside float32 weights by design), else None.
_engine_autocast: ContextVar[torch.dtype | None] = ContextVar("engine_autocast", default=None)


def is_reduced(dtype: torch.dtype) -> bool:
    """Whether ``dtype`` is a reduced-precision float (float16 or bfloat16)."""
    return dtype in REDUCED_DTYPES


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of normalisation statistics of a ``dtype`` tensor: float32 for reduced ones."""
    return torch.float32 if is_reduced(dtype) else dtype


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast computes convolutions in on ``device``, or None when it is off."""
    if not torch.is_autocast_enabled(device.type):
        return None
    return torch.get_autocast_dtype(device.type)


def in_engine_precision(device: torch.device, run: Callable[[Callable[[Tensor], Tensor]], T]) -> T:
    """Call ``run(cast)`` with autocast off, ``cast`` applying autocast's input rule.

    Under autocast on ``device``, ``cast`` turns a floating tensor other than float64
    into the autocast dtype (differentiably, like autocast) and leaves others alone;
    without autocast it is the identity and ``run`` runs as called.
    """
    dtype = autocast_dtype(device)
    if dtype is None:
        return run(lambda t: t)

    def cast(t: Tensor) -> Tensor:
        eligible = t.is_floating_point() and t.dtype not in (torch.float64, dtype)
        return t.to(dtype) if eligible else t

    token = _engine_autocast.set(dtype)
    try:
        with torch.autocast(device_type=device.type, enabled=False):
            return run(cast)
    finally:
        _engine_autocast.reset(token)


def check_input_dtype(x: Tensor, weight: Tensor, where: str) -> None:
    """Refuse a floating input whose dtype is not ``weight``'s, outside autocast.

    The naive modules raise for such an input (e.g. a bfloat16 image given to a float32
    model); the engine's kernels would otherwise compute in the input's dtype. Under
    autocast, and inside an engine call made under autocast, mixed dtypes are intended.

    Raises:
        RuntimeError: Naming ``where``, both dtypes and the fixes.
    """
    if not (x.is_floating_point() and weight.is_floating_point()) or x.dtype == weight.dtype:
        return
    if _engine_autocast.get() is not None or autocast_dtype(x.device) is not None:
        return
    raise RuntimeError(
        f"{where}: the input is {x.dtype} but the weights are {weight.dtype}; cast the "
        f"input (x.to({weight.dtype})), convert the model (model.to({x.dtype})), or run "
        f"the model under torch.autocast(device_type={x.device.type!r})"
    )
