"""The dense block engine (one shared buffer per block) equals the naive dense block."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from concatnets.engine import (
    ChannelMoments,
    DenseLayerSpec,
    block_buffer,
    dense_block,
    run_dense_block,
)
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


@pytest.fixture
def saved_storages() -> Callable[[Callable[[], torch.Tensor]], tuple[torch.Tensor, set[int]]]:
    """``saved_storages(run)``: ``run()``'s output and the storages autograd saved in it."""

    def measure(run: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, set[int]]:
        saved: set[int] = set()

        def pack(t: torch.Tensor) -> torch.Tensor:
            if not isinstance(t, nn.Parameter):
                saved.add(t.untyped_storage().data_ptr())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = run()
        return out, saved

    return measure


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
@pytest.mark.parametrize("kernel", ["gemm", "conv"])
def test_engine_matches_naive_block(
    policy: str,
    spatial_dims: int,
    drop_rate: float,
    dtype: torch.dtype,
    kernel: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Both kernels of the bottleneck's 1x1 convolution (see engine.pointwise_choice).
    monkeypatch.setenv("CONCATNETS_POINTWISE", kernel)
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


# Layers without a bottleneck (FC-DenseNet, Jégou et al. 2017): BN -> ReLU -> 3x3 conv ->
# dropout, and a block input given as parts.

_CONVS = {2: nn.Conv2d, 3: nn.Conv3d}
_NORMS = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def plain_layers(
    in_channels: int, growth: int, count: int, spatial_dims: int, dtype: torch.dtype
) -> nn.ModuleList:
    torch.manual_seed(0)
    layers = nn.ModuleList()
    for index in range(count):
        channels = in_channels + index * growth
        norm = _NORMS[spatial_dims](channels)
        nn.init.uniform_(norm.weight, 0.5, 1.5)
        nn.init.uniform_(norm.bias, -0.5, 0.5)
        conv = _CONVS[spatial_dims](channels, growth, 3, padding=1)
        layers.append(nn.ModuleDict({"norm": norm, "conv": conv}))
    return layers.to(dtype)


def specs(layers: nn.ModuleList, drop_rate: float) -> list[DenseLayerSpec]:
    return [
        DenseLayerSpec(m["norm"], m["conv"], drop_rate=drop_rate, training=True) for m in layers
    ]


def naive_plain_block(
    parts: list[torch.Tensor], layers: nn.ModuleList, drop_rate: float
) -> torch.Tensor:
    features = list(parts)
    for layer in layers:
        x = torch.cat(features, 1)
        new = layer["conv"](torch.relu(layer["norm"](x)))
        features.append(F.dropout(new, drop_rate, training=True))
    return torch.cat(features, 1)


def parts_step(run, parts: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    leaves = [p.detach().clone().requires_grad_() for p in parts]
    torch.manual_seed(1)
    out = run(leaves)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return out.detach(), [leaf.grad for leaf in leaves]  # type: ignore[misc]


@pytest.mark.usefixtures("chunking")
@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("drop_rate", [0.0, 0.2])
def test_block_without_bottleneck_from_parts_matches_naive_float64(
    spatial_dims: int, drop_rate: float
) -> None:
    dtype = torch.float64
    naive = plain_layers(7, 3, 3, spatial_dims, dtype)
    engine = copy.deepcopy(naive)
    size = [5] * spatial_dims
    parts = [torch.randn(2, 4, *size, dtype=dtype), torch.randn(2, 3, *size, dtype=dtype)]
    out_n, grads_n = parts_step(lambda p: naive_plain_block(p, naive, drop_rate), parts)
    out_e, grads_e = parts_step(lambda p: dense_block_parts(p, specs(engine, drop_rate)), parts)
    torch.testing.assert_close(out_e, out_n)
    for g_e, g_n in zip(grads_e, grads_n, strict=True):
        torch.testing.assert_close(g_e, g_n)
    assert_same_state(naive, engine, 1e-10)


def dense_block_parts(parts: list[torch.Tensor], layers: list[DenseLayerSpec]) -> torch.Tensor:
    return run_dense_block(parts, layers).features


def test_output_moments_are_the_batch_moments_of_every_channel() -> None:
    layers = plain_layers(5, 2, 3, 2, torch.float64)
    parts = [
        torch.randn(3, 2, 4, 4, dtype=torch.float64),
        torch.randn(3, 3, 4, 4, dtype=torch.float64),
    ]
    features, moments = run_dense_block(parts, specs(layers, 0.0))
    assert moments is not None
    var, mean = torch.var_mean(features, dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(moments.mean, mean)
    torch.testing.assert_close(moments.var, var)
    layers.eval()  # running statistics: no batch moments to hand on
    with torch.no_grad():
        assert run_dense_block(parts, specs(layers, 0.0)).moments is None


def test_handed_in_moments_are_not_computed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    layers = plain_layers(5, 2, 3, 2, torch.float64)
    skip = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    up = torch.randn(3, 3, 4, 4, dtype=torch.float64)
    var, mean = torch.var_mean(skip, dim=(0, 2, 3), unbiased=False)
    reference = run_dense_block([skip, up], copy.deepcopy(specs(layers, 0.0))).features
    measured: list[int] = []
    original = block_buffer.batch_moments

    def counting(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        measured.append(int(x.shape[1]))
        return original(x)

    monkeypatch.setattr(block_buffer, "batch_moments", counting)
    layers_b = plain_layers(5, 2, 3, 2, torch.float64)
    out = run_dense_block(
        [skip, up], specs(layers_b, 0.0), input_moments=[ChannelMoments(mean, var), None]
    )
    assert measured == [3, 2, 2, 2]  # the upsampled part, then each layer's new maps
    torch.testing.assert_close(out.features, reference)


def test_parts_are_written_once_and_not_saved(saved_storages) -> None:
    layers = plain_layers(5, 2, 2, 2, torch.float32)
    parts = [
        torch.randn(2, 2, 4, 4, requires_grad=True),
        torch.randn(2, 3, 4, 4, requires_grad=True),
    ]
    out, saved = saved_storages(lambda: dense_block_parts(parts, specs(layers, 0.2)))
    part_storages = {p.untyped_storage().data_ptr() for p in parts}
    assert not part_storages & saved
    # What is saved: the buffer (the output itself) and the layers' dropout masks.
    assert out.untyped_storage().data_ptr() in saved


def test_layer_spec_and_part_errors_name_the_fix() -> None:
    layers = plain_layers(5, 2, 1, 2, torch.float32)
    norm, conv = layers[0]["norm"], layers[0]["conv"]
    with pytest.raises(ValueError, match="norm2 and conv2 together"):
        DenseLayerSpec(norm, conv, norm2=norm)
    with pytest.raises(ValueError, match="one ChannelMoments or None per part"):
        run_dense_block([torch.randn(1, 5, 2, 2)], [DenseLayerSpec(norm, conv)], input_moments=[])
    with pytest.raises(ValueError, match="in_channels=4"):
        run_dense_block(
            [torch.randn(1, 1, 2, 2), torch.randn(1, 3, 2, 2)], [DenseLayerSpec(norm, conv)]
        )


def test_large_chunks_add_their_input_gradient_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every chunk takes the in-place path (normally only chunks of 32 MiB and more).
    monkeypatch.setattr(block_buffer, "_IN_PLACE_INPUT_GRAD_BYTES", 0)
    naive = make_block(dtype=torch.float64)
    engine = copy.deepcopy(naive)
    engine.memory_efficient = True
    x = torch.randn(4, 5, 6, 6, dtype=torch.float64)
    out_n, grad_n = run_step(naive, x)
    out_e, grad_e = run_step(engine, x)
    torch.testing.assert_close(out_e, out_n)
    torch.testing.assert_close(grad_e, grad_n)
    assert_same_state(engine, naive, tol=1e-10)
