"""Multi-process training under ``torchrun``: gloo on CPU, NCCL on GPUs.

Start one process per GPU (or several CPU processes)::

    torchrun --nproc_per_node=4 -m concatnets.cli.main train ...

``torchrun`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``; without them everything here degrades to a plain single process with no
process group, so the same training loop serves both cases.

How the training loop uses this module:

1. ``ctx = init_distributed(device)`` before building the model;
2. ``model = wrap_model(model, ctx, sync_batchnorm=...)``, which also moves it to the device;
3. ``sampler = make_sampler(dataset, ctx, shuffle=True, seed=seed)`` and
   ``DataLoader(dataset, sampler=sampler, shuffle=shuffle and sampler is None, ...)``;
   call ``sampler.set_epoch(epoch)`` at the start of every epoch, before iterating,
   otherwise every epoch repeats the first epoch's order;
4. average metrics with ``all_reduce_mean``; save checkpoints on ``ctx.is_main`` only,
   from ``unwrap_model(model).state_dict()``, then ``barrier(ctx)``;
5. ``cleanup_distributed(ctx)`` at exit.

Batch norm: each process normalizes with the statistics of its own share of the batch,
so results differ from one process on the global batch unless the model is converted to
``SyncBatchNorm``. PyTorch's ``SyncBatchNorm`` runs only on GPUs (NCCL); on CPU
``wrap_model`` refuses ``sync_batchnorm=True`` instead of failing at the first forward.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

__all__ = [
    "DistributedContext",
    "all_gather_objects",
    "all_reduce_mean",
    "all_reduce_sum_",
    "any_process",
    "barrier",
    "cleanup_distributed",
    "init_distributed",
    "make_sampler",
    "unwrap_model",
    "wrap_model",
]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job.

    Args:
        rank: Global index of this process, ``0 <= rank < world_size``.
        local_rank: Index of this process on its machine; picks its GPU.
        world_size: Number of processes in the job.
        device: The device this process computes on.
        backend: ``"gloo"`` or ``"nccl"``; ``None`` for a single process.
    """

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        """Whether this process logs and writes files (rank 0)."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """Whether a process group with more than one process is running."""
        return self.world_size > 1


def init_distributed(device: str | None = None, backend: str | None = None) -> DistributedContext:
    """Join the ``torchrun`` process group, or describe a single process when not launched so.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:<i>"``; default CUDA when available. Under
            ``torchrun``, ``"cuda"`` means the GPU numbered by ``LOCAL_RANK``.
        backend: Process-group backend; default ``"nccl"`` for CUDA, ``"gloo"`` for CPU.
    """
    env = os.environ
    world_size = _env_int(env, "WORLD_SIZE", 1)
    rank = _env_int(env, "RANK", 0)
    local_rank = _env_int(env, "LOCAL_RANK", rank)
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ValueError(
            f"inconsistent launcher environment RANK={rank} LOCAL_RANK={local_rank} "
            f"WORLD_SIZE={world_size}; start the job with torchrun, which sets them"
        )
    resolved_device = _resolve_device(device, local_rank, distributed=world_size > 1)
    if world_size == 1:
        return DistributedContext(0, 0, 1, resolved_device, None)

    backend = backend or ("nccl" if resolved_device.type == "cuda" else "gloo")
    if backend == "nccl" and resolved_device.type != "cuda":
        raise ValueError(
            f"backend 'nccl' needs CUDA devices but the device is {resolved_device}; "
            "use backend 'gloo' for CPU training"
        )
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not env.get(name)]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={world_size} is set but {' and '.join(missing)} not; start the job "
            "with torchrun, or set MASTER_ADDR and MASTER_PORT for every process"
        )
    if resolved_device.type == "cuda":
        torch.cuda.set_device(resolved_device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://")
    return DistributedContext(rank, local_rank, world_size, resolved_device, backend)


def wrap_model(
    model: nn.Module, ctx: DistributedContext, *, sync_batchnorm: bool = False
) -> nn.Module:
    """Move ``model`` to ``ctx.device`` and wrap it in DDP when the job is distributed.

    Args:
        model: The bare model.
        ctx: From :func:`init_distributed`.
        sync_batchnorm: Convert batch norm layers to ``SyncBatchNorm`` so statistics cover
            the global batch. Only meaningful, and only done, with several processes on GPUs.
    """
    if not ctx.is_distributed:
        return model.to(ctx.device)
    if sync_batchnorm:
        if ctx.device.type != "cuda":
            raise ValueError(
                f"sync_batchnorm needs CUDA devices but this job runs on {ctx.device}; "
                "PyTorch's SyncBatchNorm has no CPU kernel, so drop --sync-batchnorm on CPU"
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(ctx.device)
    if ctx.device.type == "cuda":
        return DistributedDataParallel(
            model, device_ids=[ctx.device.index], output_device=ctx.device.index
        )
    return DistributedDataParallel(model)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside DDP / DataParallel / ``torch.compile`` wrappers.

    Args:
        model: A model, wrapped or not.
    """
    while True:
        if isinstance(model, (DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile
            model = model._orig_mod
        else:
            return model


def make_sampler(
    dataset: Dataset, ctx: DistributedContext, *, shuffle: bool, seed: int, drop_last: bool = False
) -> DistributedSampler | None:
    """A sampler giving each process a disjoint share of ``dataset``; ``None`` if alone.

    Call ``sampler.set_epoch(epoch)`` at the start of every epoch so shuffling changes
    between epochs (identically on all processes). Without ``drop_last`` the sampler pads
    the dataset by repeating samples until it divides evenly, so a few validation samples
    are counted twice.

    Args:
        dataset: A map-style dataset.
        ctx: From :func:`init_distributed`.
        shuffle: Shuffle with ``seed + epoch``.
        seed: Must be the same on every process.
        drop_last: Drop the tail instead of padding it.
    """
    if not ctx.is_distributed:
        return None
    return DistributedSampler(
        dataset,
        num_replicas=ctx.world_size,
        rank=ctx.rank,
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
    )


def all_reduce_mean(value: float | Tensor, ctx: DistributedContext) -> float:
    """The mean of a scalar over all processes (every process must call it).

    Args:
        value: This process's scalar (a number or a one-element tensor).
        ctx: From :func:`init_distributed`.
    """
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"all_reduce_mean takes a scalar but got a tensor of shape "
                f"{tuple(value.shape)}; reduce it to one number (e.g. .mean()) first"
            )
        value = value.detach()
    if not ctx.is_distributed:
        return float(value)
    total = torch.as_tensor(value, dtype=torch.float64).reshape(()).to(ctx.device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.item() / ctx.world_size


def all_reduce_sum_(tensor: Tensor, ctx: DistributedContext) -> Tensor:
    """Sum ``tensor`` over all processes in place and return it (every process must call it).

    Args:
        tensor: A tensor on ``ctx.device`` with the same shape and dtype on every process.
        ctx: From :func:`init_distributed`.
    """
    if ctx.is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_process(flag: bool, ctx: DistributedContext) -> bool:
    """Whether ``flag`` is true on at least one process (every process must call it).

    Lets all processes take the same branch, e.g. stop at the same step when only one
    of them received a signal or saw a non-finite loss.

    Args:
        flag: This process's value.
        ctx: From :func:`init_distributed`.
    """
    if not ctx.is_distributed:
        return bool(flag)
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=ctx.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def all_gather_objects(value: object, ctx: DistributedContext) -> list[object]:
    """``value`` of every process, in rank order (every process must call it).

    The objects travel pickled between the job's own processes, never through files.

    Args:
        value: A picklable object, e.g. bytes.
        ctx: From :func:`init_distributed`.
    """
    if not ctx.is_distributed:
        return [value]
    gathered: list[object] = [None] * ctx.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def barrier(ctx: DistributedContext) -> None:
    """Wait until every process gets here; no-op for a single process.

    Args:
        ctx: From :func:`init_distributed`.
    """
    if not ctx.is_distributed:
        return
    if ctx.backend == "nccl":
        dist.barrier(device_ids=[ctx.device.index])  # avoids NCCL guessing the device
    else:
        dist.barrier()


def cleanup_distributed(ctx: DistributedContext) -> None:
    """Leave the process group; no-op for a single process.

    Args:
        ctx: From :func:`init_distributed`.
    """
    if ctx.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(
            f"environment variable {name}={raw!r} is not an integer; unset it or let "
            "torchrun set it"
        ) from None


def _resolve_device(device: str | None, local_rank: int, *, distributed: bool) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device {device!r} is not valid; use 'cpu', 'cuda' or 'cuda:0'") from None
    if resolved.type == "cpu":
        return torch.device("cpu")
    if resolved.type != "cuda":
        raise ValueError(f"device {device!r} is unsupported; use 'cpu' or 'cuda'")
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but no CUDA GPU is visible; use 'cpu'")
    count = torch.cuda.device_count()
    if resolved.index is None:
        index = local_rank if distributed else 0
    elif distributed and resolved.index != local_rank:
        raise ValueError(
            f"device {device!r} was requested under torchrun with LOCAL_RANK={local_rank}; "
            "pass 'cuda' without an index so each process takes the GPU of its local rank"
        )
    else:
        index = resolved.index
    if index >= count:
        raise ValueError(
            f"GPU {index} was requested but only {count} are visible; "
            + (
                f"start torchrun with --nproc_per_node={count} at most"
                if distributed
                else f"choose 'cuda:0' to 'cuda:{count - 1}'"
            )
        )
    return torch.device("cuda", index)
