"""The bench reports the CPU, its vector ISA and the engine's layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from concatnets.bench.environment import (
    cpu_isa,
    cpu_model,
    describe_environment,
    engine_layouts,
    isa_line,
    layouts_line,
)
from concatnets.engine import use_layout
from concatnets.engine.layout_choice import clear_layout_decisions, decide_layout

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13 64-Core Processor
flags\t\t: fpu sse sse2 avx fma avx2 bmi2 sha_ni
"""


@pytest.fixture
def amd_cpuinfo(tmp_path: Path) -> str:
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    return str(path)


def test_cpu_model_and_isa_come_from_cpuinfo(amd_cpuinfo: str) -> None:
    assert cpu_model(amd_cpuinfo) == "AMD EPYC 7B13 64-Core Processor"
    isa = cpu_isa(amd_cpuinfo, env={"ONEDNN_MAX_CPU_ISA": "AVX2", "HOME": "/x"})
    assert isa["flags"] == ["avx2", "fma"]
    assert isa["limits"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert isa["aten_capability"] == torch.backends.cpu.get_cpu_capability()
    assert isa_line(isa).startswith("avx2 fma (ATen ")
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in isa_line(isa)


def test_unreadable_cpuinfo_says_unknown(tmp_path: Path) -> None:
    isa = cpu_isa(str(tmp_path / "missing"), env={})
    assert isa["flags"] is None and isa_line(isa).startswith("unknown")


def test_engine_layouts_lists_the_decisions() -> None:
    clear_layout_decisions()
    assert engine_layouts() == [] and layouts_line([]).startswith("none")
    with use_layout("contiguous"):
        decide_layout("cpu", 2, torch.float32)
    rows = engine_layouts()
    clear_layout_decisions()
    assert rows == [
        {
            "device": "cpu",
            "spatial_rank": 2,
            "dtype": "float32",
            "threads": torch.get_num_threads(),
            "layout": "contiguous",
            "source": "use_layout",
            "probe_seconds": None,
        }
    ]
    assert layouts_line(rows).startswith("contiguous for 2-D float32 on cpu")


def test_layouts_line_shows_probe_timings() -> None:
    row = {
        "device": "cpu",
        "spatial_rank": 2,
        "dtype": "float32",
        "threads": 1,
        "layout": "channels_last",
        "source": "probe",
        "probe_seconds": {"channels_last": 0.01, "contiguous": 0.02},
    }
    assert "(probe channels_last 10.0 ms, contiguous 20.0 ms)" in layouts_line([row])


def test_describe_environment_merges_the_rows_layouts() -> None:
    row = {"device": "cpu", "spatial_rank": 2, "dtype": "float32", "threads": 1}
    cl = {**row, "layout": "channels_last", "source": "probe", "probe_seconds": None}
    results = [
        {"status": "ok", "engine_layouts": [cl]},
        {"status": "ok", "engine_layouts": [cl]},
        {"status": "ok", "engine_layouts": []},
    ]
    env = describe_environment(results, {"ONEDNN_MAX_CPU_ISA": "AVX2"}, "cpu")
    assert env["engine_layouts"] == [cl]
    assert env["cpu_isa"]["limits"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}


def test_engine_pointwise_rows_and_line(monkeypatch) -> None:
    from concatnets.bench.environment import engine_pointwise, pointwise_line
    from concatnets.engine import pointwise_choice

    pointwise_choice.clear_pointwise_decisions()
    assert engine_pointwise() == [] and pointwise_line([]).startswith("none")
    monkeypatch.setattr(
        pointwise_choice, "probe_pointwise", lambda dtype, cl: {"gemm": 0.01, "conv": 0.03}
    )
    try:
        pointwise_choice.decide_pointwise("cpu", torch.float32, False)
        rows = engine_pointwise()
        assert rows == [
            {
                "device": "cpu",
                "dtype": "float32",
                "channels_last": False,
                "threads": torch.get_num_threads(),
                "kernel": "gemm",
                "source": "probe",
                "probe_seconds": {"gemm": 0.01, "conv": 0.03},
            }
        ]
        line = pointwise_line(rows)
        assert line.startswith("gemm for default-layout float32 on cpu")
        assert "(probe conv 30.0 ms, gemm 10.0 ms)" in line
    finally:
        pointwise_choice.clear_pointwise_decisions()
