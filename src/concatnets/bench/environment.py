"""What machine and software a benchmark ran on, for the JSON and Markdown reports."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "VECTOR_FLAGS",
    "cpu_isa",
    "cpu_model",
    "describe_environment",
    "engine_layouts",
    "isa_line",
    "layouts_line",
    "torchvision_status",
]

#: ``/proc/cpuinfo`` flags that decide which convolution kernels oneDNN can run.
VECTOR_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "amx_fp16",
)
_ISA_LIMIT_VARS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")


def _cpuinfo_field(name: str, cpuinfo_path: str) -> str | None:
    """The first ``name : value`` of ``/proc/cpuinfo`` (None where there is none)."""
    try:
        with open(cpuinfo_path) as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip().lower() == name:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_model(cpuinfo_path: str = "/proc/cpuinfo") -> str:
    """The CPU's model name from ``/proc/cpuinfo``, else what ``platform`` knows."""
    return _cpuinfo_field("model name", cpuinfo_path) or platform.processor() or platform.machine()


def cpu_isa(
    cpuinfo_path: str = "/proc/cpuinfo", env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The CPU's vector instruction sets, and what limits the kernels' use of them.

    ``flags``: the :data:`VECTOR_FLAGS` the CPU reports (``/proc/cpuinfo``; ``None``
    where it cannot be read); ``aten_capability``: the vector level ATen's kernels
    dispatch to; ``limits``: ``ONEDNN_MAX_CPU_ISA`` and the like where set (they make an
    AVX-512 CPU run AVX2 kernels).
    """
    env = os.environ if env is None else env
    flags = _cpuinfo_field("flags", cpuinfo_path)
    present = None if flags is None else [f for f in VECTOR_FLAGS if f in flags.split()]
    try:
        import torch

        capability: str | None = torch.backends.cpu.get_cpu_capability()
    except Exception:  # no torch, or one without the query
        capability = None
    limits = {k: env[k] for k in _ISA_LIMIT_VARS if k in env}
    return {"flags": present, "aten_capability": capability, "limits": limits}


def engine_layouts() -> list[dict[str, Any]]:
    """The engine's layout decisions in this process, as JSON-ready rows."""
    from concatnets.engine import layout_decisions
    from concatnets.engine.choices import key_row

    return [
        {**key_row(key), "layout": d.layout, **_provenance(d.source, d.probe_seconds)}
        for key, d in layout_decisions().items()
    ]


def engine_pointwise() -> list[dict[str, Any]]:
    """The engine's 1x1 convolution kernel decisions in this process, as JSON-ready rows."""
    from concatnets.engine import pointwise_decisions
    from concatnets.engine.choices import key_row

    return [
        {**key_row(key), "kernel": d.kernel, **_provenance(d.source, d.probe_seconds)}
        for key, d in pointwise_decisions().items()
    ]


def _provenance(source: str, seconds: Mapping[str, float] | None) -> dict[str, Any]:
    """Where a decision came from, and the probe's best seconds per candidate if timed."""
    return {"source": source, "probe_seconds": None if seconds is None else dict(seconds)}


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def torchvision_status() -> tuple[bool, str]:
    """Whether ``import torchvision`` works here, and why not when it does not."""
    try:
        import torchvision  # noqa: F401
    except Exception as error:  # an ABI mismatch raises more than ImportError
        return False, f"{type(error).__name__}: {error}"
    return True, f"torchvision {_version('torchvision')}"


def isa_line(isa: Mapping[str, Any]) -> str:
    """:func:`cpu_isa`'s flags, ATen's level and any ISA limit, on one line."""
    flags = "unknown" if isa.get("flags") is None else " ".join(isa["flags"]) or "none"
    limits = "".join(f", {k}={v}" for k, v in isa.get("limits", {}).items())
    return f"{flags} (ATen {isa.get('aten_capability')}{limits})"


def _probe_timing(seconds: Mapping[str, float] | None) -> str:
    """`` k 1.0 ms, ...`` for a probe's best seconds per candidate; empty without a probe."""
    if not seconds:
        return ""
    return " " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in sorted(seconds.items()))


def layouts_line(rows: Sequence[Mapping[str, Any]]) -> str:
    """The engine's layout decisions on one line.

    Without rows no engine convolution chose a layout: either no engine ran, or only dense
    blocks did, which compute in the memory format of their input.
    """
    if not rows:
        return "none chosen (dense blocks compute in their input's memory format)"
    parts = []
    for row in rows:
        timing = _probe_timing(row.get("probe_seconds"))
        parts.append(
            f"{row['layout']} for {row['spatial_rank']}-D {row['dtype']} on {row['device']}, "
            f"{row['threads']} thread(s) ({row['source']}{timing})"
        )
    return "; ".join(parts)


def pointwise_line(rows: Sequence[Mapping[str, Any]]) -> str:
    """The engine's 1x1 convolution kernel decisions on one line (none: no engine ran one)."""
    if not rows:
        return "none chosen (no engine 1x1 convolution ran)"
    parts = []
    for row in rows:
        timing = _probe_timing(row.get("probe_seconds"))
        layout = "channels-last" if row["channels_last"] else "default-layout"
        parts.append(
            f"{row['kernel']} for {layout} {row['dtype']} on {row['device']}, "
            f"{row['threads']} thread(s) ({row['source']}{timing})"
        )
    return "; ".join(parts)


def describe_environment(
    results: Sequence[Mapping[str, Any]], child_env: Mapping[str, str], device: str
) -> dict[str, Any]:
    """Machine, software and allocator facts; torch details come from a child's report."""
    measured = next((r for r in results if r.get("status") == "ok"), {})
    layouts = {
        json.dumps(row, sort_keys=True): row for r in results for row in r.get("engine_layouts", [])
    }
    kernels = {
        json.dumps(row, sort_keys=True): row
        for r in results
        for row in r.get("engine_pointwise", [])
    }
    return {
        "cpu_model": cpu_model(),
        "cpu_isa": cpu_isa(env=child_env),
        "engine_layouts": list(layouts.values()),
        "engine_pointwise": list(kernels.values()),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "libc": " ".join(platform.libc_ver()).strip(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "torch_version": measured.get("torch_version") or _version("torch"),
        "torch_threads": measured.get("torch_threads"),
        "torch_interop_threads": measured.get("torch_interop_threads"),
        "device": device,
        "device_name": measured.get("device_name"),
        "allocator_env": {k: v for k, v in sorted(child_env.items()) if k.startswith("MALLOC_")},
        "thread_env": {
            k: child_env[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in child_env
        },
        "memory_method": measured.get("memory_method"),
        "priming": measured.get("priming"),
        "optimizer": measured.get("optimizer"),
    }
