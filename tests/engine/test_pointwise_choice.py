"""The engine's 1x1 convolution kernel: chosen by measurement on CPU, overridable."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from concatnets.engine import pointwise_choice
from concatnets.engine.pointwise_choice import (
    GEMM_TOLERANCE,
    clear_pointwise_decisions,
    decide_pointwise,
    pointwise_decisions,
    set_pointwise_kernel,
    time_pointwise_step,
)
from concatnets.models.densenet import _DenseBlock


@pytest.fixture(autouse=True)
def fresh_choice(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("CONCATNETS_POINTWISE", raising=False)
    clear_pointwise_decisions()
    yield
    set_pointwise_kernel(None)
    clear_pointwise_decisions()


def _fake_probe(seconds: dict[str, float], calls: list[tuple[torch.dtype, bool]]):
    def probe(dtype: torch.dtype, channels_last: bool) -> dict[str, float]:
        calls.append((dtype, channels_last))
        return dict(seconds)

    return probe


@pytest.mark.parametrize(
    ("gemm", "conv", "chosen"),
    [
        (0.5, 1.0, "gemm"),
        (1.0, 1.0, "gemm"),
        (1.0 + GEMM_TOLERANCE / 2, 1.0, "gemm"),  # within the tolerance: gemm kept
        (1.2, 1.0, "conv"),
    ],
)
def test_cpu_probe_decides_once_per_key(
    monkeypatch: pytest.MonkeyPatch, gemm: float, conv: float, chosen: str
) -> None:
    calls: list[tuple[torch.dtype, bool]] = []
    monkeypatch.setattr(
        pointwise_choice, "probe_pointwise", _fake_probe({"gemm": gemm, "conv": conv}, calls)
    )
    first = decide_pointwise("cpu", torch.float32, False)
    again = decide_pointwise("cpu", torch.float32, False)
    assert first.kernel == again.kernel == chosen
    assert first.source == "probe" and first.probe_seconds == {"gemm": gemm, "conv": conv}
    assert calls == [(torch.float32, False)]
    decide_pointwise("cpu", torch.float32, True)
    assert calls[-1] == (torch.float32, True)  # another key probes again


def test_rules_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[torch.dtype, bool]] = []
    monkeypatch.setattr(
        pointwise_choice, "probe_pointwise", _fake_probe({"gemm": 9.0, "conv": 1.0}, calls)
    )
    assert decide_pointwise("cuda", torch.float16, True).kernel == "conv"  # rule: cuDNN
    assert decide_pointwise("cpu", torch.float64, False).kernel == "gemm"  # rule: checks
    assert decide_pointwise("cpu", torch.bfloat16, False).kernel == "conv"  # rule: memory
    assert calls == []
    monkeypatch.setenv("CONCATNETS_POINTWISE", "gemm")
    assert decide_pointwise("cpu", torch.float32, False).source == "env"
    assert decide_pointwise("cpu", torch.float32, False).kernel == "gemm"
    set_pointwise_kernel("conv")  # the process setting wins over the environment
    decision = decide_pointwise("cpu", torch.float64, False)
    assert (decision.kernel, decision.source) == ("conv", "set_pointwise_kernel")
    assert any(d.source == "set_pointwise_kernel" for d in pointwise_decisions().values())
    set_pointwise_kernel(None)
    monkeypatch.setenv("CONCATNETS_POINTWISE", "fast")
    with pytest.raises(ValueError, match="CONCATNETS_POINTWISE"):
        decide_pointwise("cpu", torch.float32, False)
    with pytest.raises(ValueError, match="auto, gemm, conv"):
        set_pointwise_kernel("mm")


@pytest.mark.parametrize("kernel", ["gemm", "conv"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_timer_runs_each_kernel(kernel: str, channels_last: bool) -> None:
    conv = torch.nn.Conv2d(8, 4, 1, bias=False)
    assert time_pointwise_step(kernel, (2, 8, 4, 5), torch.float32, channels_last, conv) > 0


class _ConvCalls(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.backward_weights: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func is torch.ops.aten.convolution_backward.default:
            self.backward_weights.append(tuple(args[2].shape))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("kernel", ["gemm", "conv"])
def test_dense_block_bottleneck_runs_on_the_chosen_kernel(kernel: str) -> None:
    torch.manual_seed(0)
    block = _DenseBlock(3, 5, 4, 2, 0.0, 2, True, "keep").double()
    reference = copy.deepcopy(block)
    reference.memory_efficient = False
    x = torch.randn(2, 5, 6, 6, dtype=torch.float64)
    set_pointwise_kernel(kernel)
    calls = _ConvCalls()
    with calls:
        block(x.clone().requires_grad_()).sum().backward()
    reference(x).sum().backward()
    pointwise = [shape for shape in calls.backward_weights if shape[2:] == (1, 1)]
    # The conv kernel runs one ATen backward per 1x1 convolution; the matrix product none.
    assert len(pointwise) == (3 if kernel == "conv" else 0)
    assert len(calls.backward_weights) - len(pointwise) == 3  # the 3x3 convolutions
    for (name, p), q in zip(block.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
