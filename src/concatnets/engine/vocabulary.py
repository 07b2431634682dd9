"""A small vocabulary to write a network's forward once, for both memory modes.

A model written with these operations runs two ways. Given plain tensors (the naive
mode, :func:`run` with ``engine=False``) every operation is the plain PyTorch call:
``conv(x, c)`` is ``c(x)``, ``cat`` is ``torch.cat``, ``activate(norm, act, z)`` is
``act(norm(z))``. Given the engine's :class:`EngineMap` (``engine=True``) the same
operations describe feature maps that are not materialised: an activated map is kept as
the convolution output before its normalisation plus the normalisation's statistics
(:class:`~concatnets.engine.NormActPart`); crops, poolings, concatenations and
up-convolutions stay lazy until a convolution reads them, through
:func:`~concatnets.engine.norm_act_conv`, which writes them into one transient buffer and
rebuilds them in backward (Pleiss et al. 2017, arXiv 1707.06990). So a forward written
once stores, on the engine, one pre-normalisation map and its statistics per activation
and none of the concatenations.

What the engine cannot express (another activation, dropout, a residual sum, a plain
torch call on an :class:`EngineMap`) raises :class:`EngineUnsupportedError` in engine
mode naming the operation and the fix, never silently computing something else.

>>> from torch import nn
>>> block = [nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()]
>>> def forward(x):
...     return conv(activate(block[1], block[2], conv(x, block[0])), nn.Conv2d(4, 2, 1))
>>> x = torch.randn(2, 1, 8, 8)
>>> run(forward, x, engine=True).shape
torch.Size([2, 2, 8, 8])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar, Union

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from concatnets.engine.activation import Activation, activation_of_module
from concatnets.engine.group_stats import group_norm_forward, is_group_norm
from concatnets.engine.layout import to_layout
from concatnets.engine.layout_choice import preferred_layout
from concatnets.engine.parts_conv import NormActPart, norm_act_conv, source_conv_output
from concatnets.engine.precision import in_engine_precision
from concatnets.engine.stats import norm_act_forward, norm_stats
from concatnets.ops import crop_slices

__all__ = [
    "EngineMap",
    "EngineUnsupportedError",
    "FeatureMap",
    "activate",
    "cat",
    "center_crop",
    "conv",
    "dropout",
    "pool",
    "run",
    "spatial_size",
    "upsample",
]

FeatureMap = Union[Tensor, "EngineMap"]
Result = TypeVar("Result", FeatureMap, list[FeatureMap])

_MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_NAIVE_FIX = "run this model with memory_efficient=False (or 'checkpoint' where offered)"


class EngineUnsupportedError(ValueError):
    """An operation the memory engine cannot run; the message names it and the fix."""


def _unsupported(what: str, supported: str) -> EngineUnsupportedError:
    return EngineUnsupportedError(
        f"the memory engine does not support {what} (it supports {supported}); {_NAIVE_FIX}, "
        "or express the forward with concatnets.engine.vocabulary operations it supports"
    )


class _Handoff:
    """The activation the statistics kernel produced in forward, for its first reader.

    The fused kernel that finds batch statistics also gives the normalised map; the first
    convolution that reads the map uses it instead of normalising again, and releases it,
    so a map kept for later readers (a skip) holds only its conv output and statistics.
    """

    __slots__ = ("tensor",)

    def __init__(self, tensor: Tensor | None = None) -> None:
        self.tensor = tensor

    def take(self) -> Tensor | None:
        tensor, self.tensor = self.tensor, None
        return tensor


@dataclass(frozen=True)
class EngineMap:
    """A feature map on the engine, not yet materialised: the channel concatenation of
    its parts' values (see :class:`~concatnets.engine.NormActPart`).

    Build it with :func:`run`; transform it with this module's operations. Plain torch
    calls on it raise :class:`EngineUnsupportedError`.

    Attributes:
        parts: The parts, in channel order; a map that is not a concatenation has one.
        handoffs: Per part, the forward's already computed activation (see ``_Handoff``).
        network_input: Whether the map is the network's input, whose first convolution
            is cheaper to recompute in backward than to store (the input has few channels).
    """

    parts: tuple[NormActPart, ...]
    handoffs: tuple[_Handoff, ...] = field(default=())
    network_input: bool = False

    def __post_init__(self) -> None:
        if not self.handoffs:
            object.__setattr__(self, "handoffs", tuple(_Handoff() for _ in self.parts))

    @property
    def channels(self) -> int:
        """Channels of the map."""
        return sum(part.channels for part in self.parts)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(N, C, *spatial)`` of the map."""
        first = self.parts[0]
        return (int(first.tensor.shape[0]), self.channels, *_part_spatial(first))

    @classmethod
    def __torch_function__(
        cls, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None
    ) -> Any:
        raise _unsupported(
            f"the torch call {getattr(func, '__name__', func)!r} on an EngineMap",
            "conv, cat, activate, pool, center_crop, upsample",
        )

    def __add__(self, other: object) -> Any:
        raise _unsupported("a sum of feature maps (a residual connection)", "concatenations")

    __radd__ = __add__


