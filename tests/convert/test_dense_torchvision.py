"""torchvision DenseNets: every dense block runs on the engine and computes the same thing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

torchvision = pytest.importorskip("torchvision")


@pytest.fixture(scope="module", params=["densenet121", "densenet169"])
def densenet(request: pytest.FixtureRequest) -> nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, request.param)().double()


def test_every_dense_block_converts_and_matches(
    densenet: nn.Module, convert_copy, assert_same_network
) -> None:
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    converted, report = convert_copy(densenet, x)
    blocks = [s.path for s in report.converted if s.kind == "dense block"]
    assert blocks == [f"features.denseblock{i}" for i in range(1, 5)], str(report)
    assert_same_network(densenet, converted, x)
