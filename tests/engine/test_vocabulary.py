"""One forward in the vocabulary: plain torch on tensors, the engine on EngineMaps."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from concatnets.engine import vocabulary as vocab
from concatnets.engine.vocabulary import EngineUnsupportedError, FeatureMap
from concatnets.models.unet import UNet


class _Mixed(nn.Module):
    """Every operation once: crop, pool, upsample, cat of three, Identity activation."""

    def __init__(self, activation: nn.Module | None = None) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(2, 4, 3, bias=False)  # valid: 12 -> 10
        self.norm_a = nn.BatchNorm2d(4)
        self.act = activation or nn.ReLU()
        self.conv_b = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.norm_b = nn.GroupNorm(2, 6)
        self.pool = nn.MaxPool2d(2)
        self.coarse = nn.Conv2d(6, 3, 1)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear")
        self.side = nn.Conv2d(4, 2, 3, padding=1)  # pending 3x3 read by the concatenation
        self.norm_c = nn.BatchNorm2d(3)
        self.conv_c = nn.Conv2d(4 + 3 + 2, 2, 3, padding=1)

    def forward(self, x: FeatureMap) -> FeatureMap:
        a = vocab.activate(self.norm_a, self.act, vocab.conv(x, self.conv_a))  # (N, 4, 10, 10)
        b = vocab.activate(
            self.norm_b, nn.Identity(), vocab.conv(vocab.pool(a, self.pool), self.conv_b)
        )
        up = vocab.upsample(vocab.conv(b, self.coarse), self.up)  # (N, 3, 10, 10)
        up = vocab.activate(self.norm_c, nn.ReLU(), up)
        side = vocab.conv(a, self.side)
        skip = vocab.center_crop(a, (8, 8))
        parts = [skip, vocab.center_crop(up, (8, 8)), vocab.center_crop(side, (8, 8))]
        return vocab.conv(vocab.cat(parts), self.conv_c)  # (N, 2, 8, 8)


def _run_both(model: nn.Module, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    naive = model.double()
    engine = copy.deepcopy(naive)
    x = torch.randn(*shape, dtype=torch.float64)
    results = []
    for m, on_engine in ((naive, False), (engine, True)):
        inputs = x.clone().requires_grad_()
        out = vocab.run(m, inputs, engine=on_engine)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        results.append((out, inputs.grad, m))
    (out_a, dx_a, a), (out_b, dx_b, b) = results
    torch.testing.assert_close(out_b, out_a)
    torch.testing.assert_close(dx_b, dx_a)
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, msg=name)
    for (name, p), q in zip(a.named_buffers(), b.buffers(), strict=True):
        torch.testing.assert_close(q, p, msg=name)


def test_every_operation_matches_plain_torch_in_float64() -> None:
    _run_both(_Mixed(), (2, 2, 12, 12))


def test_the_engine_map_knows_its_shape_before_it_is_materialised() -> None:
    seen: dict[str, tuple[int, ...]] = {}
    pool, up = nn.MaxPool2d(2), nn.ConvTranspose2d(3, 5, 2, stride=2)

    def forward(x: FeatureMap) -> FeatureMap:
        pooled = vocab.pool(x, pool)
        seen["pooled"] = tuple(pooled.shape)
        seen["up"] = tuple(vocab.conv(pooled, up).shape)
        return vocab.conv(pooled, up)

    vocab.run(forward, torch.randn(2, 3, 11, 8), engine=True)
    assert seen == {"pooled": (2, 3, 5, 4), "up": (2, 5, 10, 8)}


class _CropPoolUp(nn.Module):
    """A cropped activation pooled and up-convolved in one part, then read with a skip."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(2, 4, 3, bias=False)  # valid: 14 -> 12
        self.norm_a = nn.BatchNorm2d(4)
        self.up = nn.ConvTranspose2d(4, 3, 2, stride=2)
        self.conv_b = nn.Conv2d(4 + 3, 2, 3, padding=1)

    def forward(self, x: FeatureMap) -> FeatureMap:
        a = vocab.activate(self.norm_a, nn.ReLU(), vocab.conv(x, self.conv_a))  # (N, 4, 12, 12)
        cropped = vocab.center_crop(a, (8, 8))
        up = vocab.conv(vocab.pool(cropped, nn.MaxPool2d(2)), self.up)  # crop, pool, up: 8x8
        return vocab.conv(vocab.cat([cropped, up]), self.conv_b)


