"""The engine's dropout equals F.dropout on the CPU and keeps a boolean mask."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from concatnets.engine import dropout


def test_same_output_and_gradient_as_f_dropout_with_a_bool_mask() -> None:
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    results, saved = [], []
    for run in (lambda t: F.dropout(t, 0.3, True), lambda t: dropout(t, 0.3, True)):
        leaf = x.clone().requires_grad_()
        torch.manual_seed(4)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            out = run(leaf)
        out.mul(torch.arange(out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        results.append((out.detach(), leaf.grad))
    torch.testing.assert_close(results[1], results[0])
    assert saved[-1].dtype == torch.bool
    assert dropout(x, 0.3, False) is x
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        dropout(x, 1.0, True)
