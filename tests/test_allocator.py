"""``import concatnets`` leaves glibc alone unless ``CONCATNETS_MALLOC`` asks for more."""

from __future__ import annotations

import subprocess
import sys

import pytest

from concatnets import _allocator
from concatnets._allocator import ENV_VARIABLE, allocator_setting, configure_allocator

_ON_GLIBC = _allocator._glibc() is not None


@pytest.fixture(autouse=True)
def _keep_setting() -> object:
    before = allocator_setting()
    yield
    _allocator._setting = before


@pytest.mark.parametrize(
    ("environ", "choice"), [({}, "system"), ({ENV_VARIABLE: "system"}, "system")]
)
def test_default_and_system_leave_glibc_and_the_engine_alone(
    monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], choice: str
) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(_allocator, "_glibc", lambda: _Recorder(calls))
    setting = configure_allocator(environ)
    assert not setting.applied and not setting.pool and setting.choice == choice
    assert allocator_setting() == setting
    assert calls == []


def test_pool_pools_engine_buffers_and_leaves_glibc_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(_allocator, "_glibc", lambda: _Recorder(calls))
    setting = configure_allocator({ENV_VARIABLE: "pool"})
    assert not setting.applied and setting.pool and "pool" in setting.detail
    assert calls == []


def test_trim_leaves_glibc_settings_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(_allocator, "_glibc", lambda: _Recorder(calls))
    setting = configure_allocator({ENV_VARIABLE: "trim"})
    assert setting.trim and not setting.applied and not setting.pool
    assert "malloc_trim" in setting.detail and calls == []


def test_pinned_pins_the_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(_allocator, "_glibc", lambda: _Recorder(calls))
    setting = configure_allocator({ENV_VARIABLE: " Pinned "})
    assert setting.applied and not setting.pool and allocator_setting() == setting
    assert calls == [(-3, _allocator.MMAP_THRESHOLD_BYTES)]


def test_a_threshold_the_user_chose_is_respected(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(_allocator, "_glibc", lambda: _Recorder(calls))
    setting = configure_allocator({ENV_VARIABLE: "pinned", "MALLOC_MMAP_THRESHOLD_": "65536"})
    assert not setting.applied and "65536" in setting.detail
    assert calls == []


def test_pinned_off_glibc_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_allocator, "_glibc", lambda: None)
    assert configure_allocator({ENV_VARIABLE: "pinned"}).detail == "not glibc: allocator left alone"


def test_a_bad_value_names_the_variable_and_the_fix() -> None:
    with pytest.raises(
        ValueError, match=r"CONCATNETS_MALLOC='jemalloc'.*'system'.*'pool'.*'trim'.*'pinned'"
    ):
        configure_allocator({ENV_VARIABLE: "jemalloc"})


@pytest.mark.skipif(not _ON_GLIBC, reason="glibc only")
@pytest.mark.parametrize(
    ("value", "applied", "pool"),
    [("", False, False), ("pool", False, True), ("pinned", True, False), ("system", False, False)],
)
def test_import_concatnets_applies_it_in_a_fresh_process(
    value: str, applied: bool, pool: bool
) -> None:
    code = (
        "import concatnets, concatnets._allocator as a\n"
        "from concatnets.engine import buffer_pool\n"
        "print(a.allocator_setting().applied, buffer_pool.pool_enabled())"
    )
    env = {"PATH": "", ENV_VARIABLE: value, "PYTHONPATH": ":".join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == [str(applied), str(pool)], out.stderr


class _Recorder:
    """Stands in for libc: records mallopt calls."""

    def __init__(self, calls: list[tuple[int, int]]) -> None:
        self.calls = calls
        self.gnu_get_libc_version = lambda: b"2.99"

    def mallopt(self, option: int, value: int) -> int:
        self.calls.append((option, value))
        return 1
