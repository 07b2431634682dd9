"""Dense blocks found by their structure and run on the engine's shared buffer.

A dense block is a module every call of which, in the probe forward, is a dense layer
BN -> ReLU -> conv -> BN -> ReLU -> conv (-> dropout) whose first convolution reads the
block input's channels plus every earlier layer's new channels: torchvision and timm write
it as ``cat(list)`` per layer, MONAI as layers returning ``cat([x, new])``; both end as the
concatenation of everything, which :func:`concatnets.engine.dense_block` computes on one
buffer (Pleiss et al. 2017, arXiv 1707.06990).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from concatnets.convert.installed import EngineForward, install, is_converted
from concatnets.convert.ops import Op, operations
from concatnets.convert.probe import Call
from concatnets.convert.report import ConversionReport
from concatnets.convert.verify import mismatch
from concatnets.engine import BottleneckPolicy, dense_block

__all__ = ["convert_dense_blocks"]

KIND = "dense block"


@dataclass
class _LayerView:
    """A dense layer as the engine sees it (:class:`concatnets.engine.DenseLayerLike`)."""

    owner: nn.Module
    norm1: _BatchNorm
    conv1: _ConvNd
    norm2: _BatchNorm
    conv2: _ConvNd
    dropout: nn.Module | None

    @property
    def drop_rate(self) -> float:
        if self.dropout is not None:
            return float(self.dropout.p)  # type: ignore[arg-type]
        return float(getattr(self.owner, "drop_rate", 0.0))

    @property
    def training(self) -> bool:
        return (self.dropout or self.owner).training


class DenseBlockForward(EngineForward):
    """A dense block's forward on :func:`concatnets.engine.dense_block`."""

    def __init__(self, layers: Sequence[_LayerView], policy: BottleneckPolicy) -> None:
        self.layers = list(layers)
        self.policy = policy

    def __call__(self, x: Tensor) -> Tensor:
        return dense_block(x, self.layers, policy=self.policy)


def _without_relus(ops: Sequence[Op]) -> list[Op]:
    return [op for op in ops if op.kind != "relu"]


def _layer_view(call: Call) -> _LayerView | str:
    """The call as a dense layer, or why it is not one."""
    ops = operations(call)
    kinds = [op.kind for op in ops]
    # ReLU may be a module or functional (invisible to hooks): verification decides.
    core = _without_relus(ops)
    core_kinds = [op.kind for op in core]
    if core_kinds not in (
        ["norm", "conv", "norm", "conv"],
        ["norm", "conv", "norm", "conv", "drop"],
    ):
        return f"its calls are {kinds}, not norm-relu-conv-norm-relu-conv(-elementwise dropout)"
    if kinds.count("relu") not in (0, 2) or (kinds.count("relu") == 2 and kinds[1] != "relu"):
        return f"its activations are not one ReLU after each norm: {kinds}"
    modules = [op.module for op in core]
    if len({id(m) for m in modules}) != len(modules):
        return "it calls one module twice"
    return _LayerView(call.module, *modules[:4], modules[4] if len(modules) == 5 else None)  # type: ignore[arg-type]


def _block_layers(call: Call) -> list[_LayerView] | str:
    if not call.children:
        return "it calls no layer"
    views: list[_LayerView] = []
    for index, child in enumerate(call.children):
        view = _layer_view(child)
        if isinstance(view, str):
            return f"call {index} ({type(child.module).__name__}) is not a dense layer: {view}"
        views.append(view)
    if len({id(c.module) for c in call.children}) != len(call.children):
        return "it calls one layer twice"
    return views


def _check_channels(x: Tensor, views: Sequence[_LayerView]) -> str | None:
    channels = int(x.shape[1])
    for index, view in enumerate(views):
        if view.conv1.in_channels != channels:
            return (
                f"layer {index} reads {view.conv1.in_channels} channels, not the "
                f"{channels} of the concatenation of all earlier features"
            )
        channels += int(view.conv2.out_channels)
    return None


def _looks_dense(call: Call) -> bool:
    """Whether the call is worth reporting as a rejected dense block."""
    return bool(call.children) and all(
        sum(op.kind == "conv" for op in operations(c)) >= 2 for c in call.children
    )


def _try_block(call: Call, policy: BottleneckPolicy) -> tuple[DenseBlockForward | None, str]:
    views = _block_layers(call)
    if isinstance(views, str):
        return None, views
    if call.kwargs or len(call.args) != 1 or not isinstance(call.args[0], Tensor):
        return None, "it is not called with one tensor"
    x = call.args[0]
    problem = _check_channels(x, views)
    if problem is not None:
        return None, problem
    forward = DenseBlockForward(views, policy)
    module = call.module
    problem = mismatch(module, module, forward, call.args, call.kwargs)
    if problem is not None:
        return None, problem
    return forward, f"{len(views)} layers on one shared buffer (policy {policy!r})"


def convert_dense_blocks(
    root: Call, names: dict[int, str], report: ConversionReport, policy: BottleneckPolicy
) -> None:
    """Install the engine forward on every dense block in the call tree."""
    seen: set[int] = set()

    def visit(call: Call) -> None:
        module = call.module
        if id(module) in seen:
            return
        seen.add(id(module))
        name = names.get(id(module), "?")
        if isinstance(module.__dict__.get("forward"), DenseBlockForward):
            report.add(name, KIND, True, "already converted")
            return
        if is_converted(module):  # a rewritten graph: its dense blocks are still modules
            for child in call.children:
                visit(child)
            return
        if call.children and all(isinstance(_layer_view(c), _LayerView) for c in call.children):
            forward, detail = _try_block(call, policy)
            if forward is not None:
                install(module, forward)
            report.add(name, KIND, forward is not None, detail)
            return
        if _looks_dense(call) and call.module is not root.module and _cat_of_all(call):
            # Explain the rejected block once; its layers are not blocks of their own.
            report.add(name, KIND, False, _rejection(call))
            return
        for child in call.children:
            visit(child)

    visit(root)


def _rejection(call: Call) -> str:
    views = _block_layers(call)
    return views if isinstance(views, str) else "its layers are not dense layers"


def _cat_of_all(call: Call) -> bool:
    """Whether the call's output has the channels of its input plus every child's growth."""
    x, out = (call.args[0] if call.args else None), call.output
    if not isinstance(x, Tensor) or not isinstance(out, Tensor) or x.dim() != out.dim():
        return False
    return bool(out.shape[1] > x.shape[1] and out.shape[2:] == x.shape[2:])
