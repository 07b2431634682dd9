"""``concatenate``: numpy's semantics for numpy arrays and torch tensors alike."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from concatnets.ops._checks import (
    add_fix,
    as_array_list,
    casting_error,
    check_casting_rule,
    check_out_shape,
    check_shapes,
    numpy_error_with_fix,
    parse_axis,
    reject_out_with_dtype,
)
from concatnets.ops._dtypes import can_cast, dtype_name, result_type, torch_dtype_of
from concatnets.ops._write_into import write_into

__all__ = ["concatenate"]


def concatenate(
    arrays: Sequence[Any],
    axis: int | None = 0,
    out: np.ndarray | torch.Tensor | None = None,
    *,
    dtype: Any = None,
    casting: str = "same_kind",
) -> Any:
    """Join arrays or tensors along an existing axis, with ``numpy.concatenate``'s semantics.

    numpy inputs (arrays, nested lists, scalars) give exactly numpy's result, dtype and
    exception types, with clearer messages. Torch tensors follow the same rules: all
    dimensions but ``axis`` must match, ``axis=None`` flattens, the result dtype is
    ``numpy.result_type`` of the inputs (int64 with float32 gives float64, as in numpy),
    ``casting`` is checked with numpy's rules, the result lives on the inputs' device, and
    ``out`` must have exactly the result's shape. bfloat16, which numpy lacks, counts as a
    float that holds bool, int8 and uint8 exactly and fits in float32, so bfloat16 with
    float16 gives float32.

    Unlike ``torch.cat(..., out=)``, ``out`` works with inputs that require grad: the
    returned tensor is ``out`` itself and gradients flow from it, or from the buffer it is
    a view of, back to every input. This writes features into pre-allocated buffers. Make
    such views with grad mode enabled by slicing or ``narrow`` (autograd forbids in-place
    writes to views made under ``torch.no_grad()`` or by ``split``/``chunk``/``unbind``).

    Inputs must all be numpy-like or all be torch tensors; mixing them raises TypeError
    (convert with ``torch.as_tensor(x)`` or ``tensor.numpy()``), as does an ``out`` of the
    other kind. Tensors on different devices raise ValueError.

    Args:
        arrays: sequence of arrays (or tensors) of equal shape except along ``axis``.
        axis: axis to join along; negative counts from the end; None flattens every input.
        out: destination of exactly the result's shape; returned as the result.
        dtype: dtype of the result (numpy or torch dtype); not together with ``out``.
        casting: "no", "equiv", "safe", "same_kind" or "unsafe", as in numpy.

    Returns:
        The concatenation: a numpy array for numpy inputs, a tensor for tensor inputs.

    Raises:
        ValueError: no inputs, a zero-dimensional input (with an axis), mismatched shapes
            or numbers of dimensions, an ``out`` of the wrong shape, mismatched devices.
        numpy.exceptions.AxisError: ``axis`` out of range.
        TypeError: a cast ``casting`` forbids, ``out`` with ``dtype``, mixed kinds of input.

    Examples:
        >>> import numpy as np
        >>> a = np.array([[1, 2], [3, 4]])
        >>> b = np.array([[5, 6]])
        >>> concatenate((a, b), axis=0)
        array([[1, 2],
               [3, 4],
               [5, 6]])
        >>> concatenate((a, b.T), axis=1)
        array([[1, 2, 5],
               [3, 4, 6]])
        >>> concatenate((a, b), axis=None)
        array([1, 2, 3, 4, 5, 6])

        Writing into a pre-allocated buffer keeps gradients flowing:

        >>> import torch
        >>> x = torch.ones(1, 2, requires_grad=True)
        >>> buffer = torch.zeros(1, 3)
        >>> y = concatenate((x, torch.tensor([[7.0]])), axis=1, out=buffer)
        >>> y is buffer, y.requires_grad
        (True, True)
        >>> y.detach()
        tensor([[1., 1., 7.]])
        >>> (y * torch.tensor([[2.0, 3.0, 4.0]])).sum().backward()
        >>> x.grad
        tensor([[2., 3.]])
    """
    items = as_array_list(arrays)
    axis = parse_axis(axis)
    if isinstance(out, torch.Tensor) or any(isinstance(item, torch.Tensor) for item in items):
        return _concatenate_tensors(items, axis, out, dtype, casting)
    return _concatenate_numpy(items, axis, out, dtype, casting)


def _concatenate_numpy(
    items: list[Any], axis: int | None, out: Any, dtype: Any, casting: str
) -> np.ndarray:
    if isinstance(dtype, torch.dtype):
        raise TypeError(
            f"concatenate: dtype {dtype} is a torch dtype but the inputs are numpy arrays; "
            f"pass a numpy dtype such as numpy.{dtype_name(dtype)}, or pass tensors."
        )
    try:
        return np.concatenate(items, axis=axis, out=out, dtype=dtype, casting=casting)
    except Exception as numpy_error:
        clearer = _diagnose_numpy(items, axis, out, dtype, casting)
        # Only extend numpy's message when the diagnosis found the same problem class, so
        # the exception type callers catch is always numpy's own, and its sentence comes first.
        if clearer is None or type(clearer) is not type(numpy_error):
            raise
        raise add_fix(numpy_error, clearer) from None


def _diagnose_numpy(
    items: list[Any], axis: int | None, out: Any, dtype: Any, casting: str
) -> Exception | None:
    """Run our checks on what numpy refused and return the first problem, if we find one."""
    try:
        if out is not None and not isinstance(out, np.ndarray):
            return numpy_error_with_fix(
                TypeError,
                "'out' must be an array",
                f"concatenate got {type(out).__name__} as `out`; allocate one with "
                "numpy.empty(shape, dtype).",
            )
        if dtype is not None:
            np.dtype(dtype)  # numpy reports a dtype it does not understand first
        check_casting_rule(casting)
        reject_out_with_dtype(out, dtype)
        arrays = [np.asarray(item) for item in items]
        axis, result_shape = check_shapes([array.shape for array in arrays], axis)
        if out is not None:
            check_out_shape(np.shape(out), result_shape, axis)
            target = np.dtype(out.dtype)
        elif dtype is not None:
            target = np.dtype(dtype)
        else:
            target = np.result_type(*arrays)
        for index, array in enumerate(arrays):
            if not np.can_cast(array.dtype, target, casting):
                return casting_error(
                    index, str(array.dtype), str(target), casting, scalar=array.ndim == 0
                )
    except (ValueError, TypeError) as problem:  # AxisError is a ValueError
        return problem
    except Exception:  # our checks must never hide numpy's own error
        return None
    return None


def _kind_of(item: object) -> str:
    if isinstance(item, np.ndarray):
        return "a numpy.ndarray"
    return f"a {type(item).__name__}"


def _concatenate_tensors(
    items: list[Any], axis: int | None, out: Any, dtype: Any, casting: str
) -> torch.Tensor:
    if items and not any(isinstance(item, torch.Tensor) for item in items):
        raise TypeError(
            "concatenate: `out` is a torch tensor but the inputs are not; pass tensors "
            "(torch.as_tensor(x)) or a numpy array as `out`."
        )
    for index, item in enumerate(items):
        if not isinstance(item, torch.Tensor):
            raise TypeError(
                f"concatenate: array {index} is {_kind_of(item)} but other inputs are torch "
                "tensors; convert it with torch.as_tensor(x) (or the tensors with "
                "tensor.numpy()) so that all inputs are of one kind."
            )
    if out is not None and not isinstance(out, torch.Tensor):
        raise TypeError(
            f"concatenate: `out` is {_kind_of(out)} but the inputs are torch tensors; pass a "
            "torch tensor as `out`."
        )
    target = None if dtype is None else torch_dtype_of(dtype)
    check_casting_rule(casting)
    reject_out_with_dtype(out, dtype)
    tensors: list[torch.Tensor] = items
    _check_devices(tensors, out)
    axis, result_shape = check_shapes([tensor.shape for tensor in tensors], axis)
    if out is not None:
        check_out_shape(tuple(out.shape), result_shape, axis)
        target = out.dtype
    elif target is None:
        target = result_type([tensor.dtype for tensor in tensors])
    for index, tensor in enumerate(tensors):
        if tensor.dtype != target and not can_cast(tensor.dtype, target, casting):
            raise casting_error(
                index,
                dtype_name(tensor.dtype),
                dtype_name(target),
                casting,
                scalar=tensor.dim() == 0,
            )
    if out is not None:
        return write_into(out, tensors, axis)
    converted = [tensor if tensor.dtype == target else tensor.to(target) for tensor in tensors]
    if axis is None:
        return torch.cat([tensor.reshape(-1) for tensor in converted])
    return torch.cat(converted, dim=axis)


def _check_devices(tensors: list[torch.Tensor], out: torch.Tensor | None) -> None:
    if not tensors:
        return
    device = tensors[0].device
    for index, tensor in enumerate(tensors[1:], start=1):
        if tensor.device != device:
            raise ValueError(
                f"concatenate: array {index} is on {tensor.device} but array 0 is on {device}; "
                f"move them to one device first, e.g. x.to('{device}')."
            )
    if out is not None and out.device != device:
        raise ValueError(
            f"concatenate: `out` is on {out.device} but the inputs are on {device}; allocate "
            f"`out` on {device} or move the inputs there."
        )
