"""The dense block engine (one shared buffer per block) equals the naive dense block."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from concatnets.engine import block_buffer, dense_block
from concatnets.models.densenet import _DenseBlock

# The package exports a function of the same name; fetch the module itself.


def make_block(
    spatial_dims: int = 2, drop_rate: float = 0.0, dtype: torch.dtype = torch.float32
) -> _DenseBlock:
    torch.manual_seed(0)
    block = _DenseBlock(3, 5, 4, 2, drop_rate, spatial_dims, False, "keep").to(dtype)
    for module in block.modules():  # non-trivial affine parameters
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.5, 0.5)
    return block


def run_step(block: nn.Module, x: torch.Tensor, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_()
    torch.manual_seed(seed)
    out = block(x)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    assert x.grad is not None
    return out.detach(), x.grad


def assert_same_state(a: nn.Module, b: nn.Module, tol: float) -> None:
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert pa.grad is not None and pb.grad is not None, name
        torch.testing.assert_close(pa.grad, pb.grad, atol=tol, rtol=tol, msg=name)
    for (name, ba), bb in zip(a.named_buffers(), b.buffers(), strict=True):
        torch.testing.assert_close(ba, bb, atol=tol, rtol=tol, msg=name)


@pytest.fixture(params=["one-chunk", "many-chunks"])
def chunking(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run with the whole layer input in one chunk, and split into 8-channel chunks."""
    if request.param == "many-chunks":
        monkeypatch.setattr(block_buffer, "_CHUNK_ELEMENTS", 1)


@pytest.mark.usefixtures("chunking")
@pytest.mark.parametrize("policy", ["keep", "recompute"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("drop_rate", [0.0, 0.3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_engine_matches_naive_block(
    policy: str, spatial_dims: int, drop_rate: float, dtype: torch.dtype
) -> None:
    naive = make_block(spatial_dims, drop_rate, dtype)
    engine = copy.deepcopy(naive)
    engine.memory_efficient, engine.policy = True, policy
    x = torch.randn(3, 5, *([6] * spatial_dims), dtype=dtype)
    out_naive, grad_naive = run_step(naive, x)
    out_engine, grad_engine = run_step(engine, x)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(out_engine, out_naive, atol=tol, rtol=tol)
    torch.testing.assert_close(grad_engine, grad_naive, atol=tol, rtol=tol)
    assert_same_state(naive, engine, tol)


def test_running_statistics_updated_exactly_once() -> None:
    block = make_block()
    block.memory_efficient = True
    run_step(block, torch.randn(2, 5, 4, 4))
    counts = [
        m.num_batches_tracked.item() for m in block.modules() if isinstance(m, nn.BatchNorm2d)
    ]
    assert counts == [1] * 6


def test_checkpoint_mode_updates_running_statistics_twice() -> None:
    """The defect of torch.utils.checkpoint the engine avoids (pytorch/pytorch#96136)."""
    block = make_block()
    block.memory_efficient = "checkpoint"
    run_step(block, torch.randn(2, 5, 4, 4))
    assert block.denselayer1.norm1.num_batches_tracked.item() == 2


def test_momentum_none_cumulative_average() -> None:
    naive = make_block()
    for module in naive.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None
    engine = copy.deepcopy(naive)
    engine.memory_efficient = True
    for _ in range(2):
        x = torch.randn(2, 5, 4, 4)
        run_step(naive, x)
        run_step(engine, x)
    assert_same_state(naive, engine, 1e-4)


def test_engine_never_calls_torch_cat(monkeypatch: pytest.MonkeyPatch) -> None:
    block = make_block()
    block.memory_efficient = True

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.cat called in the memory-efficient path")

    monkeypatch.setattr(torch, "cat", forbidden)
    run_step(block, torch.randn(2, 5, 4, 4))


def test_output_is_the_shared_buffer_with_input_first() -> None:
    block = make_block()
    x = torch.randn(2, 5, 4, 4)
    out = dense_block(x, list(block.values()))
    assert out.shape == (2, 5 + 3 * 4, 4, 4)
    torch.testing.assert_close(out[:, :5], x)
    # Layer l reads a view of the same storage: the output is one contiguous buffer.
    assert out.is_contiguous()


def test_gradcheck_float64() -> None:
    block = make_block(dtype=torch.float64, drop_rate=0.0)
    block.eval()  # fixed statistics keep gradcheck's perturbations from moving them
    x = torch.randn(2, 5, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: dense_block(t, list(block.values())), (x,))
    block.train()
    for module in block.modules():  # batch statistics: gradients flow through mean/var
        if isinstance(module, nn.BatchNorm2d):
            module.track_running_stats = False
            module.running_mean = module.running_var = module.num_batches_tracked = None
    assert torch.autograd.gradcheck(lambda t: dense_block(t, list(block.values())), (x,))


def test_eval_and_no_grad_match_naive() -> None:
    naive = make_block()
    engine = copy.deepcopy(naive)
    engine.memory_efficient = True
    x = torch.randn(2, 5, 4, 4)
    run_step(naive, x)
    run_step(engine, x)
    naive.eval()
    engine.eval()
    with torch.no_grad():
        torch.testing.assert_close(engine(x), naive(x), atol=1e-5, rtol=1e-5)
    # Eval with gradients (e.g. fine-tuning with frozen statistics).
    _, g_naive = run_step(naive, x)
    _, g_engine = run_step(engine, x)
    torch.testing.assert_close(g_engine, g_naive, atol=1e-5, rtol=1e-5)


def test_rejects_unknown_policy_and_bad_widths() -> None:
    block = make_block()
    with pytest.raises(ValueError, match="policy"):
        dense_block(torch.randn(1, 5, 4, 4), list(block.values()), policy="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="in_channels=6"):
        dense_block(torch.randn(1, 6, 4, 4), list(block.values()))
