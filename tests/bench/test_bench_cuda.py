"""``bench memory`` and ``bench time`` on a CUDA device (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from concatnets.bench.config import BenchConfig
from concatnets.bench.interleaved import measure_interleaved
from concatnets.bench.memory import measure

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

_TINY = {"depth": 10, "growth_rate": 4, "num_classes": 3}


@pytest.mark.parametrize("amp", [None, "bf16", "fp16"])
def test_memory_reports_allocated_reserved_and_live(amp: str | None) -> None:
    config = BenchConfig(
        "densenet_bc",
        "efficient",
        4,
        16,
        steps=1,
        warmup=1,
        device="cuda",
        model_kwargs=_TINY,
        amp=amp,
    )
    result = measure(config)
    assert result["memory_metric"] == "cuda" and result["amp"] == amp
    assert result["cuda_reserved_peak_growth_mib"] >= 0
    assert result["peak_growth_mib"] > 0 and result["live_peak_mib"] > 0
    assert all(torch.isfinite(torch.tensor(result["losses"])))


def test_time_interleaves_modes_on_cuda_under_autocast() -> None:
    config = BenchConfig(
        "densenet_bc", "naive", 4, 16, device="cuda", model_kwargs=_TINY, amp="bf16"
    )
    result = measure_interleaved(config, ["efficient"], rounds=2, warmup=1)
    assert result["device"].startswith("cuda") and result["amp"] == "bf16"
    assert list(result["modes"]) == ["naive", "efficient"]