def test_crop_pool_and_up_convolution_compose_in_one_part() -> None:
    _run_both(_CropPoolUp(), (2, 2, 14, 14))
    seen: list[tuple[int, ...]] = []
    model = _CropPoolUp()

    def forward(x: FeatureMap) -> FeatureMap:
        a = vocab.activate(model.norm_a, nn.ReLU(), vocab.conv(x, model.conv_a))
        pooled = vocab.pool(vocab.center_crop(a, (8, 8)), nn.MaxPool2d(2))
        seen.append(tuple(pooled.shape))
        return vocab.conv(pooled, model.up)

    out = vocab.run(forward, torch.randn(2, 2, 14, 14), engine=True)
    assert seen == [(2, 4, 4, 4)] and tuple(out.shape) == (2, 3, 8, 8)


def _tiny_unet() -> UNet:
    return UNet(in_channels=1, num_classes=2, depth=1, features=4, memory_efficient=True)


@pytest.mark.parametrize("activation", [nn.LeakyReLU(0.1), nn.ELU(0.7)], ids=["leaky_relu", "elu"])
def test_leaky_relu_and_elu_run_on_the_engine(activation: nn.Module) -> None:
    _run_both(_Mixed(activation), (2, 2, 12, 12))
    model = _tiny_unet().double()
    model.encoder[0].act2 = activation
    naive = copy.deepcopy(model).set_memory_efficient(False)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(model(x), naive(x))


def test_an_activation_the_engine_lacks_raises_on_the_engine_only() -> None:
    model = _tiny_unet()
    model.encoder[0].act2 = nn.GELU()
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(EngineUnsupportedError, match=r"GELU.*memory_efficient=False"):
        model(x)
    model.set_memory_efficient(False)
    assert model(x).shape == (1, 2, 8, 8)


def test_a_plain_torch_call_or_a_residual_on_an_engine_map_raises() -> None:
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x: FeatureMap) -> FeatureMap:
            return vocab.conv(x, self.conv) + x

    class Dropped(nn.Module):
        def forward(self, x: FeatureMap) -> FeatureMap:
            return torch.nn.functional.dropout(x, 0.5)

    x = torch.randn(1, 1, 4, 4)
    with pytest.raises(EngineUnsupportedError, match="residual"):
        vocab.run(Residual(), x, engine=True)
    with pytest.raises(EngineUnsupportedError, match="'dropout' on an EngineMap"):
        vocab.run(Dropped(), x, engine=True)
    assert vocab.run(Residual(), x, engine=False).shape == x.shape


def test_dropout_runs_naive_and_refuses_the_engine_while_active() -> None:
    drop = nn.Dropout(0.5)
    conv = nn.Conv2d(1, 2, 1)

    def forward(x: FeatureMap) -> FeatureMap:
        return vocab.conv(vocab.dropout(x, drop), conv)

    x = torch.randn(1, 1, 4, 4)
    assert vocab.run(forward, x, engine=False).shape == (1, 2, 4, 4)
    with pytest.raises(EngineUnsupportedError, match=r"Dropout\(p=0.5\)"):
        vocab.run(forward, x, engine=True)
    drop.eval()
    torch.testing.assert_close(vocab.run(forward, x, engine=True), conv(x))


@pytest.mark.parametrize(
    "module", [nn.MaxPool2d(3, stride=2), nn.MaxPool2d(2, padding=1), nn.AvgPool2d(2)]
)
def test_a_pooling_the_engine_cannot_recompute_is_refused(module: nn.Module) -> None:
    norm, conv = nn.BatchNorm2d(2), nn.Conv2d(1, 2, 1)

    def forward(x: FeatureMap) -> FeatureMap:
        return vocab.conv(
            vocab.pool(vocab.activate(norm, nn.ReLU(), vocab.conv(x, conv)), module),
            nn.Conv2d(2, 1, 1),
        )

    with pytest.raises(EngineUnsupportedError, match="max pooling with kernel == stride"):
        vocab.run(forward, torch.randn(2, 1, 8, 8), engine=True)
