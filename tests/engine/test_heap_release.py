"""``CONCATNETS_MALLOC=trim``: free heap pages given back at engine boundaries, when piled up."""

from __future__ import annotations

import pytest
import torch

from concatnets import _allocator
from concatnets._allocator import AllocatorSetting
from concatnets.engine import block_buffer, heap_release, parts_conv
from concatnets.engine.heap_release import (
    MIN_PILE_BYTES,
    HeapReading,
    heap_release_stats,
    release_if_piled_up,
    should_release,
)
from concatnets.models import create_model

_MIB = 2**20


def test_a_pile_is_released_only_when_large_against_what_is_in_use() -> None:
    other = 100 * _MIB
    in_use = 400 * _MIB
    assert not should_release(HeapReading(other + in_use + 150 * _MIB, in_use), other)
    assert should_release(HeapReading(other + in_use + 250 * _MIB, in_use), other)
    small = 20 * _MIB  # half of it is below the floor: the floor decides
    assert not should_release(HeapReading(other + small + MIN_PILE_BYTES - 1, small), other)
    assert should_release(HeapReading(other + small + MIN_PILE_BYTES + _MIB, small), other)


class _Counter:
    def __init__(self) -> None:
        self.calls = 0

    def check(self) -> None:
        self.calls += 1


@pytest.fixture
def counter(monkeypatch: pytest.MonkeyPatch) -> _Counter:
    fake = _Counter()
    monkeypatch.setattr(heap_release, "_RELEASER", fake)
    return fake


def _choose(monkeypatch: pytest.MonkeyPatch, choice: str) -> None:
    setting = AllocatorSetting(False, f"test: {choice}", choice)
    monkeypatch.setattr(_allocator, "_setting", setting)


def test_nothing_is_checked_unless_trim_was_chosen(
    monkeypatch: pytest.MonkeyPatch, counter: _Counter
) -> None:
    for choice in ("system", "pool", "pinned"):
        _choose(monkeypatch, choice)
        release_if_piled_up()
    assert counter.calls == 0
    _choose(monkeypatch, "trim")
    release_if_piled_up()
    assert counter.calls == 1


@pytest.mark.parametrize("model_name", ["densenet_bc_100", "unet_small"])
def test_engine_blocks_check_at_forward_and_backward(
    monkeypatch: pytest.MonkeyPatch, counter: _Counter, model_name: str
) -> None:
    _choose(monkeypatch, "trim")
    kwargs = {"depth": 10} if model_name.startswith("densenet") else {}
    model = create_model(model_name, memory_efficient=True, **kwargs)
    x = torch.randn(2, 3, 16, 16)
    out = model(x)
    after_forward = counter.calls
    out.float().sum().backward()
    assert after_forward >= 1 and counter.calls >= 2 * after_forward
    assert block_buffer.release_if_piled_up is parts_conv.release_if_piled_up


_REAL = heap_release._RELEASER.available


@pytest.mark.skipif(not _REAL, reason="needs glibc >= 2.33 and /proc")
def test_a_real_pile_of_freed_heap_blocks_leaves_the_resident_set() -> None:
    releaser = heap_release._Releaser()
    releaser.check()  # first use: learns what is not malloc's
    # A large free raises glibc's dynamic mmap threshold, so the blocks below come from
    # the heap; freeing them leaves their touched pages resident until given back.
    large = torch.ones(16 * _MIB // 4)
    del large
    blocks = [torch.ones(_MIB // 4 * 3) for _ in range(200)]  # 3 MiB each, heap
    top = blocks.pop()  # keeps the heap's top in use, so free() cannot trim it
    del blocks
    before = releaser._reading()
    releaser.check()
    after = releaser._reading()
    assert releaser.releases == 1
    assert before.resident - after.resident > 300 * _MIB
    del top


def test_stats_report_whether_it_is_on(monkeypatch: pytest.MonkeyPatch) -> None:
    _choose(monkeypatch, "system")
    assert not heap_release_stats().enabled
    _choose(monkeypatch, "trim")
    assert heap_release_stats().enabled == _REAL
