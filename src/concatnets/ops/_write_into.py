"""Autograd-aware concatenation into a caller's tensor: the primitive the memory engine uses.

``torch.cat(..., out=buf)`` refuses inputs that require grad, which forces every
concatenation to allocate a fresh tensor and is why naive DenseNets use quadratic memory
(Pleiss et al. 2017, arXiv 1707.06990). ``write_into`` copies each input into its slice of
``out`` and records the write as one in-place autograd op, so ``out`` (or the shared buffer
it is a view of) carries the gradient back to every input.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["write_into"]


def _memory_span(tensor: torch.Tensor) -> tuple[int, int]:
    """Byte range ``[start, stop)`` that a strided tensor may touch (empty when numel is 0)."""
    if tensor.numel() == 0:
        return 0, 0
    last = sum(
        (size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride(), strict=True)
    )
    start = tensor.data_ptr()
    return start, start + (last + 1) * tensor.element_size()


def _spans_overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def _overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    return _spans_overlap(_memory_span(a), _memory_span(b))


def _is_same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when ``a`` and ``b`` are the very same elements, so copying would change nothing."""
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.data_ptr() == b.data_ptr()
    )


def _destinations(
    out: torch.Tensor, inputs: Sequence[torch.Tensor], axis: int | None
) -> list[torch.Tensor]:
    """The slice of ``out`` each input lands in, shaped like that input."""
    destinations = []
    offset = 0
    for tensor in inputs:
        if axis is None:
            length = tensor.numel()
            # A 1-D slice can be viewed as any shape of the same size, whatever its stride.
            destinations.append(out.narrow(0, offset, length).view(tensor.shape))
        else:
            length = tensor.shape[axis]
            destinations.append(out.narrow(axis, offset, length))
        offset += length
    return destinations


def _copy_into(out: torch.Tensor, inputs: Sequence[torch.Tensor], axis: int | None) -> None:
    destinations = _destinations(out, inputs, axis)
    # Inputs that already sit where they belong (features written into a shared buffer
    # earlier) need no copy. Any other input that overlaps `out` is snapshotted before the
    # first write, so no write can clobber a source that is still to be read.
    out_span = _memory_span(out)
    sources = []
    for tensor, destination in zip(inputs, destinations, strict=True):
        if _is_same_memory(tensor, destination):
            sources.append(None)
        elif _spans_overlap(_memory_span(tensor), out_span):
            sources.append(tensor.clone())
        else:
            sources.append(tensor)
    for source, destination in zip(sources, destinations, strict=True):
        if source is not None:
            destination.copy_(source)  # copy_ casts to out's dtype


class _WriteInto(torch.autograd.Function):
    """Concatenate ``inputs`` into ``out`` in place; ``out`` becomes the differentiable result."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        out: torch.Tensor,
        axis: int | None,
        *inputs: torch.Tensor,
    ) -> torch.Tensor:
        _copy_into(out, inputs, axis)
        ctx.mark_dirty(out)
        ctx.axis = axis
        ctx.shapes = [tensor.shape for tensor in inputs]
        ctx.dtypes = [tensor.dtype for tensor in inputs]
        ctx.leaves = [tensor.grad_fn is None for tensor in inputs]
        return out

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        dim = 0 if ctx.axis is None else ctx.axis
        grads: list[torch.Tensor | None] = []
        offset = 0
        for index, (shape, dtype, is_leaf) in enumerate(
            zip(ctx.shapes, ctx.dtypes, ctx.leaves, strict=True)
        ):
            length = shape.numel() if ctx.axis is None else shape[ctx.axis]
            if not ctx.needs_input_grad[2 + index]:
                grads.append(None)
                offset += length
                continue
            piece = grad.narrow(dim, offset, length).reshape(shape)
            offset += length
            if piece.is_complex() and not dtype.is_complex:
                piece = piece.real  # d(real input)/d(its complex copy) keeps the real part
            piece = piece.to(dtype)
            # Slices of `grad` are views that keep all of `grad` alive. A non-leaf input's
            # gradient is consumed and freed during this backward pass, so a view costs no
            # extra memory. A leaf may store it as `.grad` for good, pinning the whole
            # gradient of `out` (several times its own size): give leaves their own copy.
            if is_leaf and piece.numel() < grad.numel() and _overlaps(piece, grad):
                piece = piece.clone(memory_format=torch.contiguous_format)
            grads.append(piece)
        # `out`'s previous content is entirely overwritten, so it gets no gradient.
        return (None, None, *grads)


def write_into(out: torch.Tensor, inputs: Sequence[torch.Tensor], axis: int | None) -> torch.Tensor:
    """Concatenate ``inputs`` along ``axis`` into ``out`` and return ``out`` itself.

    Shapes, dtypes and devices must already be checked. Gradients flow from ``out`` (and
    from any buffer ``out`` is a view of) to every input that requires grad.

    Args:
        out: destination with exactly the result's shape.
        inputs: tensors to concatenate.
        axis: non-negative concatenation axis, or None to flatten every input into 1-D ``out``.
    """
    track = torch.is_grad_enabled() and (
        out.requires_grad or any(tensor.requires_grad for tensor in inputs)
    )
    if not track:
        with torch.no_grad():
            _copy_into(out, inputs, axis)
        return out
    if out.requires_grad and out.grad_fn is None:
        raise RuntimeError(
            "concatenate: `out` is a leaf tensor that requires grad, and autograd forbids "
            "writing into those in place; pass a buffer that does not require grad (e.g. "
            "torch.empty(...)) or out.detach()."
        )
    try:
        return _WriteInto.apply(out, axis, *inputs)
    except RuntimeError as error:
        if "view" not in str(error):
            raise
        raise RuntimeError(
            "concatenate: autograd cannot record the write into `out`, a view it does not "
            "allow to be modified in place. Make `out` by slicing or narrow() with grad mode "
            "enabled (not under torch.no_grad(), and not from split/chunk/unbind). "
            f"torch said: {error}"
        ) from error
