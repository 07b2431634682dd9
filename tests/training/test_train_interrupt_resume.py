"""Ctrl-C mid-epoch, exact resume, determinism and the data order shared by all processes."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from concatnets.cli.main import main
from concatnets.training import trainer as trainer_module
from concatnets.training.checkpoint import load_checkpoint
from concatnets.training.interrupt import StopRequest
from concatnets.training.trainer import EpochSampler

TINY = ["train", "--model", "unet_small", "--model-arg", "features=4", "--model-arg", "depth=2"]
TINY += ["--num-images", "12", "--image-size", "16", "--batch-size", "3", "--epochs", "2"]
TINY += ["--device", "cpu", "--no-progress", "--overlays", "0"]
# Per-epoch fields that measure the machine rather than the training.
_TIMING = {"time_s", "images_per_s", "peak_memory_mb"}


def _same_weights(a: Path, b: Path) -> None:
    expected, actual = load_checkpoint(a).model_state, load_checkpoint(b).model_state
    assert expected.keys() == actual.keys()
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


def _history(run: Path) -> list[dict[str, Any]]:
    rows = json.loads((run / "metrics.json").read_text())
    return [{k: v for k, v in row.items() if k not in _TIMING} for row in rows]


def test_ctrl_c_mid_epoch_saves_the_position_and_resume_is_bit_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert main([*TINY, "--output", str(straight)]) == 0

    # 3 training steps per epoch (to_device here counts training batches only): Ctrl-C
    # arrives while step 2 of epoch 2 runs; training stops before step 3.
    calls = {"count": 0}
    real_to_device = trainer_module.to_device

    def to_device_with_ctrl_c(batch: Any, device: torch.device) -> Any:
        calls["count"] += 1
        if calls["count"] == 5:
            signal.raise_signal(signal.SIGINT)
        return real_to_device(batch, device)

    monkeypatch.setattr(trainer_module, "to_device", to_device_with_ctrl_c)
    # As in a terminal, even when pytest runs as a background job (SIGINT ignored).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        capsys.readouterr()
        assert main([*TINY, "--output", str(stopped)]) == 130
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    finally:
        signal.signal(signal.SIGINT, previous)
    err = capsys.readouterr().err
    assert "stopped by SIGINT in epoch 2 after step 2 (step 5)" in err
    assert f"--resume {stopped}" in err and "Traceback" not in err
    monkeypatch.setattr(trainer_module, "to_device", real_to_device)

    metadata = load_checkpoint(stopped).metadata
    assert metadata["trainer"]["epoch"] == 1 and metadata["trainer"]["epoch_step"] == 2
    assert metadata["step"] == 5 and metadata["data_order"]["steps_done_in_next_epoch"] == 2
    assert metadata["trainer"]["partial"]["images"] == 6
    assert [row["epoch"] for row in _history(stopped)] == [1]

    # The position is in batches: another batch size cannot continue this epoch.
    assert main(["train", "--resume", str(stopped), "--batch-size", "2"]) == 2
    assert "resume it with the same --batch-size" in capsys.readouterr().err

    assert main(["train", "--resume", str(stopped)]) == 0
    assert "resuming after epoch 1 and 2 steps of epoch 2" in capsys.readouterr().out
    _same_weights(straight, stopped)
    assert _history(stopped) == _history(straight)  # losses and metrics, bit for bit


def test_stop_request_first_signal_asks_second_ctrl_c_interrupts() -> None:
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        stop = StopRequest()
        with stop.installed():
            signal.raise_signal(signal.SIGTERM)
            assert stop.requested and stop.signal_name == "SIGTERM"
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        # A signal the process was told to ignore stays ignored.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with StopRequest().installed() as ignoring:
            signal.raise_signal(signal.SIGINT)
            assert not ignoring.requested
    finally:
        signal.signal(signal.SIGINT, previous)


def test_same_seed_and_config_give_the_same_result_on_cpu(tmp_path: Path) -> None:
    runs = {name: tmp_path / name for name in ("a", "b", "other_seed")}
    for name, run in runs.items():
        seed = ["--seed", "5" if name == "other_seed" else "4"]
        assert main([*TINY, "--epochs", "1", *seed, "--output", str(run)]) == 0
    _same_weights(runs["a"], runs["b"])
    assert _history(runs["a"]) == _history(runs["b"])
    with pytest.raises(AssertionError):  # the comparison can fail
        _same_weights(runs["a"], runs["other_seed"])


def test_deterministic_switch_trains_identically_on_cpu_and_restores_torch_flags(
    tmp_path: Path,
) -> None:
    plain, strict = tmp_path / "plain", tmp_path / "strict"
    assert main([*TINY, "--epochs", "1", "--output", str(plain)]) == 0
    assert main([*TINY, "--epochs", "1", "--deterministic", "--output", str(strict)]) == 0
    _same_weights(plain, strict)
    assert not torch.are_deterministic_algorithms_enabled()  # global state put back


def test_resume_with_another_optimizer_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert main([*TINY, "--epochs", "1", "--output", str(run)]) == 0
    before = (run / "config.json").read_bytes()
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "2", "--optimizer", "sgd"]) == 2
    err = capsys.readouterr().err
    assert "--optimizer sgd differs from the optimizer adam" in err and "drop --optimizer" in err
    assert (run / "config.json").read_bytes() == before


@pytest.mark.parametrize(("length", "batch"), [(12, 3), (10, 2), (7, 2)])
def test_process_shares_form_the_single_process_batches(length: int, batch: int) -> None:
    single = EpochSampler(length, seed=1)
    shares = [EpochSampler(length, seed=1, rank=r, world_size=2) for r in (0, 1)]
    for sampler in (single, *shares):
        sampler.set_epoch(3)
    order, parts = list(single), [list(s) for s in shares]
    assert set(parts[0]) | set(parts[1]) == set(order) == set(range(length))
    assert len(parts[0]) == len(parts[1]) == len(shares[0]) == (length + 1) // 2
    # Step j of 2 processes with batch B sees the samples of step j of 1 process with 2B.
    for step in range(length // (2 * batch)):
        together = parts[0][step * batch : (step + 1) * batch] + parts[1][step * batch :][:batch]
        assert sorted(together) == sorted(order[2 * step * batch : 2 * (step + 1) * batch])
    shares[0].set_epoch(3, start=batch)  # resuming after one step skips that step's samples
    assert list(shares[0]) == parts[0][batch:] and len(shares[0]) == len(parts[0]) - batch
