"""Tests for concatnets.training.distributed.

The two-process test launches this very file with ``torchrun`` (2 CPU processes, gloo on
127.0.0.1); run as a script, the file acts as the worker (see ``_worker_main``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import TensorDataset

from concatnets.training.distributed import (
    DistributedContext,
    all_reduce_mean,
    barrier,
    cleanup_distributed,
    init_distributed,
    make_sampler,
    unwrap_model,
    wrap_model,
)

_LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_GLOBAL_BATCH = 8
_STEPS = 4


def _global_batch() -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(_GLOBAL_BATCH, 4, generator=generator)
    targets = torch.randn(_GLOBAL_BATCH, 2, generator=generator)
    return TensorDataset(inputs, targets)


def _build(kind: str) -> nn.Module:
    torch.manual_seed(1)
    if kind == "plain":
        return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 2))


def _train(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(_STEPS):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(inputs), targets).backward()
        optimizer.step()


def _cpu_context(rank: int, world_size: int) -> DistributedContext:
    return DistributedContext(rank, rank, world_size, torch.device("cpu"), "gloo")


@pytest.fixture
def clean_launcher_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in _LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_single_process_without_launcher(clean_launcher_env: pytest.MonkeyPatch) -> None:
    ctx = init_distributed("cpu")
    assert ctx == DistributedContext(0, 0, 1, torch.device("cpu"), None)
    assert ctx.is_main and not ctx.is_distributed
    assert not torch.distributed.is_initialized()

    model = _build("bn")
    assert wrap_model(model, ctx, sync_batchnorm=True) is model  # nothing to sync alone
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    assert make_sampler(_global_batch(), ctx, shuffle=True, seed=0) is None
    assert all_reduce_mean(2.5, ctx) == 2.5
    assert all_reduce_mean(torch.tensor([1.5], requires_grad=True), ctx) == 1.5
    barrier(ctx)
    cleanup_distributed(ctx)


def test_world_size_one_under_torchrun_needs_no_group(
    clean_launcher_env: pytest.MonkeyPatch,
) -> None:
    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        clean_launcher_env.setenv(name, value)
    ctx = init_distributed("cpu")
    assert not ctx.is_distributed and not torch.distributed.is_initialized()


@pytest.mark.parametrize(
    ("env", "arguments", "message"),
    [
        ({"WORLD_SIZE": "2", "RANK": "0"}, {}, "MASTER_ADDR and MASTER_PORT not; start"),
        ({"WORLD_SIZE": "2", "RANK": "2"}, {}, "inconsistent launcher environment RANK=2"),
        ({"WORLD_SIZE": "two"}, {}, "WORLD_SIZE='two' is not an integer"),
        ({"WORLD_SIZE": "2", "RANK": "1"}, {"backend": "nccl"}, "'nccl' needs CUDA devices"),
        ({}, {"device": "mps:0"}, "device 'mps:0' is unsupported"),
        ({}, {"device": "gpu"}, "device 'gpu' is not valid"),
    ],
)
def test_init_errors_say_what_to_fix(
    clean_launcher_env: pytest.MonkeyPatch,
    env: dict[str, str],
    arguments: dict[str, str],
    message: str,
) -> None:
    for name, value in env.items():
        clean_launcher_env.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        init_distributed(**{"device": "cpu", **arguments})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_request_without_gpu_is_refused(clean_launcher_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="no CUDA GPU is visible; use 'cpu'"):
        init_distributed("cuda")


def test_sync_batchnorm_on_cpu_is_refused_up_front() -> None:
    with pytest.raises(ValueError, match="SyncBatchNorm has no CPU kernel"):
        wrap_model(_build("bn"), _cpu_context(0, 2), sync_batchnorm=True)


def test_sampler_splits_disjointly_and_reshuffles_per_epoch() -> None:
    dataset = TensorDataset(torch.arange(10))
    samplers = [make_sampler(dataset, _cpu_context(r, 2), shuffle=True, seed=3) for r in (0, 1)]
    first = [list(sampler) for sampler in samplers]
    assert set(first[0]).isdisjoint(first[1])
    assert set(first[0]) | set(first[1]) == set(range(10))
    for sampler in samplers:
        sampler.set_epoch(1)
    assert [list(sampler) for sampler in samplers] != first

    dropping = make_sampler(
        TensorDataset(torch.arange(9)), _cpu_context(0, 2), shuffle=False, seed=0, drop_last=True
    )
    assert len(dropping) == 4


def test_unwrap_model_looks_through_wrappers() -> None:
    model = _build("plain")
    assert unwrap_model(model) is model
    assert unwrap_model(nn.DataParallel(model)) is model
    compiled = _CompiledStandIn(nn.DataParallel(model))
    assert unwrap_model(compiled) is model


class _CompiledStandIn(nn.Module):
    """Holds the model as ``_orig_mod`` like torch.compile's wrapper (which is slow to import)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self._orig_mod = module


