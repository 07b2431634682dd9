"""Measure the memory and time of training steps, inside one (fresh) process.

CPU memory is the resident-set high-water mark (``ru_maxrss``). Because it is a
process-wide maximum, the honest figure is its growth over the resident size measured
after the model, data and parameters exist and before any measured step. A small
priming pass (batch 2, no update) runs before that baseline so one-time runtime costs
are not billed to a mode. On Linux the high-water mark is reset at the baseline and
before each step (``/proc/self/clear_refs``), so each step's peak is read on its own;
elsewhere the construction peak stays in ``ru_maxrss`` and the growth is a lower bound
(the method used is reported). On CUDA the figure is the growth of
``torch.cuda.max_memory_allocated`` over ``memory_allocated`` at the same point, and
``max_memory_reserved`` (what the caching allocator holds) is reported beside it.

After the measured steps one more step runs under a live-tensor counter
(:mod:`concatnets.bench.live_tensors`): the peak bytes of tensor storage alive at once,
which no allocator setting changes. That step is neither timed nor in the resident peak.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import os
import platform
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from concatnets._allocator import allocator_setting
from concatnets._process_memory import reset_resident_peak, resident_peak_bytes
from concatnets.bench.config import AMP_DTYPES, BenchConfig
from concatnets.bench.environment import engine_layouts, engine_pointwise
from concatnets.bench.live_tensors import LiveTensorPeak
from concatnets.engine.heap_release import heap_release_stats
from concatnets.engine.layout import channels_last_format

__all__ = [
    "LEARNING_RATE",
    "PRIMING_BATCH",
    "UnsupportedModeError",
    "autocast_for",
    "build_model",
    "measure",
    "prepare_model",
]

# Plain SGD without momentum, written out: a real update with no optimizer state that
# would add memory unrelated to the network, and without torch.optim, whose first use
# imports torch._dynamo (seconds per child process).
LEARNING_RATE = 1e-3
PRIMING_BATCH = 2
_MIB = 1024.0 * 1024.0


class UnsupportedModeError(RuntimeError):
    """The model builds, but not with the requested ``memory_efficient`` value."""


def _call_builder(config: BenchConfig, memory_efficient: bool | str) -> nn.Module:
    kwargs = {**config.model_kwargs, "memory_efficient": memory_efficient}
    if config.builder:
        module_name, _, attr = config.builder.partition(":")
        return getattr(importlib.import_module(module_name), attr)(**kwargs)
    if config.source == "torchvision":
        tv_models = importlib.import_module("torchvision.models")
        return getattr(tv_models, config.model)(**kwargs)
    from concatnets import create_model

    return create_model(config.model, **kwargs)


def build_model(config: BenchConfig) -> nn.Module:
    """Build the configured model; raise :class:`UnsupportedModeError` for a bad mode.

    A build failure is blamed on the mode only when the same model builds with
    ``memory_efficient=False``; any other failure propagates unchanged.
    """
    try:
        return _call_builder(config, config.memory_efficient)
    except (TypeError, ValueError, NotImplementedError) as error:
        if config.memory_efficient is False:
            raise
        try:
            _call_builder(config, False)
        except Exception:
            raise error from None
        raise UnsupportedModeError(
            f"{config.model} does not support mode {config.mode!r} "
            f"(memory_efficient={config.memory_efficient!r}): {error}"
        ) from error


def prepare_model(config: BenchConfig, device: torch.device) -> nn.Module:
    """The configured model on ``device`` in training mode, in channels-last if asked."""
    model = build_model(config).to(device).train()
    if config.channels_last:
        rank = len(_first_conv(model).kernel_size) + 2
        model = model.to(memory_format=channels_last_format(rank))
    return model


def _first_conv(model: nn.Module) -> nn.modules.conv._ConvNd:
    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            return module
    raise ValueError("the benchmark needs a convolutional model (no Conv layer found)")


def _make_target(output_shape: torch.Size, device: torch.device) -> tuple[torch.Tensor, str]:
    """Class labels for ``(N, C)`` outputs, a mask for ``(N, C, *spatial)`` ones."""
    batch, channels = output_shape[0], output_shape[1]
    if len(output_shape) == 2:
        return torch.randint(channels, (batch,), device=device), "classification"
    if channels == 1:
        return torch.randint(0, 2, tuple(output_shape), device=device).float(), "segmentation"
    return torch.randint(channels, (batch, *output_shape[2:]), device=device), "segmentation"


def _prime(model: nn.Module, inputs: torch.Tensor) -> torch.Size:
    """One small forward and backward, without an update; returns the output shape.

    One-time runtime costs (lazy imports such as torch.utils.checkpoint's, the autograd
    worker, kernel caches) then land before the baseline instead of in the first
    measured step, where they would count as a mode's activation memory.
    """
    output = model(inputs)
    target, _ = _make_target(output.shape, inputs.device)
    _loss(output, target).backward()
    model.zero_grad(set_to_none=True)
    return output.shape


def _make_batch(
    model: nn.Module, config: BenchConfig, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Random input and a target matching the model's output; returns the task too."""
    conv = _first_conv(model)
    spatial = (config.image_size,) * len(conv.kernel_size)
    inputs = torch.randn(config.batch, conv.in_channels, *spatial, device=device)
    if config.channels_last:
        inputs = inputs.contiguous(memory_format=channels_last_format(inputs.dim()))
    # Two samples, not one: batch norm in training mode needs more than one value
    # per channel when the last feature map is 1x1.
    with autocast_for(config, device):
        output_shape = _prime(model, inputs[:PRIMING_BATCH])
    target, task = _make_target(torch.Size((config.batch, *output_shape[1:])), device)
    return inputs, target, task


