"""The engine's CPU buffer pool: blocks come back exactly when their storage dies."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from concatnets.bench.live_tensors import LiveTensorPeak
from concatnets.engine import buffer_pool, run_dense_block
from concatnets.engine.buffer_pool import empty, empty_like, pool_stats, release_buffers
from concatnets.models.densenet import _DenseBlock

_SHAPE = (4, 64, 32, 32)  # 1 MiB of float32: pooled


@pytest.fixture(autouse=True)
def _pool_on() -> Iterator[None]:
    before = buffer_pool.pool_enabled()
    buffer_pool.set_pool_enabled(True)
    yield
    buffer_pool.set_pool_enabled(before)


def _filled(value: float) -> torch.Tensor:
    return empty(_SHAPE, dtype=torch.float32).fill_(value)


def test_a_freed_block_is_handed_out_again() -> None:
    first = _filled(1.0)
    address = first.data_ptr()
    del first
    hits = pool_stats().hits
    second = empty(_SHAPE, dtype=torch.float32)
    assert second.data_ptr() == address
    assert pool_stats().hits == hits + 1


def test_a_view_keeps_its_block_out_of_the_pool() -> None:
    whole = _filled(1.0)
    view = whole[1:].view(-1)
    del whole
    other = _filled(2.0)
    assert other.data_ptr() != view.data_ptr()
    assert torch.equal(view, torch.ones_like(view))


class _SavesPooledCopy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        kept = empty_like(x).copy_(x)
        ctx.save_for_backward(kept)
        return x * 1.0

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (kept,) = ctx.saved_tensors
        return grad * kept


def test_a_tensor_saved_for_backward_keeps_its_block() -> None:
    x = torch.randn(_SHAPE, requires_grad=True)
    y = _SavesPooledCopy.apply(x)
    # Anything allocated between forward and backward must not get the saved block.
    noise = [_filled(float("nan")) for _ in range(3)]
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, x.detach())
    del noise


def test_a_block_freed_on_another_thread_comes_back() -> None:
    box = [_filled(1.0)]
    address = box[0].data_ptr()
    worker = threading.Thread(target=box.clear)
    worker.start()
    worker.join()
    assert empty(_SHAPE, dtype=torch.float32).data_ptr() == address


@pytest.mark.parametrize(
    ("shape", "memory_format"),
    [((4, 64, 32, 32), torch.channels_last), ((2, 32, 8, 32, 32), torch.channels_last_3d)],
)
def test_channels_last_requests_get_channels_last_strides(
    shape: tuple[int, ...], memory_format: torch.memory_format
) -> None:
    t = empty(shape, dtype=torch.float32, memory_format=memory_format)
    assert t.shape == shape and t.is_contiguous(memory_format=memory_format)
    assert not t.is_contiguous()
    like = empty_like(t)
    assert like.is_contiguous(memory_format=memory_format)


def test_small_off_cpu_and_disabled_requests_bypass_the_pool() -> None:
    before = pool_stats()
    small = empty((16, 16), dtype=torch.float32)
    meta = empty(_SHAPE, dtype=torch.float32, device="meta")
    buffer_pool.set_pool_enabled(False)
    plain = empty(_SHAPE, dtype=torch.float32)
    after = pool_stats()
    assert (after.hits, after.misses) == (before.hits, before.misses)
    assert meta.device.type == "meta" and small.shape == (16, 16) and plain.shape == _SHAPE


def test_a_small_request_does_not_take_a_much_larger_block() -> None:
    large = empty((4 * 2**20,), dtype=torch.uint8)
    address = large.data_ptr()
    del large
    small = empty((2**20,), dtype=torch.uint8)
    assert small.data_ptr() != address


def test_release_buffers_unmaps_free_blocks_only() -> None:
    kept = _filled(1.0)
    freed = _filled(2.0)
    del freed
    assert release_buffers() >= kept.numel() * 4
    stats = pool_stats()
    assert stats.free_bytes == 0 and stats.held_bytes >= kept.numel() * 4
    assert torch.equal(kept, torch.ones_like(kept))


def test_idle_blocks_are_unmapped(monkeypatch: pytest.MonkeyPatch) -> None:
    release_buffers()
    freed = _filled(1.0)
    del freed
    assert pool_stats().free_bytes > 0
    monkeypatch.setattr(buffer_pool, "IDLE_SECONDS", -1.0)
    misses = pool_stats().misses
    held = empty((8 * 2**20,), dtype=torch.uint8)  # a request evicts what idled too long
    assert pool_stats().misses == misses + 1 and pool_stats().free_bytes == 0
    del held


def test_live_tensor_counters_see_pooled_storage() -> None:
    with LiveTensorPeak() as live:
        a = _filled(1.0)
        b = _filled(2.0)
        del a, b
    assert live.peak_bytes == 2 * 4 * torch.Size(_SHAPE).numel()


def test_a_dense_block_reuses_its_buffers_in_the_next_step() -> None:
    torch.manual_seed(0)
    layers = list(_DenseBlock(3, 32, 8, 4, 0.0, 2, False, "keep").children())
    x = torch.randn(4, 32, 32, 32, requires_grad=True)

    def step() -> torch.Tensor:
        out = run_dense_block(x, layers).features
        out.square().sum().backward()
        assert x.grad is not None
        grad = x.grad.clone()
        x.grad = None
        return grad

    first = step()
    misses = pool_stats().misses
    second = step()
    assert pool_stats().misses == misses  # every pooled buffer came back and was reused
    torch.testing.assert_close(first, second)
