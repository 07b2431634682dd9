"""``cat -> conv`` and ``norm -> ReLU -> conv`` chains rewritten with torch.fx onto the engine.

Where a module traces (:func:`torch.fx.symbolic_trace`, with norms, convolutions,
activations and already converted modules as leaves), its graph is searched for

* ``conv(relu(bn(z)))`` (the pre-activation form of DenseNet transitions, the second
  convolution of every conv-BN-ReLU-conv block of a U-Net or a ResNet): replaced by
  :func:`concatnets.engine.norm_act_conv` on ``z`` and its saved statistics, so neither the
  normalised nor the rectified map is stored (Pleiss et al. 2017, arXiv 1707.06990);
* ``conv(cat([a, b, ...]))`` (a U-Net decoder's ``cat([up, skip])``): replaced by
  ``norm_act_conv`` on the parts, so the concatenation is written into a transient buffer
  and never stored.

Each module, outermost first, is first recorded and replayed with lazy activations
(:mod:`concatnets.convert.replayed`, which also handles shape-dependent Python and
activations that cross module boundaries); the ``torch.fx`` rewriting here is the fallback
for a module that cannot be recorded. Where neither works, its children are tried instead
and the report says why the module itself was left as is.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from concatnets.convert.installed import EngineForward, install, is_converted
from concatnets.convert.probe import Call
from concatnets.convert.record import signature
from concatnets.convert.replayed import ReplayForward, prepare, summary
from concatnets.convert.report import ConversionReport
from concatnets.convert.verify import mismatch
from concatnets.engine import NormActPart, norm_act_conv, norm_stats

__all__ = ["convert_chains"]

KIND = "chain"
_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_)


def _as_node(target: Any, *args: Any) -> Any:
    """Under a trace (unpickling a GraphModule re-traces it), record a call instead."""
    flat = [a for arg in args for a in (arg if isinstance(arg, list | tuple) else [arg])]
    proxies = [a for a in flat if isinstance(a, fx.Proxy)]
    if not proxies:
        return None
    return proxies[0].tracer.create_proxy("call_function", target, args, {})


def norm_relu_conv(z: Tensor, norm: _BatchNorm, conv: _ConvNd) -> Tensor:
    """``conv(relu(norm(z)))`` on the engine (running statistics updated once)."""
    traced = _as_node(norm_relu_conv, z, norm, conv)
    if traced is not None:
        return traced  # type: ignore[no-any-return]
    return norm_act_conv([NormActPart(z, norm, norm_stats(norm, z))], conv)


def cat_conv(parts: Sequence[Tensor], conv: _ConvNd) -> Tensor:
    """``conv(cat(parts, 1))`` on the engine: the concatenation is never stored."""
    traced = _as_node(cat_conv, list(parts), conv)
    if traced is not None:
        return traced  # type: ignore[no-any-return]
    return norm_act_conv([NormActPart(t, activation=False) for t in parts], conv)


def _fused_relu(norm: nn.Module) -> bool | None:
    """For a batch norm: whether it applies a ReLU itself (timm's ``BatchNormAct2d``);
    None when it runs other modules too (then it is not a plain norm)."""
    children = [c for c in norm.children() if not isinstance(c, nn.Identity)]
    if not children:
        return False
    if len(children) == 1 and isinstance(children[0], nn.ReLU):
        return True
    return None


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if is_converted(m) or isinstance(m, _BatchNorm | _ConvNd):
            return True
        return super().is_leaf_module(m, qualname)


class GraphForward(EngineForward):
    """A traced module's rewritten graph, used for calls shaped like the traced one."""

    def __init__(self, module: nn.Module, graph: fx.GraphModule, none_args: frozenset[str]):
        self.module = module
        self.graph = graph
        self.none_args = none_args
        self.signature = inspect.signature(type(module).forward)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        bound = self.signature.bind(self.module, *args, **kwargs)
        bound.apply_defaults()
        names = [n for n in bound.arguments if n != "self"]
        if any((bound.arguments[n] is None) != (n in self.none_args) for n in names):
            return type(self.module).forward(self.module, *args, **kwargs)
        return self.graph(*args, **kwargs)


def _module(gm: nn.Module, node: fx.Node) -> nn.Module | None:
    if node.op != "call_module":
        return None
    return gm.get_submodule(str(node.target))


def _is_relu(gm: nn.Module, node: fx.Node) -> bool:
    if node.op == "call_function" and node.target in _RELU_FUNCTIONS:
        return True
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return True
    return isinstance(_module(gm, node), nn.ReLU)


def _is_identity(module: nn.Module | None) -> bool:
    if isinstance(module, nn.Dropout | nn.Dropout2d | nn.Dropout3d):
        return float(module.p) == 0.0
    return isinstance(module, nn.Identity)


def _drop_identities(gm: nn.Module, graph: fx.Graph) -> None:
    for node in list(graph.nodes):
        if _is_identity(_module(gm, node)) and node.args:
            node.replace_all_uses_with(node.args[0])  # type: ignore[arg-type]
            graph.erase_node(node)


def _single_user(node: fx.Node) -> bool:
    return len(node.users) == 1


def _cat_parts(node: fx.Node) -> list[fx.Node] | None:
    if node.op != "call_function" or node.target not in (torch.cat, torch.concat):
        return None
    tensors = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    if dim not in (1, -3) or not isinstance(tensors, list | tuple):
        return None
    if not all(isinstance(t, fx.Node) for t in tensors):
        return None
    return list(tensors)  # type: ignore[arg-type]


def _norm_relu_input(gm: nn.Module, node: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """``(z, norm node)`` when ``node`` computes ``relu(bn(z))`` used only by one conv."""
    if not _single_user(node):
        return None
    norm_node = node
    if _is_relu(gm, node) and isinstance(node.args[0], fx.Node):
        norm_node = node.args[0]
        if not _single_user(norm_node):
            return None
        norm = _module(gm, norm_node)
        if not isinstance(norm, _BatchNorm) or _fused_relu(norm) is not False:
            return None
    else:
        norm = _module(gm, node)
        if not isinstance(norm, _BatchNorm) or _fused_relu(norm) is not True:
            return None
    z = norm_node.args[0]
    if not isinstance(z, fx.Node) or _cat_parts(z) is not None:
        return None
    return z, norm_node


def _rewrite(gm: nn.Module, graph: fx.Graph) -> list[str]:
    """Rewrite every chain in ``graph``; returns a description of each."""
    done: list[str] = []
    for node in list(graph.nodes):
        conv = _module(gm, node)
        if not isinstance(conv, _ConvNd) or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        source = node.args[0]
        found = _norm_relu_input(gm, source)
        parts = _cat_parts(source) if _single_user(source) else None
        if found is None and parts is None:
            continue
        with graph.inserting_before(node):
            conv_attr = graph.get_attr(str(node.target))
            if found is not None:
                z, norm_node = found
                norm_attr = graph.get_attr(str(norm_node.target))
                new = graph.call_function(norm_relu_conv, (z, norm_attr, conv_attr))
                label = f"{norm_node.target} -> relu -> {node.target}"
            else:
                new = graph.call_function(cat_conv, (parts, conv_attr))
                label = f"cat({len(parts)}) -> {node.target}"  # type: ignore[arg-type]
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        graph.eliminate_dead_code()
        done.append(label)
    return done


_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def _unsupported_chains(gm: nn.Module, graph: fx.Graph) -> list[str]:
    """``conv(act(norm(z)))`` chains left in the graph, each with why it was not rewritten."""
    found = []
    for node in graph.nodes:
        conv = _module(gm, node)
        if not isinstance(conv, _ConvNd) or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        act_node = node.args[0]
        act = _module(gm, act_node)
        if act is None or not act_node.args or not isinstance(act_node.args[0], fx.Node):
            continue
        norm = _module(gm, act_node.args[0])
        if not isinstance(norm, _NORMS):
            continue
        why = []
        if not isinstance(norm, _BatchNorm):
            why.append(f"{type(norm).__name__} (batch norm only)")
        if not isinstance(act, nn.ReLU):
            why.append(f"{type(act).__name__} (ReLU only)")
        if not why and len(act_node.users) > 1:
            why.append("the activation has other users")
        if why:
            found.append(
                f"{act_node.args[0].target} -> {act_node.target} -> {node.target}: "
                + ", ".join(why)
            )
    return found


def _try_module(call: Call, unsupported: list[str]) -> tuple[GraphForward | None, str, bool]:
    """``(forward, detail, traced)`` for one module call; adds unsupported chains found."""
    module = call.module
    try:
        bound = inspect.signature(type(module).forward).bind(module, *call.args, **call.kwargs)
    except TypeError as error:
        return None, f"its call does not match its forward's signature: {error}", False
    bound.apply_defaults()
    none_args = frozenset(n for n, v in bound.arguments.items() if v is None and n != "self")
    tracer = _Tracer()
    try:
        graph = tracer.trace(module, concrete_args=dict.fromkeys(none_args))
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return None, f"torch.fx could not trace it ({type(error).__name__}: {first[:120]})", False
    gm = fx.GraphModule(module, graph)
    # The trace follows Python branches with proxies (``isinstance(x, Tensor)`` is False
    # for one): its graph must compute what the forward does on the probe input.
    problem = mismatch(module, module, gm, call.args, call.kwargs)
    if problem is not None:
        return None, f"its torch.fx graph differs from its forward ({problem})", False
    _drop_identities(gm, gm.graph)
    labels = _rewrite(gm, gm.graph)
    unsupported.extend(_unsupported_chains(gm, gm.graph))
    if not labels:
        return None, "", True
    gm.recompile()
    forward = GraphForward(module, gm, none_args)
    problem = mismatch(module, module, forward, call.args, call.kwargs)
    if problem is not None:
        return None, problem, True
    return forward, f"{len(labels)} chain(s): " + "; ".join(labels), True


def _worth_reporting(call: Call) -> bool:
    """A failure is reported for modules that run convolutions or several steps."""
    return len(call.children) > 1 or any(isinstance(c.module, _ConvNd) for c in call.children)


def _try_replay(call: Call, names: dict[int, str], report: ConversionReport) -> str | None:
    """Install a :class:`ReplayForward` on the call's module if its replay converts a site;
    None when it did, else why not."""
    module = call.module
    program, events, why = prepare(module, call.args, call.kwargs, names)
    if program is None:
        for event in events:  # what stopped each norm -> act chain
            report.add(names.get(id(module), "?"), KIND, False, event.detail)
        return why
    name = names.get(id(module), "?")
    forward = ReplayForward(module)
    forward.add(signature(module, call.args, call.kwargs), program)
    install(module, forward)
    report.add(name, KIND, True, summary(events))
    for event in events:
        if not event.converted:
            report.add(name, KIND, False, event.detail)
    return None


def convert_chains(root: Call, names: dict[int, str], report: ConversionReport) -> None:
    """Rewrite the chains of the outermost modules that trace (see module docstring)."""
    seen: set[int] = set()

    def visit(call: Call) -> None:
        module = call.module
        if id(module) in seen or isinstance(module, _BatchNorm | _ConvNd):
            return
        seen.add(id(module))
        name = names.get(id(module), "?")
        if is_converted(module):
            if isinstance(module.__dict__["forward"], GraphForward | ReplayForward):
                report.add(name, KIND, True, "already converted")
            return
        if not call.children:
            return
        not_replayed = _try_replay(call, names, report)
        if not_replayed is None:
            return
        unsupported: list[str] = []
        forward, detail, traced = _try_module(call, unsupported)
        for chain in unsupported:
            report.add(name, KIND, False, chain)
        if forward is not None:
            install(module, forward)
            report.add(name, KIND, True, detail)
            return
        if detail and (traced or _worth_reporting(call)):
            report.add(name, KIND, False, f"{detail}; not replayed: {not_replayed}")
        if not traced:
            for child in call.children:
                visit(child)

    visit(root)