def _loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if target.is_floating_point():
        return F.binary_cross_entropy_with_logits(output, target)
    return F.cross_entropy(output, target)


def _release_free_heap() -> bool:
    """Return glibc's free heap pages to the OS so the baseline is the live size."""
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def _current_rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class _CpuTracker:
    """Peak resident-size growth over a baseline taken at construction."""

    def __init__(self) -> None:
        current = _current_rss_bytes()
        self.resettable = current is not None and reset_resident_peak()
        if current is not None and self.resettable:
            self.method = "ru_maxrss after /proc/self/clear_refs reset, minus baseline VmRSS"
            self.baseline = current
        else:
            self.method = "ru_maxrss minus baseline ru_maxrss (lower bound)"
            self.baseline = resident_peak_bytes()

    def start_step(self) -> None:
        if self.resettable:
            reset_resident_peak()

    def step_peak_growth(self) -> int:
        # The kernel's RSS counters are approximate per CPU; the current size can read
        # a little above the high-water mark, so take whichever is larger.
        peak = max(resident_peak_bytes(), _current_rss_bytes() or 0)
        return max(0, peak - self.baseline)

    def retained(self) -> int | None:
        """Resident growth that outlives a step (runtime caches, persistent buffers)."""
        current = _current_rss_bytes()
        return None if current is None else current - self.baseline


class _CudaTracker:
    """Peak ``max_memory_allocated`` / ``max_memory_reserved`` growth over a baseline."""

    method = "torch.cuda.max_memory_allocated minus baseline memory_allocated"

    def __init__(self, device: torch.device) -> None:
        self.device = device
        torch.cuda.synchronize(device)
        self.baseline = torch.cuda.memory_allocated(device)
        self.reserved_baseline = torch.cuda.memory_reserved(device)

    def start_step(self) -> None:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)

    def step_peak_growth(self) -> int:
        torch.cuda.synchronize(self.device)
        return max(0, torch.cuda.max_memory_allocated(self.device) - self.baseline)

    def step_reserved_growth(self) -> int:
        return max(0, torch.cuda.max_memory_reserved(self.device) - self.reserved_baseline)


