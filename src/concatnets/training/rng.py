"""Random number generators: seeding, exact capture/restore, and determinism switches.

What ``configure_determinism(True)`` buys, and what it does not:

- CPU: PyTorch's CPU kernels give the same result for the same inputs, seed and thread
  count. Changing ``torch.set_num_threads`` (or ``OMP_NUM_THREADS``) may change the order
  of floating-point reductions, so results can differ in the last bits between machines
  with different core counts.
- GPU: cuDNN may pick different convolution algorithms from run to run (autotuning) and
  some algorithms are non-deterministic; ``cudnn.deterministic = True`` with
  ``cudnn.benchmark = False`` pins them. Several CUDA backward kernels accumulate with
  atomic adds (``index_add``, ``scatter_add``, bilinear/trilinear upsampling backward,
  ``max_pool3d`` backward, ...) and have no deterministic version; with the default
  ``strict=False`` PyTorch warns when one runs instead of raising, so a U-Net with bilinear
  upsampling still trains. cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (set here if
  absent) *before* its first call, so call this function before any CUDA work.
- Never bit-identical across PyTorch/CUDA/cuDNN versions, GPU models, TF32 settings, or a
  different number of processes (DDP reduces gradients in a different order).
- Deterministic mode fills memory from ``torch.empty`` with NaN
  (``torch.utils.deterministic.fill_uninitialized_memory``), a small time cost for the
  pre-allocated concatenation buffers of the memory engine.

RNG states are encoded as ``uint8`` tensors so a checkpoint stores them in safetensors,
never through pickle. CUDA states are captured only once CUDA is initialized: before
that no CUDA random number has been drawn and the seed alone reproduces the state.
In DDP every process has its own generators; each rank captures and restores its own.
"""

from __future__ import annotations

import os
import random
import struct
import warnings
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "capture_rng_state",
    "configure_determinism",
    "restore_rng_state",
    "seed_everything",
]

_TORCH_CPU_KEY = "torch.cpu"
_TORCH_CUDA_PREFIX = "torch.cuda."
_NUMPY_KEY = "numpy"
_PYTHON_KEY = "python"

