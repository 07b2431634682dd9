"""numpy's dtype rules (``can_cast``, ``result_type``) applied to torch dtypes.

Every torch dtype with a numpy twin is judged by numpy itself. ``torch.bfloat16`` has no
numpy twin, so it gets rules derived from what it can represent exactly: 8 significand
bits and float32's exponent range. It therefore holds every bool, uint8 and int8 value and
fits inside float32, float64, complex64 and complex128, while float16 and bfloat16 hold
neither each other (float16 has more precision, bfloat16 more range). As a kind it is a
float, like float16. Other dtypes without a numpy twin (complex32, float8, quantized) only
take part when no conversion is needed or when ``casting="unsafe"``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "CASTING_RULES",
    "can_cast",
    "dtype_name",
    "numpy_dtype_of",
    "result_type",
    "torch_dtype_of",
]

CASTING_RULES: tuple[str, ...] = ("no", "equiv", "safe", "same_kind", "unsafe")

_TORCH_TO_NUMPY: dict[torch.dtype, np.dtype] = {
    torch.bool: np.dtype(np.bool_),
    torch.uint8: np.dtype(np.uint8),
    torch.int8: np.dtype(np.int8),
    torch.int16: np.dtype(np.int16),
    torch.int32: np.dtype(np.int32),
    torch.int64: np.dtype(np.int64),
    torch.float16: np.dtype(np.float16),
    torch.float32: np.dtype(np.float32),
    torch.float64: np.dtype(np.float64),
    torch.complex64: np.dtype(np.complex64),
    torch.complex128: np.dtype(np.complex128),
}
# The wide unsigned dtypes only exist in newer torch releases.
for _name in ("uint16", "uint32", "uint64"):
    if hasattr(torch, _name):
        _TORCH_TO_NUMPY[getattr(torch, _name)] = np.dtype(_name)

_NUMPY_TO_TORCH: dict[np.dtype, torch.dtype] = {v: k for k, v in _TORCH_TO_NUMPY.items()}

_BFLOAT16_SAFE_SOURCES = frozenset({torch.bool, torch.uint8, torch.int8, torch.bfloat16})
_BFLOAT16_SAFE_TARGETS = frozenset(
    {torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128}
)


def dtype_name(dtype: torch.dtype | np.dtype) -> str:
    """Short name of a torch or numpy dtype for messages (``float32``, ``bfloat16``)."""
    return str(dtype).removeprefix("torch.")


def numpy_dtype_of(dtype: torch.dtype) -> np.dtype | None:
    """The numpy twin of a torch dtype, or None when numpy has none (bfloat16, float8)."""
    return _TORCH_TO_NUMPY.get(dtype)


def torch_dtype_of(dtype: object) -> torch.dtype:
    """Convert a torch dtype or anything ``numpy.dtype`` understands into a torch dtype.

    Args:
        dtype: ``torch.float32``, ``numpy.float32``, ``"float32"``, ``float`` and so on.

    Raises:
        TypeError: numpy does not understand ``dtype``, or the dtype has no torch twin.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    numpy_dtype = np.dtype(dtype)  # raises numpy's own TypeError for nonsense
    try:
        return _NUMPY_TO_TORCH[numpy_dtype]
    except KeyError:
        raise TypeError(
            f"concatenate: numpy dtype {numpy_dtype} has no torch equivalent; pass a torch "
            "dtype such as torch.float32 for tensor inputs."
        ) from None


def _numpy_twin_or_raise(dtype: torch.dtype, other: torch.dtype) -> np.dtype:
    numpy_dtype = numpy_dtype_of(dtype)
    if numpy_dtype is None:
        raise TypeError(
            f"concatenate: {dtype_name(dtype)} has no numpy equivalent, so numpy's casting "
            f"rules cannot decide a conversion between it and {dtype_name(other)}; convert "
            "the tensors to one dtype first with .to(...), or pass casting='unsafe'."
        )
    return numpy_dtype


def can_cast(source: torch.dtype, target: torch.dtype, casting: str) -> bool:
    """``numpy.can_cast`` for torch dtypes (see the module docstring for bfloat16).

    Args:
        source: dtype converted from.
        target: dtype converted to.
        casting: one of ``CASTING_RULES``.
    """
    if source == target or casting == "unsafe":
        return True
    if casting in ("no", "equiv"):
        # "equiv" only adds byte-order changes, which torch does not have.
        return False
    if torch.bfloat16 in (source, target):
        if target == torch.bfloat16:
            safe = source in _BFLOAT16_SAFE_SOURCES
        else:
            safe = target in _BFLOAT16_SAFE_TARGETS
        if safe or casting == "safe":
            return safe
        # same_kind only compares kinds, and bfloat16 is of float16's kind.
        source = torch.float16 if source == torch.bfloat16 else source
        target = torch.float16 if target == torch.bfloat16 else target
    numpy_source = _numpy_twin_or_raise(source, target)
    numpy_target = _numpy_twin_or_raise(target, source)
    return bool(np.can_cast(numpy_source, numpy_target, casting))


def result_type(dtypes: Sequence[torch.dtype]) -> torch.dtype:
    """``numpy.result_type`` for torch dtypes: the smallest dtype all of them cast to safely.

    Args:
        dtypes: at least one torch dtype.
    """
    unique = list(dict.fromkeys(dtypes))
    if len(unique) == 1:
        return unique[0]
    if torch.bfloat16 in unique:
        if all(dtype in _BFLOAT16_SAFE_SOURCES for dtype in unique):
            return torch.bfloat16
        # float32 is the smallest numpy dtype that holds every bfloat16 value.
        unique = [torch.float32 if dtype == torch.bfloat16 else dtype for dtype in unique]
    numpy_dtypes = [
        _numpy_twin_or_raise(dtype, unique[1] if dtype == unique[0] else unique[0])
        for dtype in unique
    ]
    return _NUMPY_TO_TORCH[np.result_type(*numpy_dtypes)]
