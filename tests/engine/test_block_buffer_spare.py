"""A dense block that starts from parts in place: the spare channels an earlier block
reserved after its output (``run_dense_block(..., spare_channels=...)``).

The chain is an FC-DenseNet level (Jégou et al. 2017): block A's output is the skip, read
by plain autograd (which saves it) and later by block B as the first part of
``[skip, upsampled]``; B writes into A's storage, so the skip is neither copied nor
stored twice, and every value and gradient equals the naive chain's in float64.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from concatnets.bench.live_tensors import LiveTensorPeak
from concatnets.engine import DenseLayerSpec, run_dense_block

C_IN, K, LAYERS_A, LAYERS_B, UP = 4, 3, 3, 2, 5
SKIP = C_IN + LAYERS_A * K  # 13 channels
SPARE = UP + LAYERS_B * K  # what block B adds after the skip


def plain_layers(in_channels: int, count: int) -> nn.ModuleList:
    layers = nn.ModuleList()
    for index in range(count):
        channels = in_channels + index * K
        norm = nn.BatchNorm2d(channels)
        nn.init.uniform_(norm.weight, 0.5, 1.5)
        nn.init.uniform_(norm.bias, -0.5, 0.5)
        conv = nn.Conv2d(channels, K, 3, padding=1)
        layers.append(nn.ModuleDict({"norm": norm, "conv": conv}))
    return layers.double()


def make_pair() -> tuple[nn.ModuleList, nn.ModuleList]:
    torch.manual_seed(0)
    return plain_layers(C_IN, LAYERS_A), plain_layers(SKIP + UP, LAYERS_B)


def specs(layers: nn.ModuleList, drop_rate: float) -> list[DenseLayerSpec]:
    return [
        DenseLayerSpec(m["norm"], m["conv"], drop_rate=drop_rate, training=True) for m in layers
    ]


def naive_block(parts: list[torch.Tensor], layers: nn.ModuleList, drop_rate: float) -> torch.Tensor:
    features = list(parts)
    for layer in layers:
        new = layer["conv"](torch.relu(layer["norm"](torch.cat(features, 1))))
        features.append(F.dropout(new, drop_rate, training=True))
    return torch.cat(features, 1)


def naive_chain(
    x: torch.Tensor, up: torch.Tensor, pair: tuple[nn.ModuleList, nn.ModuleList], drop: float
) -> tuple[torch.Tensor, torch.Tensor]:
    skip = naive_block([x], pair[0], drop)
    side = torch.sin(skip)  # plain autograd saves the skip
    return naive_block([skip, up], pair[1], drop), side


def engine_chain(
    x: torch.Tensor,
    up: torch.Tensor,
    pair: tuple[nn.ModuleList, nn.ModuleList],
    drop: float,
    spare: int = SPARE,
) -> tuple[torch.Tensor, torch.Tensor]:
    skip = run_dense_block(x, specs(pair[0], drop), spare_channels=spare)
    side = torch.sin(skip.features)
    out = run_dense_block(
        [skip.features, up], specs(pair[1], drop), input_moments=[skip.moments, None]
    )
    return out.features, side


def weighted(t: torch.Tensor) -> torch.Tensor:
    return (t * torch.linspace(-1, 1, t.numel(), dtype=t.dtype).view_as(t)).sum()


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(2)
    x = torch.randn(2, C_IN, 5, 6, dtype=torch.float64)
    return x, torch.randn(2, UP, 5, 6, dtype=torch.float64)


def step(chain, pair, drop: float, **kwargs: int) -> tuple[torch.Tensor, ...]:
    x, up = (t.clone().requires_grad_() for t in inputs())
    torch.manual_seed(1)  # the same dropout masks in every chain
    out, side = chain(x, up, pair, drop, **kwargs)
    (weighted(out) + weighted(side)).backward()
    return out.detach(), side.detach(), x.grad, up.grad  # type: ignore[return-value]


@pytest.mark.parametrize("drop", [0.0, 0.2])
def test_block_from_reserved_channels_matches_naive_float64(drop: float) -> None:
    naive = make_pair()
    engine = copy.deepcopy(naive)
    expected = step(naive_chain, naive, drop)
    got = step(engine_chain, engine, drop)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)
    named = [*naive[0].named_parameters("a"), *naive[1].named_parameters("b")]
    for (name, a), b in zip(named, [*engine[0].parameters(), *engine[1].parameters()], strict=True):
        assert b.grad is not None, name
        torch.testing.assert_close(b.grad, a.grad, msg=name)
    buffers = [*naive[0].named_buffers("a"), *naive[1].named_buffers("b")]
    for (name, a), b in zip(buffers, [*engine[0].buffers(), *engine[1].buffers()], strict=True):
        torch.testing.assert_close(b, a, msg=name)  # running statistics, updated once


def test_second_block_writes_into_the_first_blocks_storage() -> None:
    a, b = make_pair()
    x, up = inputs()
    skip = run_dense_block(x.requires_grad_(), specs(a, 0.0), spare_channels=SPARE)
    before = skip.features.clone()
    out = run_dense_block([skip.features, up], specs(b, 0.0))
    assert out.features.untyped_storage().data_ptr() == skip.features.untyped_storage().data_ptr()
    assert out.features.shape[1] == SKIP + SPARE
    torch.testing.assert_close(skip.features, before)  # the skip's values are untouched
    torch.testing.assert_close(out.features[:, :SKIP], before)
    # The reservation serves one block: a second block from the same skip copies it.
    again = run_dense_block([skip.features, up], specs(b, 0.0))
    assert again.features.untyped_storage().data_ptr() != skip.features.untyped_storage().data_ptr()
    torch.testing.assert_close(again.features, out.features)


@pytest.mark.parametrize("spare", [0, SPARE - 1])
def test_without_enough_reserved_channels_the_part_is_copied(spare: int) -> None:
    naive = make_pair()
    expected = step(naive_chain, naive, 0.0)
    got = step(engine_chain, copy.deepcopy(naive), 0.0, spare=spare)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)


def test_no_grad_chain_starts_in_place_too() -> None:
    a, b = make_pair()
    x, up = inputs()
    with torch.no_grad():
        skip = run_dense_block(x, specs(a, 0.0), spare_channels=SPARE)
        out = run_dense_block([skip.features, up], specs(b, 0.0))
        expected = naive_block([naive_block([x], copy.deepcopy(a), 0.0), up], b, 0.0)
    assert out.features.untyped_storage().data_ptr() == skip.features.untyped_storage().data_ptr()
    torch.testing.assert_close(out.features, expected)


def test_the_skip_is_stored_once() -> None:
    """After the forward the chain holds one storage fewer: the skip's second copy."""

    def live_after_forward(spare: int) -> int:
        pair = make_pair()
        x, up = (t.requires_grad_() for t in inputs())
        with LiveTensorPeak() as live:
            out, side = engine_chain(x, up, pair, 0.0, spare=spare)
            kept = live.current_bytes
        del out, side
        return kept

    skip_bytes = 2 * SKIP * 5 * 6 * 8
    # With the reservation the spare channels live from block A on, inside its storage.
    assert live_after_forward(0) - live_after_forward(SPARE) == skip_bytes


def test_spare_channels_must_be_a_non_negative_integer() -> None:
    a, _ = make_pair()
    x, _ = inputs()
    for bad in (-1, True, 2.0):
        with pytest.raises(ValueError, match="spare_channels"):
            run_dense_block(x, specs(a, 0.0), spare_channels=bad)  # type: ignore[arg-type]