# The legacy numpy global generator is a Mersenne Twister with 624 32-bit words.
_MT_WORDS = 624
_NUMPY_TAIL = struct.Struct("<iid")  # position, has_gauss, cached_gaussian
_PYTHON_HEAD = struct.Struct("<i")  # random.getstate() version
_PYTHON_TAIL = struct.Struct("<?d")  # gauss_next is set, gauss_next value
_MAX_SEED = 2**32 - 1  # numpy's legacy seeding refuses larger values


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch (CPU and all GPUs).

    Args:
        seed: A value in ``[0, 2**32 - 1]``.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _MAX_SEED:
        raise ValueError(f"seed {seed!r} is invalid; pass an integer between 0 and {_MAX_SEED}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device, lazily if CUDA is not up yet


def capture_rng_state() -> dict[str, Tensor]:
    """Snapshot every generator this library draws from, as ``uint8`` CPU tensors.

    Returns:
        Keys ``"torch.cpu"``, ``"numpy"``, ``"python"`` and, once CUDA is initialized,
        ``"torch.cuda.<index>"`` per visible device.
    """
    state = {
        _TORCH_CPU_KEY: torch.get_rng_state(),
        _NUMPY_KEY: _encode_numpy_state(np.random.get_state()),
        _PYTHON_KEY: _encode_python_state(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index in range(torch.cuda.device_count()):
            state[f"{_TORCH_CUDA_PREFIX}{index}"] = torch.cuda.get_rng_state(index)
    return state


def restore_rng_state(state: Mapping[str, Tensor]) -> None:
    """Put back generator states produced by :func:`capture_rng_state`.

    Generators missing from ``state`` are left alone. CUDA states for devices this machine
    does not have are skipped with a warning (resuming a GPU run on CPU, or on fewer GPUs).

    Args:
        state: The mapping returned by :func:`capture_rng_state`, e.g. read back from a
            checkpoint's extra tensors.
    """
    cuda_states: dict[int, Tensor] = {}
    for key, value in state.items():
        if key.startswith(_TORCH_CUDA_PREFIX) and key[len(_TORCH_CUDA_PREFIX) :].isdigit():
            cuda_states[int(key[len(_TORCH_CUDA_PREFIX) :])] = value
        elif key not in (_TORCH_CPU_KEY, _NUMPY_KEY, _PYTHON_KEY):
            raise ValueError(
                f"unknown RNG state key {key!r}; pass exactly the mapping returned by "
                "capture_rng_state() (keys 'torch.cpu', 'torch.cuda.<i>', 'numpy', 'python')"
            )

    if _TORCH_CPU_KEY in state:
        cpu_state = _as_byte_tensor(state[_TORCH_CPU_KEY], _TORCH_CPU_KEY)
        try:
            torch.set_rng_state(cpu_state)
        except RuntimeError as exc:
            raise ValueError(
                f"RNG state {_TORCH_CPU_KEY!r} is not a valid torch generator state ({exc}); "
                "it was saved by an incompatible PyTorch or is corrupt; resume without it"
            ) from exc
    if _NUMPY_KEY in state:
        np.random.set_state(_decode_numpy_state(state[_NUMPY_KEY]))
    if _PYTHON_KEY in state:
        random.setstate(_decode_python_state(state[_PYTHON_KEY]))
    _restore_cuda_states(cuda_states)


def configure_determinism(deterministic: bool, *, strict: bool = False) -> None:
    """Switch PyTorch between reproducible and fastest kernels (see the module notes).

    Call before building models and before the first CUDA operation, because cuBLAS reads
    ``CUBLAS_WORKSPACE_CONFIG`` only when it starts.

    Args:
        deterministic: ``True`` pins deterministic kernels and disables cuDNN autotuning;
            ``False`` restores PyTorch's defaults and enables cuDNN autotuning, which is
            fastest when input sizes repeat.
        strict: With ``deterministic``, raise on an operation that has no deterministic
            implementation instead of warning.
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=not strict)
    else:
        torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def _restore_cuda_states(cuda_states: Mapping[int, Tensor]) -> None:
    if not cuda_states:
        return
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    skipped = sorted(index for index in cuda_states if index >= available)
    if skipped:
        warnings.warn(
            f"CUDA RNG states for devices {skipped} were not restored: only {available} CUDA "
            "device(s) are visible; GPU-side random numbers will differ from the original run",
            RuntimeWarning,
            stacklevel=3,
        )
    for index, value in cuda_states.items():
        if index < available:
            torch.cuda.set_rng_state(_as_byte_tensor(value, f"torch.cuda.{index}"), index)


def _as_byte_tensor(value: Tensor, key: str) -> Tensor:
    if not isinstance(value, Tensor) or value.dtype != torch.uint8 or value.dim() != 1:
        raise ValueError(
            f"RNG state {key!r} must be a 1-D uint8 tensor, got {_describe(value)}; "
            "pass the tensors returned by capture_rng_state()"
        )
    return value.detach().to("cpu").contiguous()


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def _bytes_to_tensor(data: bytes) -> Tensor:
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())


def _tensor_to_bytes(value: Tensor, key: str, expected_size: int) -> bytes:
    data = _as_byte_tensor(value, key).numpy().tobytes()
    if len(data) != expected_size:
        raise ValueError(
            f"RNG state {key!r} has {len(data)} bytes, expected {expected_size}; it is "
            "truncated or from another library version; resume without it"
        )
    return data


def _encode_numpy_state(state: tuple) -> Tensor:
    algorithm, words, position, has_gauss, cached_gaussian = state
    if algorithm != "MT19937":
        raise ValueError(f"numpy generator {algorithm!r} is unsupported; expected 'MT19937'")
    payload = np.asarray(words, dtype="<u4").tobytes()
    payload += _NUMPY_TAIL.pack(position, has_gauss, cached_gaussian)
    return _bytes_to_tensor(payload)


def _decode_numpy_state(value: Tensor) -> tuple:
    words_size = _MT_WORDS * 4
    data = _tensor_to_bytes(value, _NUMPY_KEY, words_size + _NUMPY_TAIL.size)
    words = np.frombuffer(data[:words_size], dtype="<u4").astype(np.uint32)
    position, has_gauss, cached_gaussian = _NUMPY_TAIL.unpack(data[words_size:])
    return ("MT19937", words, position, has_gauss, cached_gaussian)


def _encode_python_state(state: tuple) -> Tensor:
    version, internal, gauss_next = state
    payload = _PYTHON_HEAD.pack(version)
    # 624 Mersenne Twister words plus the position, all below 2**32.
    payload += np.asarray(internal, dtype="<u4").tobytes()
    payload += _PYTHON_TAIL.pack(gauss_next is not None, gauss_next or 0.0)
    return _bytes_to_tensor(payload)


def _decode_python_state(value: Tensor) -> tuple:
    internal_size = (_MT_WORDS + 1) * 4
    expected = _PYTHON_HEAD.size + internal_size + _PYTHON_TAIL.size
    data = _tensor_to_bytes(value, _PYTHON_KEY, expected)
    (version,) = _PYTHON_HEAD.unpack(data[: _PYTHON_HEAD.size])
    internal_end = _PYTHON_HEAD.size + internal_size
    internal = tuple(
        int(word) for word in np.frombuffer(data[_PYTHON_HEAD.size : internal_end], "<u4")
    )
    has_gauss, gauss_value = _PYTHON_TAIL.unpack(data[internal_end:])
    return (version, internal, gauss_value if has_gauss else None)
