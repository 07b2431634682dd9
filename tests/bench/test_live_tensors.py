"""The live-tensor peak counter of ``bench memory``."""

from __future__ import annotations

import torch

from concatnets.bench.live_tensors import LiveTensorPeak

_MIB = 1024 * 1024


def test_counts_new_storages_once_and_forgets_freed_ones() -> None:
    existing = torch.zeros(1024, 256)  # 1 MiB born outside: not counted
    with LiveTensorPeak() as live:
        first = torch.empty(1024, 256)  # 1 MiB
        view = first[3:]
        first.add_(1)  # in place: same storage
        existing.mul_(2)
        del first, view
        second = torch.empty(512, 256)  # 0.5 MiB, after the first is gone
    assert live.peak_bytes == _MIB
    assert live.current_bytes == _MIB // 2
    del second


def test_backward_buffers_count() -> None:
    weight = torch.randn(256, 256, requires_grad=True)
    inputs = torch.randn(512, 256)
    with LiveTensorPeak() as live:
        (inputs @ weight).relu().sum().backward()
    # The (512, 256) product and its relu are alive at once in the forward.
    assert live.peak_bytes >= 2 * 512 * 256 * 4
    assert live.current_bytes == weight.grad.untyped_storage().nbytes()


def test_meta_tensors_hold_no_memory() -> None:
    real = torch.randn(4, 4)
    with LiveTensorPeak() as live:
        shape_only = torch.empty_like(real, device="meta").expand(1024, 4, 4).contiguous()
        kept = torch.empty(256, 256)  # 256 KiB
    assert shape_only.device.type == "meta"
    assert live.peak_bytes == kept.untyped_storage().nbytes()
