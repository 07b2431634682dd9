"""A module's forward recorded as the program it ran on one input: leaf modules and torch calls.

:func:`torch.fx.symbolic_trace` runs a forward on proxies, so shape-dependent Python (MONAI
``UpCat``'s padding, smp's input-shape check) stops it. Here the forward runs on real
tensors (under ``no_grad``, state preserved) while a :class:`TorchFunctionMode` and
module hooks write down, in execution order, every call of a leaf module (one without
children: convolutions, norms, activations, poolings) and every torch call made outside
leaves. Python control flow is resolved as it ran, so the program is valid only for calls
like the recorded one (same input shapes, modes, grad and autocast state): the caller
keys programs by :func:`signature`. A forward whose Python reads tensor *values* (``item``,
``bool``, ``tolist``) is refused, since another input could take another branch.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from concatnets.convert.installed import is_converted
from concatnets.convert.probe import preserved_state
from concatnets.engine.layout import layout_of

__all__ = ["Node", "Program", "RecordError", "Ref", "map_nested", "record", "signature"]

# Torch calls whose non-tensor result depends only on metadata fixed by the signature.
_METADATA = frozenset(
    {
        "__get__",  # attribute getters: shape, ndim, dtype, device, is_cuda, requires_grad
        "size",
        "dim",
        "ndimension",
        "numel",
        "nelement",
        "stride",
        "__len__",
        "is_contiguous",
        "is_floating_point",
        "is_complex",
        "element_size",
        "get_device",
        "type",
        "__hash__",
        "__repr__",
        "__format__",
        "storage_offset",
        "data_ptr",
    }
)


class RecordError(RuntimeError):
    """The forward cannot be recorded as a fixed program (the message says why)."""


@dataclass(frozen=True)
class Ref:
    """A tensor produced by node ``node`` (``path`` indexes into a tuple/list output)."""

    node: int
    path: tuple[int, ...] = ()


@dataclass
class Node:
    """One step of a :class:`Program`.

    Attributes:
        kind: ``"input"`` (a tensor of the call's arguments), ``"leaf"`` (a module call),
            ``"call"`` (a torch function or tensor method), ``"param"`` (a parameter or
            buffer of the recorded module, by name) or ``"const"`` (any other tensor).
        target: The input's position, the module, the function, the name or the tensor.
        args, kwargs: Templates with :class:`Ref` where a recorded tensor goes.
        users: Nodes (and the output) that read this node.
        mutated: Whether a reader saw it after an in-place change (then it stays plain).
    """

    kind: str
    target: Any
    args: Any = ()
    kwargs: Any = field(default_factory=dict)
    users: list[int] = field(default_factory=list)
    mutated: bool = False


@dataclass
class Program:
    """The recorded nodes, the argument template and the output template.

    ``output_formats`` holds the memory format of each output tensor, in
    :func:`map_nested` order, as the module's own forward returned it.
    """

    nodes: list[Node]
    inputs: Any
    output: Any
    output_formats: list[torch.memory_format] = field(default_factory=list)


def _is_leaf(module: nn.Module) -> bool:
    return is_converted(module) or next(module.children(), None) is None


def signature(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """What a recorded program is valid for: argument shapes and values, modes, autocast
    state, and the parameters' dtype and device (recording always runs under ``no_grad``)."""

    def describe(value: Any) -> Any:
        if isinstance(value, Tensor):
            return ("T", tuple(value.shape), value.dtype, value.device.type, value.requires_grad)
        if isinstance(value, list | tuple):
            return (type(value).__name__, tuple(describe(v) for v in value))
        if isinstance(value, dict):
            return ("d", tuple((k, describe(v)) for k, v in value.items()))
        try:
            hash(value)
        except TypeError:
            return ("?", id(value))
        return value

    first = next(module.parameters(), None)
    return (
        describe(args),
        describe(kwargs),
        tuple(m.training for m in module.modules()),
        torch.is_autocast_enabled("cpu"),
        torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None,
        None if first is None else (first.dtype, first.device),
    )


def map_nested(value: Any, leaf: Callable[[Any], Any]) -> Any:
    """``value`` with ``leaf`` applied to everything inside its lists, tuples and dicts
    (the containers keep their kind; anything else is a leaf)."""
    if isinstance(value, list | tuple):
        items = [map_nested(v, leaf) for v in value]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, dict):
        return {k: map_nested(v, leaf) for k, v in value.items()}
    return leaf(value)


