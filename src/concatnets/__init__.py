"""concatnets: concatenation-based networks (DenseNet, U-Net) with linear-memory training.

Concatenation here is a view into pre-allocated shared buffers, never a copy, and cheap
operations (batch norm, ReLU) are recomputed in backward from saved statistics
(Pleiss et al. 2017, "Memory-Efficient Implementation of DenseNets", arXiv 1707.06990).
"""

from __future__ import annotations

from concatnets._allocator import configure_allocator

# Before torch allocates: apply CONCATNETS_MALLOC (default: glibc left alone; see _allocator).
configure_allocator()

from concatnets._version import __version__  # noqa: E402
from concatnets.convert import memory_efficient, restore  # noqa: E402
from concatnets.models import create_model, list_models  # noqa: E402
from concatnets.ops import center_crop_to, concatenate, pad_to  # noqa: E402

__all__ = [
    "__version__",
    "center_crop_to",
    "concatenate",
    "create_model",
    "list_models",
    "memory_efficient",
    "pad_to",
    "restore",
]
