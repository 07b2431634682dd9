"""A recorded program run with lazy activations: each kept as its norm input and statistics.

:func:`replay` runs a :class:`~concatnets.convert.record.Program` node by node. A norm
(batch, group or instance) of a conv output, and the activation after it (ReLU,
LeakyReLU, ELU), give a :class:`Lazy` value: the norm's input and its statistics
(:class:`~concatnets.engine.NormActPart`), not the activated map. A max pooling
(kernel == stride), a nearest upsampling by an integer factor, a transposed convolution
and channel concatenations of lazy values stay lazy too; a convolution reading a lazy
value runs :func:`~concatnets.engine.norm_act_conv`, which writes it into a transient
buffer and rebuilds it in backward (Pleiss et al. 2017, arXiv 1707.06990). Anything else
(a residual sum, a padding, the model's output) gets the value through
:func:`~concatnets.engine.parts_conv.part_value`, which stores only the part's tensor and
statistics. So a U-Net decoder's ``cat([up, skip]) -> conv`` stores neither the
concatenation nor the upsampled map, and a conv -> norm -> act -> conv block stores one
map per convolution, wherever the module boundaries fall.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.instancenorm import _InstanceNorm

from concatnets.convert.installed import is_converted
from concatnets.convert.pooled import stored_pooling
from concatnets.convert.record import Node, Program, Ref, map_nested
from concatnets.engine import NormActPart, norm_act_conv, norm_stats
from concatnets.engine.activation import (
    ELU_KIND,
    LEAKY_RELU_KIND,
    RELU,
    Activation,
    activation_of_module,
    apply_activation_,
)
from concatnets.engine.group_stats import GroupStats
from concatnets.engine.layout import layout_of, to_layout
from concatnets.engine.layout_choice import preferred_layout
from concatnets.engine.parts_conv import part_value
from concatnets.engine.precision import is_reduced
from concatnets.engine.stats import norm_act_forward

__all__ = ["Lazy", "replay"]

_CATS = (torch.cat, torch.concat, torch.concatenate)
_PLAIN_FORWARDS = {
    _BatchNorm.forward,
    _InstanceNorm.forward,
    nn.GroupNorm.forward,
    nn.Conv1d.forward,
    nn.Conv2d.forward,
    nn.Conv3d.forward,
    nn.ConvTranspose1d.forward,
    nn.ConvTranspose2d.forward,
    nn.ConvTranspose3d.forward,
    nn.ReLU.forward,
    nn.LeakyReLU.forward,
    nn.ELU.forward,
    nn.MaxPool1d.forward,
    nn.MaxPool2d.forward,
    nn.MaxPool3d.forward,
    nn.Upsample.forward,
}
_MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


class _Box:
    """The forward's activation of a lazy value, for its first convolution reader only."""

    __slots__ = ("applied", "tensor")

    def __init__(self, tensor: Tensor | None = None, applied: Activation | None = None) -> None:
        self.tensor = tensor
        self.applied = applied  # the activation already applied to ``tensor``, if any

    def take(self) -> Tensor | None:
        tensor, self.tensor = self.tensor, None
        return tensor


@dataclass
class Lazy:
    """A feature map not stored: the channel concatenation of its parts' values.

    Attributes:
        parts: The parts, in channel order.
        boxes: Per part, the forward's activation if already computed.
        labels: Per part, what it is (for the report).
        cache: The materialised value once something other than a convolution read it.
    """

    parts: tuple[NormActPart, ...]
    boxes: tuple[_Box, ...]
    labels: tuple[str, ...]
    cache: Tensor | None = None

    def single(self) -> NormActPart | None:
        return self.parts[0] if len(self.parts) == 1 and self.cache is None else None


def _plain(module: nn.Module) -> bool:
    """Whether the module runs its library class's own forward (not a subclass's)."""
    return type(module).forward in _PLAIN_FORWARDS and not is_converted(module)


def _bare(part: NormActPart) -> bool:
    """A part with no stage after its activation."""
    stages = (part.crop, part.pool, part.upsample, part.then_conv, part.source_conv)
    return all(s is None for s in stages)


