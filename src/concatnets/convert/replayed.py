"""A module converted by recording its forward and replaying it with lazy activations.

Where :func:`torch.fx.symbolic_trace` fails (shape-dependent padding) or leaves an
activation stored at a module boundary (a decoder block's last BN -> ReLU feeding the
next block's upsampling), the module's forward is recorded on real tensors
(:mod:`concatnets.convert.record`) and replayed by :mod:`concatnets.convert.lazy`. A
recording holds for calls like the recorded one only: programs are kept per call
signature (shapes, modes, grad and autocast state), a new signature is recorded and
checked against the module's own forward on its first call, and a call that cannot be
recorded runs the module's own forward.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch import nn

from concatnets.convert.installed import EngineForward
from concatnets.convert.lazy import Event, replay
from concatnets.convert.probe import preserved_state
from concatnets.convert.record import Program, RecordError, record, signature
from concatnets.convert.verify import difference

__all__ = ["ReplayForward", "prepare"]

_MAX_PROGRAMS = 16
_SEED = 20170706


def prepare(
    module: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    names: dict[int, str] | None = None,
) -> tuple[Program | None, list[Event], str]:
    """Record and check ``module``'s call: ``(program, events, why not)``.

    The program is None when the forward cannot be recorded, when its replay differs from
    the module's own forward (in the module's current mode), or when nothing in it runs
    on the engine; ``why not`` then says which.
    """
    try:
        program = record(module, args, kwargs)
    except RecordError as error:
        return None, [], f"its forward cannot be recorded: {error}"
    except Exception as error:  # the forward itself failed on the probe input
        return None, [], f"its forward failed while recorded: {type(error).__name__}: {error}"
    events: list[Event] = []
    with preserved_state(module):
        torch.manual_seed(_SEED)
        expected = type(module).forward(module, *args, **kwargs)
        torch.manual_seed(_SEED)
        try:
            actual = replay(program, module, args, kwargs, names=names, events=events)
        except Exception as error:
            return None, [], f"its replay failed: {type(error).__name__}: {error}"
    problem = difference(expected, actual)
    if problem is not None:
        return None, [], f"its replay differs from its forward: {problem}"
    if not any(event.converted for event in events):
        return None, events, "no convolution in it reads a normalised or concatenated map"
    return program, events, ""


def summary(events: list[Event]) -> str:
    """One line for the report: convolutions converted, by what they read."""
    done = [e for e in events if e.converted]
    kinds = Counter(e.kind for e in done)
    counts = f"{kinds['cat']} of a concatenation, {kinds['chain']} of one map"
    details = "; ".join(e.detail for e in done)
    return f"{len(done)} convolution(s) read maps not stored ({counts}): {details}"


class ReplayForward(EngineForward):
    """The module's recorded programs, replayed with lazy activations."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.programs: dict[Any, Program | None] = {}

    def add(self, key: Any, program: Program | None) -> None:
        if len(self.programs) < _MAX_PROGRAMS:
            self.programs[key] = program

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        module = self.module
        key = signature(module, args, kwargs)
        if key not in self.programs and not torch.compiler.is_compiling():
            self.add(key, prepare(module, args, kwargs)[0])
        program = self.programs.get(key)
        if program is None:
            return type(module).forward(module, *args, **kwargs)
        return replay(program, module, args, kwargs)

    def __getstate__(self) -> dict[str, Any]:
        # Programs hold tensors and bound methods: a copy records its own on first call.
        return {"module": self.module, "programs": {}}