def autocast_for(config: BenchConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast`` in the configured dtype, or a no-op for float32."""
    if config.amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, AMP_DTYPES[config.amp]))


def _train_step(
    model: nn.Module,
    inputs: torch.Tensor,
    target: torch.Tensor,
    parameters: list[nn.Parameter],
    autocast: contextlib.AbstractContextManager | None = None,
) -> float:
    """Forward and loss (under ``autocast`` when given), backward, SGD update."""
    with autocast if autocast is not None else contextlib.nullcontext():
        loss = _loss(model(inputs), target)
    loss.backward()
    with torch.no_grad():
        for parameter in parameters:
            if parameter.grad is not None:
                parameter.add_(parameter.grad, alpha=-LEARNING_RATE)
                parameter.grad = None  # as zero_grad(set_to_none=True)
    return float(loss.detach())


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(config: BenchConfig) -> dict[str, Any]:
    """Build, warm up and time ``config`` in this process; return raw numbers.

    Call it in a fresh process (``concatnets.bench._child``): the CPU figure is a
    process-wide high-water mark.
    """
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    torch.manual_seed(0)
    device = torch.device(config.device)

    model = prepare_model(config, device)
    inputs, target, task = _make_batch(model, config, device)
    parameters = [p for p in model.parameters() if p.requires_grad]
    gc.collect()
    trimmed = _release_free_heap()
    cpu = _CpuTracker()
    cuda = _CudaTracker(device) if device.type == "cuda" else None

    step_times: list[float] = []
    cpu_times: list[float] = []  # process CPU seconds: robust to other load on a shared host
    cpu_peaks: list[int] = []
    cuda_peaks: list[int] = []
    cuda_reserved: list[int] = []
    retained: list[int | None] = []
    losses: list[float] = []
    for _ in range(config.warmup + config.steps):
        cpu.start_step()
        if cuda is not None:
            cuda.start_step()
        _synchronize(device)
        start = time.perf_counter()
        cpu_start = time.process_time()
        losses.append(_train_step(model, inputs, target, parameters, autocast_for(config, device)))
        _synchronize(device)
        step_times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        cpu_peaks.append(cpu.step_peak_growth())
        retained.append(cpu.retained())
        if cuda is not None:
            cuda_peaks.append(cuda.step_peak_growth())

        if cuda is not None:
            cuda_reserved.append(cuda.step_reserved_growth())

    with LiveTensorPeak() as live:
        _train_step(model, inputs, target, parameters, autocast_for(config, device))

    timed = step_times[config.warmup :]
    peaks = cuda_peaks if cuda is not None else cpu_peaks
    return {
        "status": "ok",
        "pid": os.getpid(),
        "task": task,
        "input_shape": list(inputs.shape),
        "parameters": sum(p.numel() for p in model.parameters()),
        "peak_growth_mib": max(peaks) / _MIB,
        "step_peak_growth_mib": [p / _MIB for p in peaks],
        "memory_metric": "cuda" if cuda is not None else "cpu_rss",
        "memory_method": cuda.method if cuda is not None else cpu.method,
        "baseline_mib": (cuda.baseline if cuda is not None else cpu.baseline) / _MIB,
        "cpu_rss_baseline_mib": cpu.baseline / _MIB,
        "cpu_rss_peak_growth_mib": max(cpu_peaks) / _MIB,
        "cpu_rss_retained_after_step_mib": [None if b is None else b / _MIB for b in retained],
        "live_peak_mib": live.peak_bytes / _MIB,
        "live_method": "peak bytes of tensor storage born in one extra step (TorchDispatchMode)",
        "cuda_allocated_peak_growth_mib": None if cuda is None else max(cuda_peaks) / _MIB,
        "cuda_reserved_peak_growth_mib": None if cuda is None else max(cuda_reserved) / _MIB,
        "malloc_trim_before_baseline": trimmed,
        "step_times_s": step_times,
        "median_step_s": statistics.median(timed),
        "min_step_s": min(timed),
        "cpu_step_times_s": cpu_times,
        "median_cpu_step_s": statistics.median(cpu_times[config.warmup :]),
        "losses": losses,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "device_name": (
            torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
        ),
        "priming": f"forward + backward at batch {PRIMING_BATCH}, no update",
        "optimizer": f"SGD update p -= {LEARNING_RATE} * grad, then grad = None",
        "channels_last": config.channels_last,
        "engine_layouts": engine_layouts(),
        "engine_pointwise": engine_pointwise(),
        "allocator_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")},
        "allocator_setting": allocator_setting().detail,
        "heap_releases": heap_release_stats().releases,
        "amp": config.amp,
    }