def _norm_supported(module: nn.Module) -> str | None:
    """Why the engine cannot normalise with ``module``, or None."""
    if not _plain(module):
        return f"{type(module).__name__} (batch, group and instance norm only)"
    if isinstance(module, _InstanceNorm) and module.track_running_stats:
        return f"{type(module).__name__}(track_running_stats=True) (per-sample statistics only)"
    return None


def _engine_conv(module: nn.Module) -> bool:
    """A library convolution the engine computes exactly (zero padding given as numbers)."""
    return (
        isinstance(module, _ConvNd)
        and _plain(module)
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def _group_stats(norm: nn.Module, z: Tensor) -> tuple[Tensor, GroupStats]:
    """``norm(z)`` for a group/instance norm and its per-sample statistics, computed once."""
    groups = int(norm.num_groups) if isinstance(norm, nn.GroupNorm) else int(z.shape[1])
    kernel_z = z
    if z.device.type != "cpu" and is_reduced(z.dtype):
        kernel_z = z.float()
    n, c = z.shape[0], z.shape[1]
    y, mean, invstd = torch.native_group_norm(
        kernel_z, norm.weight, norm.bias, n, c, z[0, 0].numel(), groups, norm.eps
    )
    return y.to(z.dtype), GroupStats(mean, invstd, groups)


def _activation_of_call(func: Callable[..., Any], args: tuple[Any, ...], kwargs: Any) -> Any:
    """The :class:`Activation` a torch call applies (F.relu, torch.relu_, F.leaky_relu...)."""
    name = getattr(func, "__name__", "")
    if func in (F.relu, torch.relu, torch.relu_) or name in ("relu", "relu_"):
        return RELU
    if func in (F.leaky_relu, torch._C._nn.leaky_relu) or name in ("leaky_relu", "leaky_relu_"):
        slope = args[1] if len(args) > 1 else kwargs.get("negative_slope", 0.01)
        if isinstance(slope, float | int) and slope >= 0:
            return Activation(LEAKY_RELU_KIND, float(slope))
    if func is F.elu or name in ("elu", "elu_"):
        alpha = args[1] if len(args) > 1 else kwargs.get("alpha", 1.0)
        if isinstance(alpha, float | int) and alpha >= 0:
            return Activation(ELU_KIND, float(alpha))
    return None


def _uniform(value: Any) -> Any:
    values = {value} if isinstance(value, int) else set(value)
    return next(iter(values)) if len(values) == 1 else None


def _pool_geometry(module: nn.Module) -> tuple[int, tuple[int, int] | None] | None:
    """``(kernel, (stride, padding) or None for (kernel, 0))`` of a max pooling the engine
    recomputes (square, no dilation, floor mode, no indices), else None."""
    if not (isinstance(module, _MAX_POOLS) and _plain(module)):
        return None
    kernel, stride, padding = (
        _uniform(module.kernel_size),
        _uniform(module.stride),
        _uniform(module.padding),
    )
    ok = (
        all(isinstance(v, int) for v in (kernel, stride, padding))
        and _uniform(module.dilation) == 1
        and not (module.ceil_mode or module.return_indices)
    )
    if not ok:
        return None
    return kernel, (None if (stride, padding) == (kernel, 0) else (stride, padding))


_INTERPOLATE = inspect.signature(F.interpolate)


def _nearest_factor(spatial: tuple[int, ...], args: Any, kwargs: Any) -> int | None:
    """The integer factor of an ``F.interpolate`` call that is a nearest upsampling."""
    try:
        bound = _INTERPOLATE.bind(None, *args[1:], **kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    a = bound.arguments
    if a["mode"] != "nearest" or a.get("antialias"):
        return None
    if a["size"] is not None:
        size = a["size"]
        size = [size] * len(spatial) if isinstance(size, int) else list(size)
        if len(size) != len(spatial) or any(o % i for o, i in zip(size, spatial, strict=True)):
            return None
        factor = _uniform(tuple(o // i for o, i in zip(size, spatial, strict=True)))
    else:
        scale = a["scale_factor"]
        scale = _uniform(scale if isinstance(scale, tuple | list) else (scale,))
        factor = int(scale) if isinstance(scale, float | int) and scale == int(scale) else None
    return factor if isinstance(factor, int) and factor >= 1 else None


def _spatial(part: NormActPart) -> tuple[int, ...]:
    return part.pooled_size(part.tensor.shape[2:])


@dataclass
class Event:
    """What the replay did at one place: a convolution reading a lazy value, or why an
    activation was materialised or a norm left plain."""

    converted: bool
    detail: str
    kind: str = ""


class _Replay:
    def __init__(
        self,
        program: Program,
        module: nn.Module,
        names: dict[int, str],
        events: list[Event] | None,
    ) -> None:
        self.program = program
        self.module = module
        self.names = names
        self.events = events
        self.values: list[Any] = [None] * len(program.nodes)
        # Random masks are drawn in memory order: another layout would draw others; a
        # converted dense block keeps its own buffers' layout (no copies at its borders).
        self.relayout = not any(
            _draws_random(node) or (node.kind == "leaf" and is_converted(node.target))
            for node in program.nodes
        )

    def name(self, module: nn.Module) -> str:
        return self.names.get(id(module), type(module).__name__)

    def log(self, converted: bool, detail: str, kind: str = "") -> None:
        if self.events is not None:
            self.events.append(Event(converted, detail, kind))

    # Values ---------------------------------------------------------------------------
    def resolve(self, template: Any, lazy: bool) -> Any:
        def value_of(leaf: Any) -> Any:
            if not isinstance(leaf, Ref):
                return leaf
            value = self.values[leaf.node]
            for index in leaf.path:
                value = value[index]
            return value if lazy else self.materialize(value)

        return map_nested(template, value_of)

    def materialize(self, value: Any) -> Any:
        if not isinstance(value, Lazy):
            return value
        if value.cache is None:
            if len(value.parts) == 1:
                part, box = value.parts[0], value.boxes[0]
                handed = box.take()
                if handed is not None and part.pool is None:
                    part = replace(part, value=handed)
                value.cache = part_value(part)
            else:
                pieces = [
                    Lazy((p,), (b,), (label,))
                    for p, b, label in zip(value.parts, value.boxes, value.labels, strict=True)
                ]
                value.cache = torch.cat([self.materialize(p) for p in pieces], dim=1)
        return value.cache

    def readable(self, value: Lazy) -> list[NormActPart]:
        if value.cache is not None and len(value.parts) == 1:
            return [replace(value.parts[0], result=value.cache)]
        parts = []
        for part, box in zip(value.parts, value.boxes, strict=True):
            handed = box.take()
            parts.append(
                part if handed is None or part.pool is not None else replace(part, value=handed)
            )
        return parts

    # Steps ----------------------------------------------------------------------------
    def single_input(self, node: Node) -> Any:
        """The node's one tensor argument (lazy or not), or None when it has others."""
        if len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], Ref):
            return None
        return self.resolve(node.args[0], lazy=True)

    def only_reader(self, ref: Any, index: int) -> bool:
        if not isinstance(ref, Ref) or ref.path:
            return False
        owner = self.program.nodes[ref.node]
        return owner.users == [index] and not owner.mutated

    def step(self, index: int, node: Node) -> Any:
        result = None
        if not node.mutated:
            result = self.leaf(index, node) if node.kind == "leaf" else self.call(index, node)
        if result is None:
            result = self.plain(node)
        if (
            self.relayout
            and isinstance(result, Tensor)
            and node.kind == "leaf"
            and isinstance(node.target, _ConvNd)
            and result.dim() in (4, 5)
        ):
            # The engine's layout (channels-last where oneDNN computes in it: a default-
            # layout convolution there copies its input and output gradient into
            # channels-last internally, transients that are not tensors). Later
            # convolutions then keep it; the output gets the original's back.
            result = to_layout(result, preferred_layout(result))
        return result

    def plain(self, node: Node) -> Any:
        args = self.resolve(node.args, lazy=False)
        kwargs = self.resolve(node.kwargs, lazy=False)
        return node.target(*args, **kwargs)

    def leaf(self, index: int, node: Node) -> Any:
        module: nn.Module = node.target
        x = self.single_input(node)
        if x is None:
            return None
        if isinstance(module, _NORM_TYPES):
            return self.norm(index, node, module, x)
        if isinstance(module, nn.Identity) or (
            isinstance(module, _DROPOUTS) and (not module.training or module.p == 0)
        ):
            return x
        if self.relayout and isinstance(x, Tensor) and isinstance(module, _ConvNd):
            # A stored input of several channels (an RGB image) takes the engine's layout
            # before the convolution: cheaper than converting the wider output after.
            layout = preferred_layout(x) if x.dim() in (4, 5) and x.shape[1] > 1 else None
            if layout is not None and layout_of(x) != layout:
                return module(to_layout(x, layout))
        if not isinstance(x, Lazy):
            # An activation of a stored tensor stays plain: kept lazily it would store its
            # input instead of its output, the same size, and cost recomputation.
            return None
        act = activation_of_module(module) if _plain(module) else None
        if act is not None:
            return self.activate(x, act, type(module).__name__)
        pooling = _pool_geometry(module)
        part = x.single()
        if pooling is not None and part is not None and part.pool is None and _bare(part):
            # A lazy pooling must see the activation backward rebuilds: the forward's
            # activation serves a stored pooling only.
            handed = x.boxes[0].take()
            label = f"{x.labels[0]} -> {self.name(module)}"
            kernel, shape = pooling
            pooled = replace(part, pool=kernel, pool_shape=shape, value=None)
            lazily = [self.reads_lazily(user) for user in node.users]
            if any(lazily) and not all(lazily):
                # A convolution and something that reads it whole (a residual sum): store
                # it once rather than rebuild it for each (a whole reader alone, as a
                # converted dense block, gets it recomputed and stores nothing more).
                stored = stored_pooling(replace(pooled, value=handed))
                if stored is not None:
                    self.log(False, f"{label}: stored with its pooling indices (read whole)")
                    return stored
            return Lazy((pooled,), (_Box(),), (label,))
        if _engine_conv(module):
            return self.conv(module, x)  # type: ignore[arg-type]
        if isinstance(module, nn.Upsample) and _plain(module) and part is not None:
            factor = _nearest_factor(
                _spatial(part),
                (None,),
                {"size": module.size, "scale_factor": module.scale_factor, "mode": module.mode},
            )
            return self.upsample(x, part, factor, self.name(module))
        self.note_materialized(x, self.name(module))
        return None

    def conv(self, module: _ConvNd, x: Lazy) -> Any:
        part = x.single()
        if module.transposed and part is not None and part.then_conv is None:
            label = f"{x.labels[0]} -> {self.name(module)} (recomputed)"
            return Lazy((replace(part, then_conv=module),), x.boxes, (label,))
        target = self.name(module)
        if len(x.parts) == 1:
            self.log(True, f"{x.labels[0]} -> {target}", "chain")
        else:
            self.log(True, f"cat({len(x.parts)}) -> {target} ({'; '.join(x.labels)})", "cat")
        return norm_act_conv(self.readable(x), module)

    def upsample(self, x: Lazy, part: NormActPart, factor: int | None, what: str) -> Any:
        if factor is None or part.upsample is not None or part.then_conv is not None:
            self.note_materialized(x, what)
            return None
        if factor == 1:
            return x
        label = f"{x.labels[0]} -> nearest x{factor}"
        return Lazy((replace(part, upsample=factor),), x.boxes, (label,))

    def norm(self, index: int, node: Node, module: nn.Module, z: Any) -> Any:
        why = _norm_supported(module)
        if why is None and not self.only_reader(node.args[0], index):
            why = "its input has other readers"
        if why is None and isinstance(z, Lazy):
            why = "its input is not a stored tensor"
        if why is None and not any(self.reads_lazily(user) for user in node.users):
            # A residual sum's norm: kept lazily it would store the same input and
            # recompute its value in backward for nothing.
            why = "no reader keeps it unstored"
        if why is not None:
            self.log(False, f"{self.name(module)}: left plain: {why}")
            return None
        label = self.name(module)
        if isinstance(module, _BatchNorm):
            if self.next_is_relu(index):
                with torch.no_grad():
                    value, stats = norm_act_forward(module, z, module.weight, module.bias)
                part = NormActPart(z, module, stats, activation=False)
                return Lazy((part,), (_Box(value, RELU),), (label,))
            stats = norm_stats(module, z)
            return Lazy((NormActPart(z, module, stats, activation=False),), (_Box(),), (label,))
        with torch.no_grad():
            y, group = _group_stats(module, z)
        return Lazy((NormActPart(z, module, group, activation=False),), (_Box(y),), (label,))

    def reads_lazily(self, index: int) -> bool:
        """Whether node ``index`` may take a lazy value without materialising it (an
        activation, pooling, upsampling, convolution, concatenation or pass-through)."""
        if index >= len(self.program.nodes):
            return False  # the output
        reader = self.program.nodes[index]
        if reader.kind == "leaf":
            module = reader.target
            return (
                isinstance(module, (nn.Identity, nn.Upsample, *_DROPOUTS))
                or (_plain(module) and activation_of_module(module) is not None)
                or _pool_geometry(module) is not None
                or _engine_conv(module)
            )
        if reader.kind != "call":
            return False
        func = reader.target
        return (
            func in _CATS
            or func in (F.pad, F.interpolate)
            or _activation_of_call(func, reader.args, reader.kwargs) is not None
        )

    def next_is_relu(self, index: int) -> bool:
        users = self.program.nodes[index].users
        if len(users) != 1 or users[0] >= len(self.program.nodes):
            return False
        reader = self.program.nodes[users[0]]
        if reader.kind == "leaf":
            return _plain(reader.target) and activation_of_module(reader.target) == RELU
        return _activation_of_call(reader.target, reader.args, reader.kwargs) == RELU

    def activate(self, x: Lazy, act: Activation, what: str) -> Any:
        part = x.single()
        if part is None or part.activation is not False or not _bare(part) or part.norm is None:
            self.note_materialized(x, what)
            return None
        box = x.boxes[0]
        applied = box.applied
        handed = box.take()
        if handed is not None and applied is None:
            with torch.no_grad():
                apply_activation_(handed, act)
        elif applied != act:
            handed = None
        label = f"{x.labels[0]} -> {act}"
        return Lazy((replace(part, activation=act),), (_Box(handed),), (label,))

    def upsample_tensor(self, node: Node, x: Tensor) -> Any:
        """A nearest upsampling of a stored map, recomputed by its reader (not stored)."""
        if not x.is_floating_point() or x.dim() < 3:
            return None
        raw = NormActPart(x, activation=False)
        factor = _nearest_factor(_spatial(raw), node.args, node.kwargs)
        if factor is None or factor == 1:
            return None
        source = self.program.nodes[node.args[0].node]
        producer = self.name(source.target) if source.kind == "leaf" else source.kind
        label = f"{producer} output -> nearest x{factor}"
        return Lazy((replace(raw, upsample=factor),), (_Box(),), (label,))

    def call(self, index: int, node: Node) -> Any:
        func = node.target
        if func in _CATS:
            return self.cat(node)
        if func is F.pad:
            pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
            x = self.resolve(node.args[0], lazy=True) if isinstance(node.args[0], Ref) else None
            if isinstance(pad, list | tuple) and all(p == 0 for p in pad):
                return x
            if isinstance(x, Lazy):
                self.note_materialized(x, "pad")
            return None
        if not node.args or not isinstance(node.args[0], Ref):
            return None
        x = self.resolve(node.args[0], lazy=True)
        if not isinstance(x, Lazy):
            if func is F.interpolate and isinstance(x, Tensor):
                return self.upsample_tensor(node, x)
            return None
        act = _activation_of_call(func, node.args, node.kwargs)
        name = getattr(func, "__name__", repr(func))
        if act is not None:
            return self.activate(x, act, name)
        if func is F.interpolate:
            part = x.single()
            if part is not None:
                factor = _nearest_factor(_spatial(part), node.args, node.kwargs)
                return self.upsample(x, part, factor, "F.interpolate")
        self.note_materialized(x, name)
        return None

    def cat(self, node: Node) -> Any:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if not isinstance(tensors, list | tuple) or not tensors:
            return None
        values = [self.resolve(t, lazy=True) for t in tensors]
        first = values[0]
        ndim = len(first.parts[0].tensor.shape) if isinstance(first, Lazy) else first.dim()
        if dim not in (1, 1 - ndim) or ndim < 3:
            return None
        parts: list[NormActPart] = []
        boxes: list[_Box] = []
        labels: list[str] = []
        for value in values:
            if isinstance(value, Lazy) and value.cache is None:
                parts.extend(value.parts)
                boxes.extend(value.boxes)
                labels.extend(value.labels)
            else:
                t = self.materialize(value)
                if not isinstance(t, Tensor) or not t.is_floating_point():
                    return None
                parts.append(NormActPart(t, activation=False))
                boxes.append(_Box())
                labels.append("stored map")
        return Lazy(tuple(parts), tuple(boxes), tuple(labels))

    def note_materialized(self, x: Lazy, reader: str) -> None:
        if any(p.norm is not None for p in x.parts) and x.cache is None:
            self.log(False, f"{'; '.join(x.labels)} read by {reader}: materialised (recomputed)")

    # Run ------------------------------------------------------------------------------
    def run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        nodes = self.program.nodes
        inputs: list[Tensor] = []
        _flatten((args, kwargs), inputs)
        # In float16/bfloat16 another layout's kernels round differently, and the replay
        # would drift from the module's own forward by more than its check allows.
        self.relayout = self.relayout and not any(
            torch.is_autocast_enabled(t.device.type) or is_reduced(t.dtype)
            for t in inputs
            if t.is_floating_point()
        )
        reads: list[list[int]] = [[] for _ in nodes]
        for owner, node in enumerate(nodes):
            for user in node.users:
                if user < len(nodes):
                    reads[user].append(owner)
        left = [len(n.users) for n in nodes]
        for index, node in enumerate(nodes):
            if node.kind == "input":
                value: Any = inputs[node.target]
            elif node.kind == "param":
                value = (
                    self.module.get_parameter(node.target)
                    if _is_param(self.module, node.target)
                    else self.module.get_buffer(node.target)
                )
            elif node.kind == "const":
                value = node.target
            else:
                value = self.step(index, node)
            self.values[index] = value
            for owner in reads[index]:
                left[owner] -= 1
                if left[owner] == 0:
                    self.values[owner] = None
        formats = iter(self.program.output_formats)

        def original_format(value: Any) -> Any:
            if not isinstance(value, Tensor):
                return value
            layout = next(formats, None)
            return value if layout is None or value.dim() < 4 else to_layout(value, layout)

        return map_nested(self.resolve(self.program.output, lazy=False), original_format)


_RANDOM_CALLS = ("dropout", "bernoulli", "rand", "normal", "uniform", "multinomial", "exponential")


def _draws_random(node: Node) -> bool:
    """Whether the node may draw random numbers (a dropout, also inside a converted block)."""
    if node.kind == "leaf":
        return any(
            isinstance(m, _DROPOUTS) and m.p > 0 and m.training for m in node.target.modules()
        )
    name = getattr(node.target, "__name__", "")
    return node.kind == "call" and any(word in name for word in _RANDOM_CALLS)


def _is_param(module: nn.Module, name: str) -> bool:
    try:
        module.get_parameter(name)
    except AttributeError:
        return False
    return True


def _flatten(value: Any, out: list[Tensor]) -> None:
    if isinstance(value, Tensor):
        out.append(value)
    elif isinstance(value, list | tuple):
        for v in value:
            _flatten(v, out)
    elif isinstance(value, dict):
        for v in value.values():
            _flatten(v, out)


def replay(
    program: Program,
    module: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    names: dict[int, str] | None = None,
    events: list[Event] | None = None,
) -> Any:
    """Run ``program`` (recorded from ``module``) on ``args`` with lazy activations.

    Args:
        names: Module names for the events.
        events: Receives what was converted and what not, when given.
    """
    return _Replay(program, module, names or {}, events).run(args, kwargs)
