"""Peak bytes of live tensor storage created during a region: an allocator-free figure.

Every operator call under :class:`LiveTensorPeak` is seen by a
``TorchDispatchMode`` (autograd's backward ops too); each new storage among its outputs
is counted until it is freed (a ``weakref.finalize`` on the storage). Storages that
existed before the region (parameters, inputs, cached buffers) are not counted, so the
peak is the region's growth over its start, as the resident-set figures are. The count
does not depend on glibc, the CUDA caching allocator or page reuse.
"""

from __future__ import annotations

import weakref
from types import TracebackType
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["LiveTensorPeak"]


class _Counter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _release(self, key: int, size: int) -> None:
        self._seen.discard(key)
        self.current -= size

    def _track(self, tensor: torch.Tensor) -> None:
        if tensor.device.type == "meta":  # shape-only: holds no memory
            return
        storage = tensor.untyped_storage()
        size = storage.nbytes()
        key = id(storage)
        if size == 0 or key in self._seen:
            return
        self._seen.add(key)
        self.current += size
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._release, key, size)

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        inputs = {
            id(t.untyped_storage())
            for t in tree_flatten((args, kwargs or {}))[0]
            if isinstance(t, torch.Tensor)
        }
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and id(tensor.untyped_storage()) not in inputs:
                self._track(tensor)
        return out


class LiveTensorPeak:
    """Context manager; :attr:`peak_bytes` is the high-water mark of storages it saw born.

    Example::

        with LiveTensorPeak() as live:
            loss = model(inputs).sum()
            loss.backward()
        print(live.peak_bytes)
    """

    def __init__(self) -> None:
        self._counter = _Counter()

    def __enter__(self) -> LiveTensorPeak:
        self._counter.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._counter.__exit__(kind, error, traceback)

    @property
    def peak_bytes(self) -> int:
        """Most bytes of region-born storage alive at once."""
        return self._counter.peak

    @property
    def current_bytes(self) -> int:
        """Bytes of region-born storage still alive."""
        return self._counter.current
