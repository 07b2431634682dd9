"""``torch.compile`` on a converted model: one whole graph, the plain model's numbers (float64).

``fullgraph=True`` makes any graph break an error, so these tests show that dynamo
captures the engine's forwards (dense blocks on one buffer, rewritten torch.fx chains)
whole; ``aot_eager`` also runs AOTAutograd, which traces the engine's custom backward.
Inductor's code generation is tested only where ``CONCATNETS_TEST_INDUCTOR=1``: this file's
inductor test took 159 s wall (43 s user CPU) on the shared, loaded 2-core Xeon (family 6
model 167), a 16-layer DenseNet's first inductor step 36 s wall on a lighter load: too
slow for every run. It passed there.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import Tensor, nn

import concatnets


def _densenet() -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    model = concatnets.create_model("densenet_bc", depth=10, growth_rate=4, memory_efficient=False)
    return model.double(), torch.randn(2, 3, 8, 8, dtype=torch.float64)


def _unet() -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    model = concatnets.create_model(
        "unet", features=4, depth=2, memory_efficient=False, in_channels=1, num_classes=2
    )
    return model.double(), torch.randn(2, 1, 16, 16, dtype=torch.float64)


def _step(
    model: nn.Module, x: Tensor, run: nn.Module | None = None
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Output, input gradient and parameter gradients of one training forward/backward
    of ``model``, called through ``run`` (its compiled form) when given."""
    inp = x.clone().requires_grad_()
    out = (model if run is None else run)(inp)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert inp.grad is not None
    return out.detach(), inp.grad, grads


def _assert_compiled_matches(build, backend: str) -> None:  # type: ignore[no-untyped-def]
    plain, x = build()
    converted = concatnets.memory_efficient(copy.deepcopy(plain), example_input=x)
    torch._dynamo.reset()
    compiled = torch.compile(converted, backend=backend, fullgraph=True)
    expected, actual = _step(plain, x), _step(converted, x, run=compiled)
    torch.testing.assert_close(actual[0], expected[0], rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(actual[1], expected[1], rtol=1e-7, atol=1e-8)
    assert actual[2].keys() == expected[2].keys()
    for name, grad in expected[2].items():
        torch.testing.assert_close(actual[2][name], grad, rtol=1e-7, atol=1e-8, msg=name)
    # Running statistics: updated once, by the compiled forward, as by the plain one.
    converted_buffers = dict(converted.named_buffers())
    for name, buffer in plain.named_buffers():
        torch.testing.assert_close(converted_buffers[name], buffer, msg=name)
    plain.eval()
    compiled.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), plain(x), rtol=1e-7, atol=1e-8)


@pytest.fixture(autouse=True)
def _fresh_dynamo():  # type: ignore[no-untyped-def]
    yield
    torch._dynamo.reset()


def test_dense_blocks_compile_whole_with_aot_autograd() -> None:
    _assert_compiled_matches(_densenet, "aot_eager")


def test_rewritten_chains_compile_whole() -> None:
    _assert_compiled_matches(_unet, "aot_eager")


@pytest.mark.skipif(
    os.environ.get("CONCATNETS_TEST_INDUCTOR") != "1",
    reason="inductor compiles for 36-159 s on a 2-core CPU; set CONCATNETS_TEST_INDUCTOR=1",
)
def test_inductor_compiles_a_converted_densenet() -> None:
    _assert_compiled_matches(_densenet, "inductor")
