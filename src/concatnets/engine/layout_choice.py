"""Which memory layout the engine computes in, chosen per machine and overridable.

The choice is one of ``"channels_last"`` and ``"contiguous"`` per decision key
(device, spatial rank, compute dtype, torch thread count), made from, in precedence:

1. :func:`use_layout` (a context manager; the innermost wins),
2. :func:`set_layout` (process-wide),
3. the environment variable ``CONCATNETS_LAYOUT``,
4. ``"auto"``: on CPU, a probe timing one 3x3 convolution forward + backward in both
   layouts (:mod:`concatnets.engine.layout_probe`, a fraction of a second, once per key
   and process); on CUDA, the rule channels-last for float16/bfloat16 (cuDNN's
   tensor-core kernels work in channels-last) and the default layout for float32,
   without probing. float64 on CPU (for checks) keeps channels-last by rule: its
   convolutions are not oneDNN's and the tests compare it in that layout.

Any of the first three may say ``"auto"`` to ask for step 4 explicitly. Change the layout
between training steps, not between a forward and its backward. :func:`layout_decisions`
shows what was chosen, why, and the probe's timings.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from concatnets.engine.choice_cache import ChoiceCache
from concatnets.engine.layout import channels_last_format
from concatnets.engine.layout_probe import PROBE_SHAPES, probe_cpu_layout

__all__ = [
    "LAYOUT_ENV_VAR",
    "LAYOUT_SETTINGS",
    "LayoutDecision",
    "LayoutKey",
    "clear_layout_decisions",
    "decide_layout",
    "layout_decisions",
    "layout_setting",
    "pin_probed",
    "preferred_layout",
    "probed_decisions",
    "set_layout",
    "use_layout",
]

LAYOUT_ENV_VAR = "CONCATNETS_LAYOUT"
LAYOUT_SETTINGS = ("auto", "channels_last", "contiguous")
_HALF_DTYPES = (torch.float16, torch.bfloat16)
_PROBED_DTYPES = (torch.float32, *_HALF_DTYPES)


@dataclass(frozen=True)
class LayoutKey:
    """What a layout decision depends on."""

    device: str
    spatial_rank: int
    dtype: torch.dtype
    threads: int


@dataclass(frozen=True)
class LayoutDecision:
    """A chosen layout and where it came from.

    ``source`` is ``use_layout``, ``set_layout``, ``env`` (the override that decided),
    ``probe`` (CPU timing, ``probe_seconds`` holds the best time per layout), ``restored``
    (a resumed run's recorded probe result) or ``rule``
    (CUDA; float64, whose convolutions are not oneDNN's; a rank without channels-last).
    """

    layout: str
    source: str
    probe_seconds: Mapping[str, float] | None = None
    probe_rounds: int | None = None
    probe_shape: tuple[int, int] | None = None


_process_setting: str | None = None
_context_setting: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "concatnets_layout", default=None
)
_choices: ChoiceCache[LayoutKey, LayoutDecision] = ChoiceCache()


def _checked(setting: str, where: str) -> str:
    if setting not in LAYOUT_SETTINGS:
        raise ValueError(f"{where} must be one of {', '.join(LAYOUT_SETTINGS)}, got {setting!r}")
    return setting


def set_layout(setting: str | None) -> None:
    """Set the engine's layout for the process: ``auto``, ``channels_last``, ``contiguous``.

    ``None`` removes the setting, so ``CONCATNETS_LAYOUT`` (or ``auto``) applies again.
    """
    global _process_setting
    _process_setting = None if setting is None else _checked(setting, "set_layout's setting")


@contextmanager
def use_layout(setting: str) -> Iterator[None]:
    """Within the block, the engine uses ``setting`` (overrides :func:`set_layout`)."""
    token = _context_setting.set(_checked(setting, "use_layout's setting"))
    try:
        yield
    finally:
        _context_setting.reset(token)


def layout_setting() -> tuple[str, str]:
    """The setting in force and its source: ``use_layout``, ``set_layout``, ``env``, ``default``."""
    if (setting := _context_setting.get()) is not None:
        return setting, "use_layout"
    if _process_setting is not None:
        return _process_setting, "set_layout"
    if env := os.environ.get(LAYOUT_ENV_VAR):
        return _checked(env.strip().lower(), f"the environment variable {LAYOUT_ENV_VAR}"), "env"
    return "auto", "default"


def _auto(key: LayoutKey, device: torch.device) -> LayoutDecision:
    if device.type != "cpu":
        return LayoutDecision(
            "channels_last" if key.dtype in _HALF_DTYPES else "contiguous", "rule"
        )
    if key.dtype not in _PROBED_DTYPES:  # float64 (checks and tests): no oneDNN kernels
        return LayoutDecision("channels_last", "rule")
    return _choices.probed_or(key, lambda: _probe_decision(key))


def _probe_decision(key: LayoutKey) -> LayoutDecision:
    probe = probe_cpu_layout(key.spatial_rank, key.dtype)
    return LayoutDecision(probe.layout, "probe", probe.seconds, probe.rounds, probe.shape)


def decide_layout(
    device: torch.device | str, spatial_rank: int, dtype: torch.dtype
) -> LayoutDecision:
    """The engine's layout for convolutions of ``spatial_rank`` in ``dtype`` on ``device``."""
    device = torch.device(device)
    key = LayoutKey(str(device), spatial_rank, dtype, torch.get_num_threads())
    setting, source = layout_setting()
    if spatial_rank not in PROBE_SHAPES:
        decision = LayoutDecision("contiguous", "rule")  # no channels-last format for it
    elif setting == "auto":
        decision = _auto(key, device)
    else:
        decision = LayoutDecision(setting, source)
    return _choices.record(key, decision)


def preferred_layout(x: Tensor) -> torch.memory_format:
    """The memory format the engine computes in for an input like ``x``.

    The compute dtype is autocast's for ``x``'s device when autocast is on, else ``x``'s.
    """
    if x.dim() < 3:
        return torch.contiguous_format
    device_type = x.device.type
    dtype = x.dtype
    if torch.is_autocast_enabled(device_type) and x.is_floating_point():
        dtype = torch.get_autocast_dtype(device_type)
    decision = decide_layout(x.device, x.dim() - 2, dtype)
    if decision.layout == "contiguous":
        return torch.contiguous_format
    return channels_last_format(x.dim())


def probed_decisions() -> dict[LayoutKey, LayoutDecision]:
    """The probe results of this process (or restored ones, see :func:`pin_probed`)."""
    return _choices.probed()


def pin_probed(key: LayoutKey, layout: str) -> None:
    """Take ``layout`` as the probe's result for ``key`` (a resumed run's recorded one)."""
    if layout not in ("channels_last", "contiguous"):
        raise ValueError(f"a restored layout must be channels_last or contiguous, got {layout!r}")
    _choices.pin(key, LayoutDecision(layout, "restored"))


def layout_decisions() -> dict[LayoutKey, LayoutDecision]:
    """The latest decision per key made in this process (a copy)."""
    return _choices.decided()


def clear_layout_decisions() -> None:
    """Forget every decision and probe result: the next use probes again."""
    _choices.clear()
