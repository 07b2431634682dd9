"""Third-party U-Nets converted by recording and replaying their forward: the same network.

MONAI's ``BasicUNet`` (instance norm, LeakyReLU, shape-dependent padding in ``UpCat``)
and smp's ``Unet`` (ResNet encoder, nearest upsampling in the decoder) in float64:
outputs, input and parameter gradients, running statistics after a step, strict state
dicts both ways (``assert_same_network``); each convolution's input is read from its
parts, never stored.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

import concatnets
from concatnets.convert.installed import is_converted
from concatnets.convert.replayed import ReplayForward


def _details(report: object) -> str:
    return "\n".join(s.detail for s in report.converted)  # type: ignore[attr-defined]


def _basic_unet(**kwargs: object) -> nn.Module:
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    return nets.BasicUNet(spatial_dims=2, in_channels=1, out_channels=2, **kwargs).double()


def _smp_unet(**kwargs: object) -> nn.Module:
    smp = pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(0)
    return smp.Unet("resnet34", encoder_weights=None, classes=2, **kwargs).double()


@pytest.mark.parametrize(
    "features", [(32, 32, 64, 128, 256, 32), (4, 4, 8, 8, 16, 4)], ids=["default", "tiny"]
)
def test_monai_basic_unet(features, convert_copy, assert_same_network) -> None:
    model = _basic_unet(features=features)
    x = torch.randn(1, 1, 32, 32, dtype=torch.float64)
    converted, report = convert_copy(model, x)
    details = _details(report)
    # Every convolution but the first reads a map that is not stored; each decoder's
    # cat([skip, up]) with the transposed convolution recomputed.
    assert "18 convolution(s)" in details, str(report)
    assert (
        "cat(2) -> upcat_1.convs.conv_0.conv (conv_0.conv_1.adn.N -> leaky_relu(0.1); "
        "upcat_2.convs.conv_1.adn.N -> leaky_relu(0.1) -> upcat_1.upsample.deconv (recomputed))"
    ) in details
    assert "down_1.convs.conv_1.adn.N -> leaky_relu(0.1) -> down_2.max_pooling" in details
    assert not report.unconverted, str(report)
    assert_same_network(model, converted, x)


def test_monai_basic_unet_with_odd_size_pads_as_it_did(convert_copy, assert_same_network) -> None:
    # 44 -> 22 -> 11 -> 5 -> 2: UpCat pads the upsampled 10 and 4 by one (replicate), a
    # plain torch call between the up-convolution and the concatenation.
    model = _basic_unet(features=(4, 4, 8, 8, 16, 4))
    x = torch.randn(2, 1, 44, 44, dtype=torch.float64)
    converted, report = convert_copy(model, x)
    assert "read by pad: materialised" in str(report), str(report)
    assert_same_network(model, converted, x)


@pytest.mark.parametrize("depth", [5, 3], ids=["resnet34", "depth3"])
def test_smp_unet(depth, convert_copy, assert_same_network) -> None:
    channels = (32, 16, 8, 8, 4)[:depth]
    model = _smp_unet(encoder_depth=depth, decoder_channels=channels)
    # 64: the deepest batch norm sees 2 x 2 x 2 values (at 32 only 2, ill-conditioned).
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    converted, report = convert_copy(model, x)
    details = _details(report)
    # The decoder's cat([upsampled, skip]) -> conv, the upsampling of the previous
    # block's last BN -> ReLU recomputed (not stored), and the encoder's chains.
    assert (
        "cat(2) -> decoder.blocks.1.conv1.0 (decoder.blocks.0.conv2.1 -> relu -> nearest x2; "
    ) in details, str(report)
    assert "encoder.layer1.0.bn1 -> relu -> encoder.layer1.0.conv2" in details
    # The stem's 3x3 stride-2 pooling (padding 1), read whole by the first residual sum,
    # is stored with its indices (not rebuilt three times); the activation before it not.
    assert "encoder.bn1 -> relu -> encoder.maxpool: stored with its pooling" in str(report)
    # A residual sum's norm is read by the sum only: plain, stored as the original stores it.
    assert "encoder.layer1.0.bn2: left plain: no reader keeps it unstored" in str(report)
    assert_same_network(model, converted, x)


def test_new_input_shapes_and_modes_are_recorded_and_checked_on_first_call() -> None:
    model = _basic_unet(features=(4, 4, 8, 8, 16, 4))
    converted = concatnets.memory_efficient(
        copy.deepcopy(model), example_input=torch.randn(2, 1, 32, 32, dtype=torch.float64)
    )
    forward = converted.__dict__["forward"]
    assert isinstance(forward, ReplayForward) and len(forward.programs) == 1
    x = torch.randn(3, 1, 48, 48, dtype=torch.float64)
    converted.eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(converted(x), model(x), rtol=1e-7, atol=1e-8)
    assert len(forward.programs) == 2 and all(p is not None for p in forward.programs.values())


def test_a_bf16_autocast_call_stays_converted() -> None:
    # Its replay keeps the model's layout: in bf16 another layout's kernels round
    # differently and the replay's check against the module's forward would refuse it.
    torch.manual_seed(0)
    model = _smp_unet(encoder_depth=3, decoder_channels=(16, 8, 8)).float()
    converted = concatnets.memory_efficient(model, example_input=torch.randn(2, 3, 64, 64))
    forward = converted.__dict__["forward"]
    assert isinstance(forward, ReplayForward)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        converted(torch.randn(2, 3, 64, 64)).float().sum().backward()
    assert len(forward.programs) == 2 and all(p is not None for p in forward.programs.values())


def test_restore_second_conversion_and_pickle() -> None:
    model = _basic_unet(features=(4, 4, 8, 8, 16, 4))
    x = torch.randn(2, 1, 32, 32, dtype=torch.float64)
    converted, first = concatnets.memory_efficient(model, example_input=x, report=True)
    _, second = concatnets.memory_efficient(converted, example_input=x, report=True)
    assert [s.detail for s in second.converted] == ["already converted"]
    copied = pickle.loads(pickle.dumps(converted))
    assert copied.__dict__["forward"].programs == {}  # recorded again on its first call
    converted.eval()
    copied.eval()
    with torch.no_grad():
        torch.testing.assert_close(copied(x), converted(x), rtol=0, atol=0)
    assert is_converted(copied)
    concatnets.restore(converted)
    assert not any(is_converted(m) for m in converted.modules())
    assert first.converted
