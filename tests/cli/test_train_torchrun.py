"""`torchrun --nproc_per_node=2 concatnets train` on CPU (gloo on 127.0.0.1).

Two processes with batch size B take the same steps as one process with batch size 2B:
the data order is one global permutation per epoch dealt out round-robin, and DDP
averages the gradients. The comparison uses a U-Net without batch norm and the
cross-entropy loss: batch norm normalizes each process's share with its own statistics
(SyncBatchNorm would fix that, but PyTorch has it only on GPUs), and the Dice loss is
computed over each process's share of the batch, so both differ slightly from one
process by design.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from concatnets.cli.main import main
from concatnets.training.checkpoint import load_checkpoint

_TIMEOUT_S = 90
_TRAIN = ["-m", "concatnets.cli.main", "train"]
_UNET = ["--model", "unet_small", "--model-arg", "features=4", "--model-arg", "depth=2"]
_UNET += ["--model-arg", "normalization=none", "--loss", "ce", "--augment", "flip,rot90"]
_DATA = ["--data", "builtin:cells", "--num-images", "10", "--image-size", "16", "--seed", "3"]
_RUN = ["--epochs", "2", "--device", "cpu", "--no-progress", "--overlays", "0"]


def test_two_processes_match_one_process_with_the_same_global_batch(
    tmp_path: Path, torchrun: Callable[..., tuple[int, str]]
) -> None:
    two, one = tmp_path / "two", tmp_path / "one"
    code, output = torchrun(
        [*_TRAIN, *_UNET, *_DATA, *_RUN, "--batch-size", "2", "--output", str(two)], _TIMEOUT_S
    )
    assert code == 0, output[-6000:]
    # Rank-0 logging: one summary line per epoch, not one per process.
    assert output.count("epoch 2/2") == 1 and "on cpu x 2 processes" in output

    assert main(["train", *_UNET, *_DATA, *_RUN, "--batch-size", "4", "--output", str(one)]) == 0
    distributed, single = load_checkpoint(two), load_checkpoint(one)
    assert distributed.metadata["world_size"] == 2 and single.metadata["world_size"] == 1
    assert distributed.metadata["step"] == single.metadata["step"] == 4  # 8 images, 2 steps/epoch
    gaps = {
        key: (distributed.model_state[key].double() - value.double()).abs().max().item()
        for key, value in single.model_state.items()
    }
    assert max(gaps.values()) < 1e-5, gaps
    losses = [
        [row["train_loss"] for row in json.loads((run / "metrics.json").read_text())]
        for run in (two, one)
    ]
    assert all(abs(a - b) < 1e-5 for a, b in zip(*losses, strict=True)), losses
    # Every process saved its own generator states through rank 0.
    assert {"rng.torch.cpu", "rng1.torch.cpu"} <= set(distributed.extra_tensors)


def test_memory_efficient_densenet_trains_under_two_processes(
    tmp_path: Path, torchrun: Callable[..., tuple[int, str]]
) -> None:
    run = tmp_path / "run"
    arguments = ["--model", "densenet_bc", "--model-arg", "depth=10", "--model-arg"]
    arguments += ["growth_rate=4", "--memory-efficient", "--data", "builtin:shapes"]
    arguments += ["--num-images", "12", "--image-size", "16", "--batch-size", "2"]
    code, output = torchrun([*_TRAIN, *arguments, *_RUN, "--output", str(run)], _TIMEOUT_S)
    assert code == 0, output[-6000:]
    checkpoint = load_checkpoint(run)
    assert checkpoint.metadata["model_kwargs"]["memory_efficient"] is True
    assert checkpoint.metadata["world_size"] == 2 and checkpoint.metadata["epoch"] == 2
    history = json.loads((run / "metrics.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    assert all(0.0 <= row["val_top1"] <= 1.0 for row in history)
    assert len(list(run.glob("last-*.safetensors"))) == 1  # one writer


def test_sync_batchnorm_with_the_memory_engine_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["train", *_UNET[:4], "--memory-efficient", "--sync-batchnorm", *_DATA, *_RUN]
    assert main([*arguments, "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "--sync-batchnorm does not reach the batch norm of --memory-efficient models" in err
    assert not (tmp_path / "run").exists()
