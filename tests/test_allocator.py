"""``import concatnets`` pins glibc's mmap threshold unless told not to."""

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


def test_opt_out_leaves_glibc_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(_allocator, "_glibc", lambda: _Recorder(calls))
    setting = configure_allocator({ENV_VARIABLE: "system"})
    assert not setting.applied and "system" in setting.detail
    assert calls == []


def test_a_threshold_the_user_chose_is_respected(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(_allocator, "_glibc", lambda: _Recorder(calls))
    setting = configure_allocator({"MALLOC_MMAP_THRESHOLD_": "65536"})
    assert not setting.applied and "65536" in setting.detail
    assert calls == []


def test_default_pins_the_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(_allocator, "_glibc", lambda: _Recorder(calls))
    setting = configure_allocator({})
    assert setting.applied and allocator_setting() == setting
    assert calls == [(-3, _allocator.MMAP_THRESHOLD_BYTES)]


def test_not_glibc_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_allocator, "_glibc", lambda: None)
    assert configure_allocator({}).detail == "not glibc: allocator left alone"


def test_a_bad_value_names_the_variable_and_the_fix() -> None:
    with pytest.raises(ValueError, match=r"CONCATNETS_MALLOC='jemalloc'.*'system'"):
        configure_allocator({ENV_VARIABLE: "jemalloc"})


@pytest.mark.skipif(not _ON_GLIBC, reason="glibc only")
@pytest.mark.parametrize(("value", "applied"), [("", True), ("system", False)])
def test_import_concatnets_applies_it_in_a_fresh_process(value: str, applied: bool) -> None:
    code = "import concatnets, concatnets._allocator as a; print(a.allocator_setting().applied)"
    env = {"PATH": "", ENV_VARIABLE: value, "PYTHONPATH": ":".join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == str(applied), out.stderr


class _Recorder:
    """Stands in for libc: records mallopt calls."""

    def __init__(self, calls: list[tuple[int, int]]) -> None:
        self.calls = calls
        self.gnu_get_libc_version = lambda: b"2.99"

    def mallopt(self, option: int, value: int) -> int:
        self.calls.append((option, value))
        return 1
