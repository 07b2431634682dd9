"""The process's resident-set high-water mark helpers."""

from __future__ import annotations

import mmap
import sys

import pytest

from concatnets._process_memory import reset_resident_peak, resident_peak_bytes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the mark resets on Linux only")
def test_mark_covers_a_freed_allocation_until_it_is_reset() -> None:
    big = mmap.mmap(-1, 64 * 2**20)  # our own mapping: freeing it surely lowers the RSS
    big.write(b"\x01" * len(big))  # 64 MiB, touched
    big.close()
    before = resident_peak_bytes()
    assert reset_resident_peak()
    assert resident_peak_bytes() < before - 32 * 2**20