def test_all_reduce_mean_refuses_non_scalars() -> None:
    with pytest.raises(ValueError, match=r"shape \(2,\); reduce it to one number"):
        all_reduce_mean(torch.ones(2), _cpu_context(0, 1))


def test_two_process_ddp_matches_single_process_on_the_global_batch(
    tmp_path: Path, torchrun: Callable[..., tuple[int, str]]
) -> None:
    returncode, output = torchrun([__file__, str(tmp_path)])
    assert returncode == 0, output[-6000:]

    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["local_rank"], r["world_size"]) for r in reports] == [
        (0, 0, 2),
        (1, 1, 2),
    ]
    assert all(
        r["backend"] == "gloo" and r["wrapped"] == "DistributedDataParallel" for r in reports
    )
    assert set(reports[0]["indices"]).isdisjoint(reports[1]["indices"])
    assert sorted(reports[0]["indices"] + reports[1]["indices"]) == list(range(_GLOBAL_BATCH))
    assert all(r["mean_of_ranks"] == 0.5 and r["mean_of_tensors"] == 2.0 for r in reports)

    inputs, targets = _global_batch().tensors
    for kind in ("plain", "bn"):
        reference = _build(kind)
        _train(reference, inputs, targets)
        distributed = load_file(str(tmp_path / f"{kind}.safetensors"))
        assert distributed.keys() == reference.state_dict().keys()
        gaps = {
            key: (distributed[key].double() - value.double()).abs().max().item()
            for key, value in reference.state_dict().items()
            if value.is_floating_point()
        }
        if kind == "plain":
            assert max(gaps.values()) < 1e-5, gaps
        else:
            # Per-rank batch statistics differ from global ones without SyncBatchNorm (which
            # has no CPU kernel); this also shows the comparison above can fail.
            assert max(gaps.values()) > 1e-3, gaps


def _worker_main(output: Path) -> None:
    """One torchrun process: DDP-train on this rank's half of the global batch."""
    ctx = init_distributed("cpu")
    dataset = _global_batch()
    sampler = make_sampler(dataset, ctx, shuffle=False, seed=0)
    assert sampler is not None
    sampler.set_epoch(0)
    indices = list(sampler)
    inputs, targets = dataset[indices]

    wrapped_kind = ""
    for kind in ("plain", "bn"):
        model = wrap_model(_build(kind), ctx)
        wrapped_kind = type(model).__name__
        _train(model, inputs, targets)
        barrier(ctx)
        if ctx.is_main:
            save_file(unwrap_model(model).state_dict(), str(output / f"{kind}.safetensors"))

    report = {
        "rank": ctx.rank,
        "local_rank": ctx.local_rank,
        "world_size": ctx.world_size,
        "backend": ctx.backend,
        "wrapped": wrapped_kind,
        "indices": indices,
        "mean_of_ranks": all_reduce_mean(float(ctx.rank), ctx),
        "mean_of_tensors": all_reduce_mean(torch.tensor(1.0 + 2 * ctx.rank), ctx),
    }
    (output / f"rank{ctx.rank}.json").write_text(json.dumps(report))
    barrier(ctx)
    cleanup_distributed(ctx)


if __name__ == "__main__":
    _worker_main(Path(sys.argv[1]))
