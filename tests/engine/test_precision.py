"""The engine under autocast: convolutions and stored tensors in the autocast dtype,
statistics in float32, and forward and backward in the same dtypes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import concatnets
from concatnets.engine import NormActPart, block_buffer, dense_block, norm_act_conv, norm_stats
from concatnets.engine.conv import conv_backward, conv_forward
from concatnets.engine.precision import autocast_dtype, in_engine_precision, stats_dtype
from concatnets.engine.stats import batch_moments
from concatnets.models.densenet import _DenseBlock

DEVICES = [
    pytest.param("cpu", torch.bfloat16, id="cpu-bf16"),
    pytest.param("cuda", torch.float16, id="cuda-fp16", marks=pytest.mark.cuda),
    pytest.param("cuda", torch.bfloat16, id="cuda-bf16", marks=pytest.mark.cuda),
]


def test_cast_follows_autocast_rules() -> None:
    values = [torch.ones(2), torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.int64)]
    plain = in_engine_precision(torch.device("cpu"), lambda cast: [cast(v) for v in values])
    assert [v.dtype for v in plain] == [torch.float32, torch.float64, torch.int64]
    with torch.autocast("cpu", torch.bfloat16):
        assert autocast_dtype(torch.device("cpu")) == torch.bfloat16

        def inside(cast):  # type: ignore[no-untyped-def]
            assert not torch.is_autocast_enabled("cpu")  # the engine applies the rules itself
            return [cast(v) for v in values]

        cast_values = in_engine_precision(torch.device("cpu"), inside)
    assert [v.dtype for v in cast_values] == [torch.bfloat16, torch.float64, torch.int64]
    assert autocast_dtype(torch.device("cpu")) is None
    assert stats_dtype(torch.bfloat16) == torch.float32
    assert stats_dtype(torch.float64) == torch.float64


@pytest.mark.parametrize(("device", "dtype"), DEVICES)
def test_conv_runs_in_the_input_dtype_and_returns_weight_grads_in_float32(
    device: str, dtype: torch.dtype
) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1).to(device)
    x = torch.randn(2, 4, 8, 8, device=device).to(dtype).requires_grad_()
    with torch.autocast(device, dtype):  # the reference: autocast's own convolution
        expected = conv(x)
    grad = torch.randn_like(expected)
    expected.backward(grad)
    out = conv_forward(conv, x.detach(), conv.weight, conv.bias)
    grad_x, grad_w, grad_b = conv_backward(conv, grad, x.detach(), conv.weight, has_bias=True)
    assert out.dtype == dtype and grad_x is not None and grad_x.dtype == dtype
    assert grad_w is not None and grad_w.dtype == torch.float32
    assert grad_b is not None and grad_b.dtype == torch.float32
    # The same kernels on the same operands: equal up to the kernels' own rounding.
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(grad_x, x.grad)
    torch.testing.assert_close(grad_w, conv.weight.grad, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(grad_b, conv.bias.grad, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize(("device", "dtype"), DEVICES)
def test_batch_moments_of_a_reduced_input_are_float32(device: str, dtype: torch.dtype) -> None:
    x = (torch.randn(4, 3, 5, 5, device=device) * 3 + 7).to(dtype)
    mean, var = batch_moments(x)
    assert mean.dtype == var.dtype == torch.float32
    exact = x.double()
    # Float32 statistics of the rounded input: far closer than one bfloat16 step (2**-8).
    torch.testing.assert_close(mean.double(), exact.mean((0, 2, 3)), rtol=1e-5, atol=1e-5)
    expected_var = exact.var((0, 2, 3), unbiased=False)
    torch.testing.assert_close(var.double(), expected_var, rtol=1e-4, atol=1e-5)


def make_block(spatial_dims: int, device: str) -> _DenseBlock:
    torch.manual_seed(0)
    block = _DenseBlock(2, 6, 4, 2, 0.0, spatial_dims, True, "keep").to(device)
    for module in block.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.5, 0.5)
    return block


def saved_activations(run) -> list[Tensor]:  # type: ignore[no-untyped-def]
    """Tensors autograd saves for backward while ``run()`` runs, parameters left out."""
    saved: list[Tensor] = []

    def pack(t: Tensor) -> Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    return [out, *(t for t in saved if not isinstance(t, nn.Parameter))]


@pytest.mark.parametrize(("device", "dtype"), DEVICES)
@pytest.mark.parametrize("policy", ["keep", "recompute"])
@pytest.mark.parametrize("chunks", ["one-chunk", "many-chunks"])
def test_dense_block_stores_reduced_tensors_and_float32_statistics(
    device: str, dtype: torch.dtype, policy: str, chunks: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if chunks == "many-chunks":  # each layer's input read a bottleneck's width at a time
        monkeypatch.setattr(block_buffer, "_CHUNK_ELEMENTS", 1)
    block = make_block(2, device)
    x = torch.randn(3, 6, 8, 8, device=device, requires_grad=True)
    with torch.autocast(device, dtype):
        kept = saved_activations(lambda: dense_block(x, list(block.values()), policy=policy))  # type: ignore[arg-type]
    out = kept[0]
    assert out.dtype == dtype
    activations = [t for t in kept if t.dim() == 4]
    # The buffer and (policy "keep") the bottleneck outputs.
    assert len(activations) == (4 if policy == "keep" else 2)
    assert all(t.dtype == dtype for t in activations), [t.dtype for t in activations]
    for stats1, stats2, _ in out.grad_fn.stats:  # type: ignore[union-attr]
        for stats in (stats1, stats2):
            assert stats.mean.dtype == stats.invstd.dtype == torch.float32
    out.float().sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32, name
    for name, b in block.named_buffers():
        assert b.dtype in (torch.float32, torch.int64), name


@pytest.mark.parametrize(("device", "dtype"), DEVICES)
@pytest.mark.parametrize("kind", ["batch", "group"])
def test_norm_act_conv_matches_autocast_modules(device: str, dtype: torch.dtype, kind: str) -> None:
    """Engine and autocast's own modules agree within bfloat16/float16 rounding."""
    torch.manual_seed(0)
    norm = (nn.BatchNorm2d(6) if kind == "batch" else nn.GroupNorm(2, 6)).to(device)
    conv = nn.Conv2d(6, 5, 3, padding=1).to(device)
    nn.init.uniform_(norm.weight, 0.5, 1.5)
    nn.init.uniform_(norm.bias, -0.5, 0.5)
    z = (torch.randn(4, 6, 8, 8, device=device) + 2).to(dtype)
    grad = torch.randn(4, 5, 8, 8, device=device, dtype=dtype)
    ref_z = z.double().requires_grad_()
    reference = conv.double()(F.relu(norm.double()(ref_z)))
    reference.backward(grad.double())
    ref_grads = [ref_z.grad, conv.weight.grad, norm.weight.grad]
    norm.float().zero_grad()
    conv.float().zero_grad()

    def errors(out: Tensor, grads: list[Tensor | None]) -> list[float]:
        pairs = [(out, reference.detach()), *zip(grads, ref_grads, strict=True)]
        return [float((a.detach().double() - b).norm() / b.norm()) for a, b in pairs]  # type: ignore[union-attr]

    naive_z = z.clone().requires_grad_()
    with torch.autocast(device, dtype):
        naive = conv(F.relu(norm(naive_z)))
    naive.backward(grad)
    naive_errors = errors(naive, [naive_z.grad, conv.weight.grad, norm.weight.grad])
    norm.zero_grad()
    conv.zero_grad()
    engine_z = z.clone().requires_grad_()
    with torch.autocast(device, dtype):
        if kind == "batch":
            part = NormActPart(engine_z, norm, norm_stats(norm, engine_z))  # type: ignore[arg-type]
        else:
            from concatnets.engine.group_stats import group_norm_forward

            with torch.no_grad():
                _, stats = group_norm_forward(norm, engine_z, norm.weight, norm.bias)
            part = NormActPart(engine_z, norm, stats)
        engine = norm_act_conv([part], conv)
    assert engine.dtype == naive.dtype == dtype
    engine.backward(grad)
    assert engine_z.grad is not None and engine_z.grad.dtype == dtype
    assert conv.weight.grad is not None and conv.weight.grad.dtype == torch.float32
    engine_errors = errors(engine, [engine_z.grad, conv.weight.grad, norm.weight.grad])
    # Both round the same quantities to the same dtype in another order: errors of the
    # same size. Twice the naive error (plus one rounding step) is the allowance.
    step = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11
    names = ("out", "input", "conv w", "norm w")
    for name, e, n in zip(names, engine_errors, naive_errors, strict=True):
        assert e <= 2 * n + step, (name, e, n)


