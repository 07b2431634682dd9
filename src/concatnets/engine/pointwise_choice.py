"""Which kernel runs the engine's 1x1 convolutions: a matrix product or ATen's convolution.

The matrix product (:mod:`concatnets.engine.pointwise`) writes into the engine's own
workspace, so it saves a chunk-sized allocation per layer whichever kernel is faster;
how fast each is depends on the CPU and the dtype. Measured on an AMD EPYC (Zen 4,
AVX-512), 1 thread, one bottleneck convolution forward + backward: float32 at 64 x 128
channels, 32 x 32 px, matrix product 0.2x the convolution's time; at 14 x 14 and 7 x 7
px 1.0x; bfloat16 0.4-0.7x at 32 x 32 px, 1.2-1.35x at 7 x 7 px. Whole DenseNet steps:
densenet_bc_100 0.87x (float32) and 0.91x (bfloat16) the engine's step time with the
convolution kernel, densenet121 1.00x and 1.01x.

In bfloat16 the matrix product is faster but costs resident memory outside tensors:
densenet121 batch 8 (224 px) under CPU autocast grew the resident set by 368-421 MiB at
the step's peak with it against 283-290 MiB with the convolution (plain script, two hash
seeds, ASLR off; the live tensors are the same), densenet_bc_100 0.37x naive against
0.34x. So float16 and bfloat16 keep the convolution by rule.

The choice, per key (device, dtype, whether the input is channels-last, torch threads),
comes from, in precedence: :func:`set_pointwise_kernel`, the environment variable
``CONCATNETS_POINTWISE``, then ``"auto"``: for float32 on CPU a probe at first use that
times both kernels on two bottleneck shapes (a DenseNet's first and third block) in
alternation and keeps the matrix product unless the convolution is faster by more than
:data:`GEMM_TOLERANCE` over both; float64 (checks and tests) takes the matrix product by
rule, float16/bfloat16 the convolution; on CUDA the convolution (cuDNN) by rule, untimed.
Graphs traced by ``torch.compile`` keep the convolution.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from concatnets.engine.choice_cache import ChoiceCache
from concatnets.engine.conv import conv_backward, conv_forward
from concatnets.engine.kernel_timing import best_alternating
from concatnets.engine.layout import channels_last_format, layout_of
from concatnets.engine.pointwise import (
    as_matrices,
    is_pointwise,
    pointwise_backward,
    pointwise_forward,
)

__all__ = [
    "GEMM_TOLERANCE",
    "POINTWISE_ENV_VAR",
    "POINTWISE_SETTINGS",
    "PROBE_SHAPES",
    "PointwiseDecision",
    "PointwiseKey",
    "chosen_conv_backward",
    "chosen_conv_forward",
    "clear_pointwise_decisions",
    "decide_pointwise",
    "pin_probed",
    "pointwise_decisions",
    "probed_decisions",
    "runs_gemm",
    "set_pointwise_kernel",
    "time_pointwise_step",
    "use_gemm",
]

POINTWISE_ENV_VAR = "CONCATNETS_POINTWISE"
POINTWISE_SETTINGS = ("auto", "gemm", "conv")
#: The matrix product is kept unless the convolution is this much faster (it also saves
#: the chunk-sized allocation of every input gradient).
GEMM_TOLERANCE = 0.05
#: (batch, in channels, out channels, spatial size) of the probed 1x1 convolutions: a
#: DenseNet-BC bottleneck on large maps and one on small maps, where the kernels differ
#: most and least (see the module docstring). One forward + backward of both takes
#: 20-70 ms at float32 on one thread.
PROBE_SHAPES: tuple[tuple[int, int, int, int], ...] = ((8, 128, 48, 32), (4, 512, 128, 14))
#: Seconds of alternating rounds per shape after the warm-up.
PROBE_BUDGET_S = 0.1


@dataclass(frozen=True)
class PointwiseKey:
    """What a kernel decision depends on."""

    device: str
    dtype: torch.dtype
    channels_last: bool
    threads: int


@dataclass(frozen=True)
class PointwiseDecision:
    """A chosen kernel (``gemm`` or ``conv``) and where it came from.

    ``source`` is ``set_pointwise_kernel``, ``env``, ``probe`` (``probe_seconds`` holds
    each kernel's summed best seconds over :data:`PROBE_SHAPES`), ``restored`` (a resumed
    run's recorded probe result) or ``rule``.
    """

    kernel: str
    source: str
    probe_seconds: Mapping[str, float] | None = None


_process_setting: str | None = None
_choices: ChoiceCache[PointwiseKey, PointwiseDecision] = ChoiceCache()


def _checked(setting: str, where: str) -> str:
    if setting not in POINTWISE_SETTINGS:
        raise ValueError(f"{where} must be one of {', '.join(POINTWISE_SETTINGS)}, got {setting!r}")
    return setting


def set_pointwise_kernel(setting: str | None) -> None:
    """Set the engine's 1x1 convolution kernel for the process: ``auto``, ``gemm`` or
    ``conv``; ``None`` removes the setting (``CONCATNETS_POINTWISE`` or ``auto`` again)."""
    global _process_setting
    _process_setting = None if setting is None else _checked(setting, "set_pointwise_kernel")


def _setting() -> tuple[str, str]:
    if _process_setting is not None:
        return _process_setting, "set_pointwise_kernel"
    if env := os.environ.get(POINTWISE_ENV_VAR):
        where = f"the environment variable {POINTWISE_ENV_VAR}"
        return _checked(env.strip().lower(), where), "env"
    return "auto", "default"


def time_pointwise_step(
    kernel: str,
    shape: tuple[int, int, int, int],
    dtype: torch.dtype,
    channels_last: bool,
    conv: nn.Conv2d,
) -> float:
    """Seconds of one 1x1 convolution forward + backward (input and weight gradients) on
    CPU with ``kernel``, as the engine runs it (the matrix product into given tensors)."""
    batch, channels, out_channels, size = shape
    memory_format = channels_last_format(4) if channels_last else torch.contiguous_format
    x = torch.randn(batch, channels, size, size, dtype=dtype).contiguous(
        memory_format=memory_format
    )
    weight = torch.randn(out_channels, channels, 1, 1, dtype=dtype)
    grad_out = torch.randn(batch, out_channels, size, size, dtype=dtype).contiguous(
        memory_format=memory_format
    )
    gemm = kernel == "gemm"
    out = torch.empty_like(grad_out) if gemm else None
    grad_input = torch.empty_like(x) if gemm else None
    start = time.perf_counter()
    if gemm:
        pointwise_forward(x, weight, None, out=out)
        pointwise_backward(grad_out, x, weight, has_bias=False, grad_input=grad_input)
    else:
        conv_forward(conv, x, weight, None)
        conv_backward(conv, grad_out, x, weight, has_bias=False)
    return time.perf_counter() - start


def probe_pointwise(dtype: torch.dtype, channels_last: bool) -> dict[str, float]:
    """Each kernel's best seconds, summed over :data:`PROBE_SHAPES` (CPU)."""
    totals = {"gemm": 0.0, "conv": 0.0}
    with torch.inference_mode(False), torch.no_grad(), torch.autocast("cpu", enabled=False):
        for shape in PROBE_SHAPES:
            conv = nn.Conv2d(shape[1], shape[2], 1, bias=False)
            timers = {
                kernel: functools.partial(
                    time_pointwise_step, kernel, shape, dtype, channels_last, conv
                )
                for kernel in totals
            }
            best, _ = best_alternating(timers, PROBE_BUDGET_S)
            for kernel, seconds in best.items():
                totals[kernel] += seconds
    return totals


def _choose(seconds: Mapping[str, float]) -> str:
    return "conv" if seconds["conv"] * (1 + GEMM_TOLERANCE) < seconds["gemm"] else "gemm"


def _auto(key: PointwiseKey, device: torch.device) -> PointwiseDecision:
    if device.type != "cpu":
        return PointwiseDecision("conv", "rule")
    if key.dtype == torch.float64:  # checks and tests: no oneDNN kernel to compare with
        return PointwiseDecision("gemm", "rule")
    if key.dtype in (torch.float16, torch.bfloat16):  # the resident set grows: see above
        return PointwiseDecision("conv", "rule")
    return _choices.probed_or(key, lambda: _probe_decision(key))


def _probe_decision(key: PointwiseKey) -> PointwiseDecision:
    seconds = probe_pointwise(key.dtype, key.channels_last)
    return PointwiseDecision(_choose(seconds), "probe", seconds)


def decide_pointwise(
    device: torch.device | str, dtype: torch.dtype, channels_last: bool
) -> PointwiseDecision:
    """The kernel for the engine's 1x1 convolutions of ``dtype`` inputs on ``device``."""
    device = torch.device(device)
    key = PointwiseKey(str(device), dtype, channels_last, torch.get_num_threads())
    setting, source = _setting()
    decision = _auto(key, device) if setting == "auto" else PointwiseDecision(setting, source)
    return _choices.record(key, decision)


def use_gemm(x: Tensor) -> bool:
    """Whether the engine's 1x1 convolution of ``x`` runs as a matrix product.

    Not while ``torch.compile`` traces: a traced graph keeps ATen's convolution (the
    probe cannot run there), which computes the same values.
    """
    if torch.compiler.is_compiling():
        return False
    channels_last = layout_of(x) != torch.contiguous_format
    return decide_pointwise(x.device, x.dtype, channels_last).kernel == "gemm"


def runs_gemm(conv: _ConvNd, x: Tensor) -> bool:
    """Whether ``conv`` on ``x`` runs as a matrix product: a plain 1x1 convolution, ``x``
    with a matrix form, and the kernel chosen for ``x`` is ``gemm`` (timed only then)."""
    return is_pointwise(conv) and as_matrices(x) is not None and use_gemm(x)


def chosen_conv_forward(conv: _ConvNd, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """:func:`~concatnets.engine.conv.conv_forward`, as a matrix product where ``conv`` is
    1x1 and the kernel chosen for ``x`` is ``gemm``."""
    if runs_gemm(conv, x):
        return pointwise_forward(x, weight, bias)
    return conv_forward(conv, x, weight, bias)


def chosen_conv_backward(
    conv: _ConvNd, grad_out: Tensor, x: Tensor, weight: Tensor, *, has_bias: bool
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """:func:`~concatnets.engine.conv.conv_backward` (input, weight and bias gradients),
    as a matrix product where :func:`chosen_conv_forward` ran one."""
    if runs_gemm(conv, x):
        return pointwise_backward(grad_out, x, weight, has_bias=has_bias)
    return conv_backward(conv, grad_out, x, weight, has_bias=has_bias)


def probed_decisions() -> dict[PointwiseKey, PointwiseDecision]:
    """The probe results of this process (or restored ones, see :func:`pin_probed`)."""
    return _choices.probed()


def pin_probed(key: PointwiseKey, kernel: str) -> None:
    """Take ``kernel`` as the probe's result for ``key`` (a resumed run's recorded one)."""
    if kernel not in ("gemm", "conv"):
        raise ValueError(f"a restored 1x1 convolution kernel must be gemm or conv, got {kernel!r}")
    _choices.pin(key, PointwiseDecision(kernel, "restored"))


def pointwise_decisions() -> dict[PointwiseKey, PointwiseDecision]:
    """The latest decision per key made in this process (a copy)."""
    return _choices.decided()


def clear_pointwise_decisions() -> None:
    """Forget every decision and probe result: the next use probes again."""
    _choices.clear()