class _Recorder(TorchFunctionMode):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.nodes: list[Node] = []
        # id(tensor) -> (weak reference, ref, version); the weak reference tells a live
        # tensor from a new one that took a dead one's id, without keeping any alive.
        self.produced: dict[int, tuple[weakref.ref[Tensor], Ref, int]] = {}
        self.named = {id(t): n for n, t in module.named_parameters()}
        self.named.update({id(t): n for n, t in module.named_buffers()})
        self.depth = 0
        self.pending: list[tuple[Node, list[tuple[int, bool]]]] = []

    def template(self, value: Any, reads: list[tuple[int, bool]]) -> Any:
        """``value`` with each tensor replaced by its :class:`Ref`; ``reads`` gets
        ``(node, whether the tensor changed in place since it was produced)``."""

        def ref_of(leaf: Any) -> Any:
            if not isinstance(leaf, Tensor):
                return leaf
            known = self.produced.get(id(leaf))
            if known is None or known[0]() is not leaf:
                name = self.named.get(id(leaf))
                node = Node("const", leaf) if name is None else Node("param", name)
                self.nodes.append(node)
                known = self.remember(leaf, Ref(len(self.nodes) - 1))
            _, ref, version = known
            reads.append((ref.node, leaf._version != version))
            return ref

        return map_nested(value, ref_of)

    def remember(self, tensor: Tensor, ref: Ref) -> tuple[weakref.ref[Tensor], Ref, int]:
        entry = (weakref.ref(tensor), ref, tensor._version)
        self.produced[id(tensor)] = entry
        return entry

    def commit(self, node: Node, reads: list[tuple[int, bool]], output: Any) -> None:
        index = len(self.nodes)
        self.nodes.append(node)
        for owner, changed in reads:
            self.nodes[owner].users.append(index)
            self.nodes[owner].mutated |= changed

        def walk(value: Any, path: tuple[int, ...]) -> None:
            if isinstance(value, Tensor):
                self.remember(value, Ref(index, path))
            elif isinstance(value, list | tuple):
                for i, v in enumerate(value):
                    walk(v, (*path, i))

        walk(output, ())

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if self.depth:
            return func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name in _METADATA:
            output = func(*args, **kwargs)
            if not _holds_tensor(output):
                return output
        reads: list[tuple[int, bool]] = []
        node = Node("call", func, self.template(args, reads), self.template(kwargs, reads))
        output = func(*args, **kwargs)
        if not _holds_tensor(output) and name != "__setitem__":
            raise RecordError(f"its Python reads tensor values ({name or func!r})")
        self.commit(node, reads, output)
        return output

    def before(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.depth == 0:
            reads: list[tuple[int, bool]] = []
            node = Node("leaf", module, self.template(args, reads), self.template(kwargs, reads))
            self.pending.append((node, reads))
        self.depth += 1

    def after(self, module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        self.depth -= 1
        if self.depth == 0:
            node, reads = self.pending.pop()
            self.commit(node, reads, output)


def _holds_tensor(value: Any) -> bool:
    if isinstance(value, Tensor):
        return True
    if isinstance(value, list | tuple):
        return any(_holds_tensor(v) for v in value)
    return False


def record(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Program:
    """``module(*args, **kwargs)`` as a :class:`Program` (the module's state is kept).

    Raises:
        RecordError: When the forward's Python reads tensor values.
    """
    recorder = _Recorder(module)
    inside = {
        id(m) for c in module.modules() if c is not module and is_converted(c) for m in c.modules()
    }
    leaves = [
        m
        for m in module.modules()
        if m is not module and _is_leaf(m) and (id(m) not in inside or is_converted(m))
    ]
    handles = []
    for leaf in leaves:
        handles.append(leaf.register_forward_pre_hook(recorder.before, with_kwargs=True))
        handles.append(leaf.register_forward_hook(recorder.after, with_kwargs=True))
    count = 0

    def place(value: Any) -> Any:
        nonlocal count
        if not isinstance(value, Tensor):
            return value
        ref = Ref(len(recorder.nodes))
        recorder.nodes.append(Node("input", count))
        recorder.remember(value, ref)
        count += 1
        return ref

    template = map_nested((args, kwargs), place)
    try:
        with preserved_state(module), recorder:
            output = type(module).forward(module, *args, **kwargs)
            reads: list[tuple[int, bool]] = []
            out_template = recorder.template(output, reads)
            for owner, changed in reads:
                recorder.nodes[owner].users.append(len(recorder.nodes))
                recorder.nodes[owner].mutated |= changed
    finally:
        for handle in handles:
            handle.remove()
    formats: list[torch.memory_format] = []
    map_nested(output, lambda t: formats.append(layout_of(t)) if isinstance(t, Tensor) else None)
    return Program(recorder.nodes, template, out_template, formats)