@pytest.mark.parametrize("family", ["densenet_bc", "unet_small"])
def test_a_bf16_input_to_a_float32_engine_model_is_refused_like_the_naive_one(family: str) -> None:
    # Without autocast the naive modules refuse a bf16 input for float32 weights; the
    # engine must not silently compute in bf16 instead.
    kwargs = {"depth": 10, "growth_rate": 4} if family == "densenet_bc" else {"in_channels": 1}
    x = torch.randn(2, 3 if family == "densenet_bc" else 1, 16, 16).to(torch.bfloat16)
    naive = concatnets.create_model(family, num_classes=2, memory_efficient=False, **kwargs)
    engine = concatnets.create_model(family, num_classes=2, memory_efficient=True, **kwargs)
    with pytest.raises(RuntimeError):
        naive(x)
    with pytest.raises(RuntimeError):
        engine(x)
    with torch.autocast("cpu", torch.bfloat16):  # the same input under autocast runs
        assert engine(x).dtype == torch.bfloat16


def test_engine_functions_name_the_dtype_mismatch_and_the_fix() -> None:
    x = torch.randn(2, 8, 6, 6, dtype=torch.bfloat16)
    block = _DenseBlock(2, 8, 2, 4, 0.0, 2, True, "keep")  # 2 layers, 8 inputs, k = 4
    expected = r"the input is torch.bfloat16 but the weights are torch.float32; cast the input"
    with pytest.raises(RuntimeError, match="dense block: " + expected):
        dense_block(x, list(block.children()))
    conv, norm = nn.Conv2d(8, 4, 3, padding=1), nn.BatchNorm2d(8)
    part = NormActPart(x, norm, norm_stats(norm, x))  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="Conv2d on the engine: " + expected):
        norm_act_conv([part], conv)
    with torch.autocast("cpu", torch.bfloat16):
        assert dense_block(x, list(block.children())).dtype == torch.bfloat16
        assert norm_act_conv([part], conv).dtype == torch.bfloat16
