"""Peak-memory readings shown in the training log."""

from __future__ import annotations

import mmap
import sys

import pytest

from concatnets.training.memory import (
    format_bytes,
    peak_memory_bytes,
    peak_memory_label,
    reset_peak_memory,
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the mark resets on Linux only")
def test_cpu_peak_restarts_after_a_reset() -> None:
    # A mapping of our own, so that freeing it surely lowers the resident set: a tensor's
    # block may stay in glibc's heap after the hundreds of tests before this one.
    big = mmap.mmap(-1, 64 * 2**20)
    big.write(b"\x01" * len(big))  # 64 MiB, touched
    before = peak_memory_bytes("cpu")
    big.close()
    reset_peak_memory("cpu")
    after = peak_memory_bytes("cpu")
    assert after < before - 32 * 2**20  # the freed 64 MiB no longer counts


def test_format_bytes_uses_binary_units() -> None:
    assert format_bytes(3 * 2**20) == "3.0 MiB"


def test_peak_label_names_what_is_measured() -> None:
    assert peak_memory_label("cpu") == "process peak RSS"
    assert peak_memory_label("cuda:0") == "peak CUDA allocated"
