"""Tests for concatnets.training.rng."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load, save

from concatnets.training.rng import (
    capture_rng_state,
    configure_determinism,
    restore_rng_state,
    seed_everything,
)


def _draw() -> tuple[list[float], list[float], list[float]]:
    # random.gauss caches a second value: draw an odd number to exercise that state too.
    python_values = [random.random(), random.gauss(0.0, 1.0)]
    numpy_values = [*np.random.rand(3).tolist(), float(np.random.standard_normal())]
    torch_values = torch.rand(4).tolist()
    return python_values, numpy_values, torch_values


def test_seed_everything_repeats_all_three_generators() -> None:
    seed_everything(123)
    first = _draw()
    seed_everything(123)
    assert _draw() == first
    seed_everything(124)
    assert _draw() != first


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, True])
def test_seed_everything_rejects_out_of_range(seed: object) -> None:
    with pytest.raises(ValueError, match="pass an integer between 0 and"):
        seed_everything(seed)  # type: ignore[arg-type]


def test_capture_restore_round_trip_all_generators() -> None:
    seed_everything(7)
    _draw()  # leave the gaussian caches populated
    state = capture_rng_state()
    expected = _draw()
    _draw()
    restore_rng_state(state)
    python_values, numpy_values, torch_values = _draw()
    assert python_values == expected[0]
    assert numpy_values == expected[1]
    assert torch_values == expected[2]


def test_each_generator_is_restored_independently() -> None:
    seed_everything(3)
    state = capture_rng_state()
    expected = _draw()
    for key in ("python", "numpy", "torch.cpu"):
        _draw()
        restore_rng_state({key: state[key]})
        values = dict(zip(("python", "numpy", "torch.cpu"), _draw(), strict=True))
        assert values[key] == expected[("python", "numpy", "torch.cpu").index(key)]


def test_state_survives_safetensors_round_trip() -> None:
    seed_everything(11)
    state = capture_rng_state()
    assert all(t.dtype == torch.uint8 and t.dim() == 1 for t in state.values())
    expected = _draw()
    restored = load(save(state))
    restore_rng_state(restored)
    assert _draw() == expected


def test_restore_rejects_unknown_keys_and_bad_tensors() -> None:
    with pytest.raises(ValueError, match="unknown RNG state key 'cuda'"):
        restore_rng_state({"cuda": torch.zeros(3, dtype=torch.uint8)})
    with pytest.raises(ValueError, match="must be a 1-D uint8 tensor"):
        restore_rng_state({"numpy": torch.zeros(3)})
    with pytest.raises(ValueError, match="truncated"):
        restore_rng_state({"python": torch.zeros(10, dtype=torch.uint8)})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU fallback")
def test_cuda_states_without_gpu_warn_and_keep_cpu_state() -> None:
    seed_everything(5)
    state = capture_rng_state()
    state["torch.cuda.0"] = torch.zeros(16, dtype=torch.uint8)
    expected = _draw()
    with pytest.warns(RuntimeWarning, match=r"devices \[0\] were not restored"):
        restore_rng_state(state)
    assert _draw() == expected


def test_configure_determinism_toggles_torch_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        configure_determinism(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"

        configure_determinism(True, strict=True)
        assert not torch.is_deterministic_algorithms_warn_only_enabled()

        configure_determinism(False)
        assert not torch.are_deterministic_algorithms_enabled()
        assert not torch.backends.cudnn.deterministic and torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = False
