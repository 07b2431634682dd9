"""Bring your own network: convert a model's concatenation sites to the memory engine.

``concatnets.memory_efficient(model)`` finds dense blocks, norm -> act -> conv chains and
``cat -> conv`` decoders (from its forward recorded on an example) by probing how it runs,
checks each proposed site numerically, and installs the engine's forward on it without
changing parameters, buffers or state-dict keys. ``concatnets.restore(model)`` undoes it.
"""

from __future__ import annotations

from concatnets.convert.api import memory_efficient, restore
from concatnets.convert.report import ConversionReport, Site

__all__ = ["ConversionReport", "Site", "memory_efficient", "restore"]
