"""Check ``--model-arg KEY=VALUE`` keys against the model builder's own parameters."""

from __future__ import annotations

import difflib
import inspect
import typing
from collections.abc import Mapping
from typing import Any

from concatnets.models import get_model_spec

__all__ = ["check_model_args"]


def _accepted_keys(builder: Any) -> list[str] | None:
    """The keyword parameters of ``builder``, or ``None`` where they cannot be known.

    A builder that forwards ``**overrides`` to the class it returns (as DenseNet-BC's
    does) accepts that class's parameters too.
    """
    try:
        parameters = list(inspect.signature(builder).parameters.values())
    except (TypeError, ValueError):  # no introspectable signature
        return None
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = [p.name for p in parameters if p.kind in keyword]
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return names
    try:
        returned = typing.get_type_hints(builder).get("return")
    except Exception:  # unresolvable annotations: do not guess
        return None
    if not inspect.isclass(returned):
        return None
    forwarded = _accepted_keys(returned)
    if forwarded is None:
        return None
    return names + [name for name in forwarded if name not in names]


def check_model_args(model: str, model_args: Mapping[str, Any]) -> None:
    """Refuse a builder argument that model ``model`` does not take, naming the valid ones.

    Args:
        model: Registry name.
        model_args: The ``--model-arg`` / ``model_args`` settings.

    Raises:
        ValueError: The first unknown key, with the closest valid key and all of them.
    """
    valid = _accepted_keys(get_model_spec(model).builder)
    if valid is None:
        return
    for key, value in model_args.items():
        if key in valid:
            continue
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"--model-arg {key}={value}: model {model!r} has no argument {key!r} "
            f"(valid: {', '.join(valid)}){hint}"
        )
