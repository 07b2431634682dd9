"""memory_efficient/restore on this package's naive models and on hand-written blocks."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import concatnets
from concatnets.convert import ConversionReport
from concatnets.convert.installed import is_converted


def _naive_densenet(drop_rate: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    return concatnets.create_model(
        "densenet_bc", depth=16, growth_rate=4, drop_rate=drop_rate, memory_efficient=False
    ).double()


@pytest.mark.parametrize("drop_rate", [0.0, 0.3])
def test_own_naive_densenet_matches(drop_rate: float, convert_copy, assert_same_network) -> None:
    model = _naive_densenet(drop_rate)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    converted, report = convert_copy(model, x)
    assert [s.path for s in report.converted if s.kind == "dense block"] == [
        f"features.denseblock{i}" for i in range(1, 4)
    ], str(report)
    assert_same_network(model, converted, x)


def test_second_conversion_is_harmless_and_restore_undoes() -> None:
    model = _naive_densenet()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        expected = model.eval()(x)
    same, first = concatnets.memory_efficient(model, example_input=x, report=True)
    assert same is model
    again, second = concatnets.memory_efficient(model, example_input=x, report=True)
    assert again is model
    assert [s.detail for s in second.converted] == ["already converted"] * len(first.converted)
    assert concatnets.restore(model) is model
    assert not any(is_converted(m) for m in model.modules())
    assert "forward" not in model.features.denseblock1.__dict__
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), expected)


class _LeakyLayer(nn.Module):
    """A dense layer whose activation is functional and not a ReLU: hooks cannot see it."""

    def __init__(self, channels: int, growth: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, 8, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, growth, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        new = self.conv2(F.leaky_relu(self.norm2(self.conv1(F.leaky_relu(self.norm1(x))))))
        return torch.cat([x, new], 1)


def test_a_block_that_only_looks_dense_is_not_converted_as_one() -> None:
    block = nn.Sequential(_LeakyLayer(4, 2), _LeakyLayer(6, 2))
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), block)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    _, report = concatnets.memory_efficient(model, example_input=x, report=True)
    assert not [s for s in report.converted if s.kind == "dense block"]
    assert any("disagrees" in s.detail for s in report.unconverted), str(report)
    # Its norm -> LeakyReLU -> conv chains still run on the engine, the model unchanged.
    assert "1.0.norm2 -> leaky_relu(0.01) -> 1.0.conv2" in str(report)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)


def test_default_example_input_and_report_text() -> None:
    model = _naive_densenet()
    converted, report = concatnets.memory_efficient(model, report=True)
    assert isinstance(report, ConversionReport)
    assert [s.path for s in report.converted if s.kind == "dense block"] == [
        f"features.denseblock{i}" for i in range(1, 4)
    ]
    assert "features.transition1.norm -> relu -> features.transition1.conv" in str(report)
    assert converted is model


def test_bad_input_is_named() -> None:
    with pytest.raises(TypeError, match=r"nn\.Module"):
        concatnets.memory_efficient(copy)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="policy"):
        concatnets.memory_efficient(nn.Conv2d(1, 1, 1), policy="fast")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="example_input"):
        concatnets.memory_efficient(nn.Linear(2, 2))


def test_converted_model_deep_copies_and_pickles_whole() -> None:
    model = _naive_densenet()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    concatnets.memory_efficient(model, example_input=x)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    duplicate = copy.deepcopy(model)
    for other in (loaded, duplicate):
        assert is_converted(other.features.denseblock1)
        other.eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
        torch.testing.assert_close(duplicate(x), model(x))
