"""timm's and MONAI's DenseNet-121: every dense block on the engine, the same network."""

from __future__ import annotations

import pytest
import torch
from torch import nn


def test_timm_densenet121(convert_copy, assert_same_network) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("densenet121", pretrained=False).double()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    converted, report = convert_copy(model, x)
    blocks = [s.path for s in report.converted if s.kind == "dense block"]
    assert blocks == [f"features.denseblock{i}" for i in range(1, 5)], str(report)
    assert_same_network(model, converted, x)


def test_monai_densenet121(convert_copy, assert_same_network) -> None:
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    model: nn.Module = nets.DenseNet121(spatial_dims=2, in_channels=1, out_channels=3).double()
    x = torch.randn(2, 1, 64, 64, dtype=torch.float64)
    converted, report = convert_copy(model, x)
    blocks = [s.path for s in report.converted if s.kind == "dense block"]
    assert blocks == [f"features.denseblock{i}" for i in range(1, 5)], str(report)
    assert_same_network(model, converted, x)


def test_monai_channel_dropout_is_left_as_is_and_says_why(convert_copy) -> None:
    nets = pytest.importorskip("monai.networks.nets")
    model = nets.DenseNet121(spatial_dims=2, in_channels=1, out_channels=3, dropout_prob=0.2)
    x = torch.randn(2, 1, 64, 64)
    _, report = convert_copy(model, x)
    blocks = [s for s in report.unconverted if s.kind == "dense block"]
    assert [s.path for s in blocks] == [f"features.denseblock{i}" for i in range(1, 5)]
    assert all("Dropout2d" in s.detail for s in blocks), str(report)
    assert not [s for s in report.converted if s.kind == "dense block"]
