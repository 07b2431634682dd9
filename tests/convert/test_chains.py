"""U-Nets: cat -> conv and norm -> ReLU -> conv chains on the engine, the same network."""

from __future__ import annotations

import pytest
import torch

import concatnets


def _chain_details(report: object) -> str:
    return "\n".join(s.detail for s in report.converted if s.kind == "chain")  # type: ignore[attr-defined]


def test_own_naive_unet(convert_copy, assert_same_network) -> None:
    torch.manual_seed(0)
    model = concatnets.create_model(
        "unet", features=4, depth=2, memory_efficient=False, in_channels=1, num_classes=2
    ).double()
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    converted, report = convert_copy(model, x)
    details = _chain_details(report)
    assert "encoder.0.norm1 -> relu -> encoder.0.conv2" in details, str(report)
    assert "cat(2) -> decoder.0.block.conv1" in details
    assert_same_network(model, converted, x)


def test_monai_basic_unet_with_batch_norm_and_relu(convert_copy, assert_same_network) -> None:
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    model = nets.BasicUNet(
        spatial_dims=2, in_channels=1, out_channels=2, features=(4,) * 6, act="relu", norm="batch"
    ).double()
    x = torch.randn(2, 1, 32, 32, dtype=torch.float64)
    converted, report = convert_copy(model, x)
    assert "conv_0.conv_0.adn.N -> relu -> conv_0.conv_1.conv" in _chain_details(report)
    assert_same_network(model, converted, x)