def _part_spatial(part: NormActPart) -> tuple[int, ...]:
    """Spatial size of a part's value, from its tensor and the geometry of its stages."""
    size = tuple(int(s) for s in part.tensor.shape[2:])
    if part.source_conv is not None:
        size = _conv_size(part.source_conv, size)
    if part.crop is not None:
        size = tuple(s.stop - s.start for s in part.crop)
    size = part.pooled_size(size)
    if part.upsample is not None:
        size = tuple(s * part.upsample for s in size)
    if part.then_conv is not None:
        size = _conv_size(part.then_conv, size)
    return size


def _conv_size(conv: _ConvNd, size: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    for axis, s in enumerate(size):
        k, st, p, d = (
            conv.kernel_size[axis],
            conv.stride[axis],
            conv.padding[axis],  # type: ignore[index]
            conv.dilation[axis],
        )
        if conv.transposed:
            out.append((s - 1) * st - 2 * p + d * (k - 1) + conv.output_padding[axis] + 1)
        else:
            out.append((s + 2 * p - d * (k - 1) - 1) // st + 1)
    return tuple(out)


def spatial_size(x: FeatureMap) -> tuple[int, ...]:
    """Spatial size of a feature map in either mode."""
    return tuple(x.shape[2:])


def _single(x: EngineMap, operation: str) -> NormActPart:
    if len(x.parts) != 1:
        raise _unsupported(f"{operation} of a concatenation", f"{operation} of one map")
    return x.parts[0]


def _readable(x: EngineMap) -> list[NormActPart]:
    """The parts as a convolution reads them, each with its handed-off activation."""
    parts = []
    for part, handoff in zip(x.parts, x.handoffs, strict=True):
        value = handoff.take()
        parts.append(part if value is None or part.pool is not None else replace(part, value=value))
    return parts


def _raw(tensor: Tensor) -> EngineMap:
    """A stored map read as it is (no normalisation, no activation)."""
    return EngineMap((NormActPart(tensor, activation=False),))


def _is_plain(part: NormActPart) -> bool:
    """Whether a part's value is its tensor itself."""
    stages = (part.norm, part.source_conv, part.crop, part.pool, part.then_conv)
    return not part.activation and all(stage is None for stage in stages)


def _materialize(x: EngineMap, operation: str) -> Tensor:
    """The map as a tensor: a stored map, or a pending convolution run now."""
    if len(x.parts) == 1:
        part = x.parts[0]
        if _is_plain(part):
            return part.tensor
        if part.then_conv is not None:
            (inner,) = _readable(x)
            return norm_act_conv([replace(inner, then_conv=None)], part.then_conv)
    raise _unsupported(
        f"{operation} of an activated, cropped, pooled or concatenated map",
        f"{operation} of a convolution's output",
    )


def conv(x: FeatureMap, module: nn.Module) -> FeatureMap:
    """``module(x)`` for a (transposed) convolution, or a module written in this
    vocabulary (such as a U-Net's upsampling block), which is simply called.

    On the engine the convolution of one map is pending: a following :func:`activate`
    or :func:`pool` runs it (storing its output), a concatenation read by another
    convolution recomputes it in backward instead of storing it (worth it for the 2x2
    up-convolution of a U-Net decoder). A convolution of a concatenation runs at once
    and stores only its output.
    """
    if not isinstance(x, EngineMap):
        return module(x)  # type: ignore[no-any-return]
    if not isinstance(module, _ConvNd):
        return module(x)  # type: ignore[no-any-return]  # torch calls on x raise
    if len(x.parts) == 1 and x.parts[0].then_conv is None:
        pending = replace(x.parts[0], then_conv=module)
        return EngineMap((pending,), x.handoffs, x.network_input)
    return _raw(norm_act_conv(_readable(x), module))


def cat(maps: Sequence[FeatureMap]) -> FeatureMap:
    """``torch.cat(maps, dim=1)``; on the engine never materialised (read by a conv)."""
    if not any(isinstance(m, EngineMap) for m in maps):
        return torch.cat(list(maps), dim=1)  # type: ignore[arg-type]
    pieces: list[EngineMap] = []
    for m in maps:
        if not isinstance(m, EngineMap):
            raise _unsupported("a concatenation of a plain tensor and an EngineMap", "maps")
        for part, handoff in zip(m.parts, m.handoffs, strict=True):
            piece = EngineMap((part,), (handoff,))
            if part.then_conv is not None and not _cheap_to_recompute(part.then_conv):
                piece = _raw(_materialize(piece, "cat()"))  # stored rather than recomputed
            pieces.append(piece)
    parts = tuple(p for piece in pieces for p in piece.parts)
    return EngineMap(parts, tuple(h for piece in pieces for h in piece.handoffs))


def _cheap_to_recompute(module: _ConvNd) -> bool:
    """A transposed or 1x1 convolution: recomputed in backward rather than stored."""
    return bool(module.transposed) or all(k == 1 for k in module.kernel_size)


def _activation_flag(act: nn.Module) -> bool | Activation:
    """True for ReLU (fused with the normalisation), False for none, else the
    :class:`Activation` (LeakyReLU with a non-negative slope, ELU) the engine rebuilds."""
    if isinstance(act, nn.ReLU):
        return True
    if isinstance(act, nn.Identity):
        return False
    activation = activation_of_module(act)
    if activation is None:
        raise _unsupported(
            f"the activation {act!r}",
            "nn.ReLU, nn.LeakyReLU and nn.ELU (non-negative slope or alpha) and nn.Identity",
        )
    return activation


def _check_norm(norm: nn.Module) -> None:
    if isinstance(norm, nn.modules.batchnorm._BatchNorm | nn.Identity) or is_group_norm(norm):
        return
    raise _unsupported(
        f"the normalisation {type(norm).__name__}",
        "batch, group and instance norm and nn.Identity",
    )


def _normalized(
    norm: nn.Module, z: Tensor, activation: bool | Activation
) -> tuple[NormActPart, Tensor | None]:
    """``z`` under ``norm`` (and its activation) as a part, statistics (and running stats)
    computed once, and the forward's activation when the fused ReLU kernel gave it."""
    fused_relu = activation is True
    if isinstance(norm, nn.modules.batchnorm._BatchNorm):
        if not fused_relu:
            return NormActPart(z, norm, norm_stats(norm, z), activation=activation), None
        value, stats = norm_act_forward(norm, z, norm.weight, norm.bias)
        return NormActPart(z, norm, stats), value
    if is_group_norm(norm):  # group and instance norm: per-sample statistics
        value, group_stats = group_norm_forward(norm, z, norm.weight, norm.bias)
        part = NormActPart(z, norm, group_stats, activation=activation)
        return part, (value if fused_relu else None)
    return NormActPart(z, activation=activation), None  # nn.Identity


def activate(norm: nn.Module, act: nn.Module, z: FeatureMap) -> FeatureMap:
    """``act(norm(z))`` of a convolution's output ``z``.

    On the engine only ``z`` (the pre-normalisation map) and the normalisation's
    statistics are stored, and running statistics are updated once; the activation is
    rebuilt by every reader. The first convolution of the network's input is not stored
    either: it is recomputed in backward from the input.
    """
    if not isinstance(z, EngineMap):
        return act(norm(z))  # type: ignore[no-any-return]
    activation = _activation_flag(act)
    _check_norm(norm)
    part = z.parts[0] if len(z.parts) == 1 else None
    if (
        z.network_input
        and part is not None
        and part.then_conv is not None
        and _is_plain(replace(part, then_conv=None))
    ):
        source = part.then_conv
        with torch.no_grad():  # exactly as backward recomputes it
            z1 = source_conv_output(source, part.tensor, source.weight, source.bias)
        normalized, value = _normalized(norm, z1, activation)
        recomputed = replace(normalized, tensor=part.tensor, source_conv=source)
        return EngineMap((recomputed,), (_Handoff(value),))
    normalized, value = _normalized(norm, _materialize(z, "activate()"), activation)
    return EngineMap((normalized,), (_Handoff(value),))


def pool(x: FeatureMap, module: nn.Module) -> FeatureMap:
    """``module(x)`` for a max pooling; on the engine recomputed by its reader in backward."""
    if not isinstance(x, EngineMap):
        return module(x)  # type: ignore[no-any-return]
    kernel = _pool_kernel(module)
    part = _single(x, "pool()")
    if part.then_conv is not None:
        part = _raw(_materialize(x, "pool()")).parts[0]
    if part.pool is not None or part.upsample is not None:
        raise _unsupported(
            "pool() of a pooled or upsampled map", "pool() of an activated or cropped map"
        )
    for handoff in x.handoffs:
        handoff.take()  # the pooling reads the activation as backward rebuilds it
    return EngineMap((replace(part, pool=kernel, value=None),))


def _uniform(value: int | tuple[int, ...]) -> int | None:
    """The one value of an int or an all-equal tuple, else None."""
    values = {value} if isinstance(value, int) else set(value)
    return next(iter(values)) if len(values) == 1 else None


def _pool_kernel(module: nn.Module) -> int:
    """The kernel (== stride) of a max pooling the engine can recompute, else raise."""
    if isinstance(module, _MAX_POOLS):
        kernel = _uniform(module.kernel_size)  # type: ignore[arg-type]
        plain = _uniform(module.padding) == 0 and _uniform(module.dilation) == 1  # type: ignore[arg-type]
        stride_ok = _uniform(module.stride) == kernel  # type: ignore[arg-type]
        simple = not (module.ceil_mode or module.return_indices)
        if kernel is not None and plain and stride_ok and simple:
            return kernel
    raise _unsupported(
        f"the pooling {module!r}", "max pooling with kernel == stride, no padding or dilation"
    )


def center_crop(x: FeatureMap, size: Sequence[int]) -> FeatureMap:
    """The centre ``size`` of ``x``'s spatial axes, offset ``(have - want) // 2``."""
    have = spatial_size(x)
    if tuple(size) == have:
        return x
    slices = crop_slices(have, tuple(size))
    if not isinstance(x, EngineMap):
        return x[(slice(None), slice(None), *slices)]
    part = _single(x, "center_crop()")
    if part.then_conv is not None:  # a pending convolution: run it, crop its stored output
        x = _raw(_materialize(x, "center_crop()"))
        part = x.parts[0]
    if part.crop is not None or part.pool is not None:
        raise _unsupported(
            "center_crop() of a pooled or cropped map", "center_crop() of an activated map"
        )
    return EngineMap((replace(part, crop=slices),), x.handoffs)


def upsample(x: FeatureMap, module: nn.Module) -> FeatureMap:
    """``module(x)`` for an interpolation (``nn.Upsample``) of a convolution's output.

    On the engine the interpolated map is stored (linear interpolation keeps nothing else
    for backward); interpolate after a 1x1 convolution rather than before, the two
    commute and the convolution then runs at the coarse size.
    """
    if not isinstance(x, EngineMap):
        return module(x)  # type: ignore[no-any-return]
    if not isinstance(module, nn.Upsample):
        raise _unsupported(f"upsample() with a {type(module).__name__}", "nn.Upsample")
    return _raw(module(_materialize(x, "upsample()")))


def dropout(x: FeatureMap, module: nn.Module) -> FeatureMap:
    """``module(x)`` for a dropout; not on the engine yet (raises there unless inactive)."""
    if not isinstance(x, EngineMap):
        return module(x)  # type: ignore[no-any-return]
    if not module.training or getattr(module, "p", 0.0) == 0:
        return x
    raise _unsupported(f"{type(module).__name__}(p={module.p})", "dropout with p=0 or in eval")


def run(forward: Callable[[FeatureMap], Result], x: Tensor, *, engine: bool) -> Result:
    """``forward(x)``, naive on plain tensors or, with ``engine``, on the memory engine.

    On the engine ``forward`` gets ``x`` as an :class:`EngineMap` in the engine's layout
    and precision (autocast's dtype under autocast, :mod:`concatnets.engine.precision`),
    and what it returns (a map or a list of maps, each a convolution's output) is
    materialised as contiguous tensors.
    """
    if not engine:
        return forward(x)

    def on_engine(cast: Callable[[Tensor], Tensor]) -> Result:
        inputs = cast(x)
        inputs = to_layout(inputs, preferred_layout(inputs))
        out = forward(EngineMap((NormActPart(inputs, activation=False),), network_input=True))
        if isinstance(out, list):
            return [_tensor_of(m) for m in out]  # type: ignore[return-value]
        return _tensor_of(out)  # type: ignore[return-value]

    return in_engine_precision(x.device, on_engine)


def _tensor_of(x: FeatureMap) -> Tensor:
    tensor = _materialize(x, "the network's output") if isinstance(x, EngineMap) else x
    return tensor.contiguous()
