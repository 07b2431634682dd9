"""Recording a forward as a fixed program: leaves, torch calls, refusals, in-place changes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from concatnets.convert.record import RecordError, record, signature


class _ShapeDependent(nn.Module):
    """Pads by the shape difference, as MONAI's UpCat does: symbolic tracing fails."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        y = self.conv(x)
        if y.shape[-1] != skip.shape[-1]:
            y = F.pad(y, [0, 1, 0, 1], "replicate")
        return torch.cat([y, skip], dim=1)


class _ValueDependent(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * 2 if bool(x.sum() > 0) else x


class _InPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        y = x * 1
        view = y[:, :1]
        view.add_(1)  # changes y in place through a view
        return self.act(y) + y


def test_shape_dependent_python_is_recorded_as_it_ran() -> None:
    module = _ShapeDependent()
    x, skip = torch.randn(1, 2, 4, 4), torch.randn(1, 2, 5, 5)
    program = record(module, (x, skip), {})
    kinds = [
        (n.kind, getattr(n.target, "__name__", type(n.target).__name__)) for n in program.nodes
    ]
    assert ("leaf", "Conv2d") in kinds and ("call", "pad") in kinds and ("call", "cat") in kinds
    even = record(module, (x, torch.randn(1, 2, 4, 4)), {})
    assert ("call", "pad") not in [(n.kind, getattr(n.target, "__name__", "")) for n in even.nodes]


def test_value_dependent_python_is_refused() -> None:
    with pytest.raises(RecordError, match="reads tensor values"):
        record(_ValueDependent(), (torch.randn(2, 3),), {})


def test_a_tensor_changed_in_place_before_a_later_read_is_marked() -> None:
    program = record(_InPlace(), (torch.randn(1, 2, 3, 3),), {})
    mul = next(n for n in program.nodes if getattr(n.target, "__name__", "") == "mul")
    assert mul.mutated  # the ReLU reads y after view.add_ changed it


def test_signature_tells_shapes_and_modes_apart() -> None:
    module = nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1))
    x = torch.randn(1, 1, 4, 4)
    key = signature(module, (x,), {})
    assert signature(module, (torch.randn(1, 1, 4, 4),), {}) == key
    assert signature(module, (torch.randn(1, 1, 6, 4),), {}) != key
    module.eval()
    assert signature(module, (x,), {}) != key
