"""Shared test fixtures."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

_LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# Failures of the launcher's own networking (another process took the probed port, a
# rendezvous that lost a race on a loaded machine), not of the code under test: one retry.
_LAUNCHER_ERRORS = ("address already in use", "connection refused", "connection reset")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``cuda`` where torch sees no CUDA device."""
    marked = [item for item in items if item.get_closest_marker("cuda") is not None]
    if not marked:
        return
    import torch  # only when a cuda test was collected

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in marked:
        item.add_marker(skip)


TorchRun = Callable[[Sequence[str], float], tuple[int, str]]


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _launch(target: Sequence[str], timeout: float) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARIABLES}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"  # keep gloo on loopback whatever the hostname says
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1"]
    command += ["--nproc_per_node=2", "--master_addr=127.0.0.1"]
    command += [f"--master_port={_free_loopback_port()}", *target]
    # A session of its own, so a hang can be ended together with the workers it spawned.
    launcher = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = launcher.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        output, _ = launcher.communicate()
        return -1, f"torchrun timed out after {timeout} s\n{output}"
    return launcher.returncode, output


@pytest.fixture
def torchrun() -> TorchRun:
    """Run ``torchrun --nproc_per_node=2 <target...>`` on loopback; ``(returncode, output)``."""

    def run(target: Sequence[str], timeout: float = 120) -> tuple[int, str]:
        returncode, output = _launch(target, timeout)
        if returncode != 0 and any(e in output.lower() for e in _LAUNCHER_ERRORS):
            returncode, output = _launch(target, timeout)
        return returncode, output

    return run
