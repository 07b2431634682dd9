"""U-Nets: cat -> conv and norm -> ReLU -> conv chains on the engine, the same network."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import concatnets


def _chain_details(report: object) -> str:
    return "\n".join(s.detail for s in report.converted if s.kind == "chain")  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def smp_unet() -> nn.Module:
    smp = pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(0)
    return smp.Unet("resnet34", encoder_weights=None, classes=2).double()


def test_smp_unet_decoder_cats_and_chains(smp_unet, convert_copy, assert_same_network) -> None:
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    converted, report = convert_copy(smp_unet, x)
    details = _chain_details(report)
    for level in range(4):  # the fifth decoder block has no skip
        assert f"cat(2) -> decoder.blocks.{level}.conv1.0" in details, str(report)
        assert (
            f"decoder.blocks.{level}.conv1.1 -> relu -> decoder.blocks.{level}.conv2.0" in details
        )
    assert "encoder.layer1.0.bn1 -> relu -> encoder.layer1.0.conv2" in details
    assert_same_network(smp_unet, converted, x)


def test_own_naive_unet(convert_copy, assert_same_network) -> None:
    torch.manual_seed(0)
    model = concatnets.create_model(
        "unet", features=4, depth=2, memory_efficient=False, in_channels=1, num_classes=2
    ).double()
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    converted, report = convert_copy(model, x)
    assert "norm1 -> relu -> conv2" in _chain_details(report), str(report)
    assert_same_network(model, converted, x)


def test_monai_basic_unet_is_left_as_is_and_says_why(convert_copy) -> None:
    nets = pytest.importorskip("monai.networks.nets")
    model = nets.BasicUNet(spatial_dims=2, in_channels=1, out_channels=2, features=(4,) * 6)
    _, report = convert_copy(model, torch.randn(2, 1, 32, 32))
    assert not report.converted
    text = str(report)
    assert "InstanceNorm2d (batch norm only), LeakyReLU (ReLU only)" in text
    assert "torch.fx graph differs from its forward" in text


def test_monai_basic_unet_with_batch_norm_and_relu(convert_copy, assert_same_network) -> None:
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    model = nets.BasicUNet(
        spatial_dims=2, in_channels=1, out_channels=2, features=(4,) * 6, act="relu", norm="batch"
    ).double()
    x = torch.randn(2, 1, 32, 32, dtype=torch.float64)
    converted, report = convert_copy(model, x)
    assert "conv_0.adn.N -> relu -> conv_1.conv" in _chain_details(report), str(report)
    assert_same_network(model, converted, x)
