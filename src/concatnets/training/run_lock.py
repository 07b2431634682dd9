"""One training process per run folder: an OS lock on ``RUN/.concatnets.lock``.

The lock is ``fcntl.flock`` on a file inside the run folder, taken before the folder is
checked and held until the run ends. The operating system releases it when its holder
exits, however it exits (``kill -9`` included), so a file left behind by a dead process
never blocks the next run. The lock file holds the holder's process id, which the
refusal names. A folder that did not exist is created for the lock and removed again
(with the lock file) when the command ends without having written anything else.

On systems without ``fcntl`` (Windows) runs are not locked.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_FILE", "RunFolderInUseError", "locked_run_folder"]

LOCK_FILE = ".concatnets.lock"


class RunFolderInUseError(FileExistsError):
    """Another live process holds the run folder's lock."""


def _missing_ancestors(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    current = folder
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    return missing


def _holder_pid(path: Path) -> str:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return "unknown"
    return text if text.isdigit() else "unknown"


def _acquire(path: Path, purpose: str) -> int:
    """Open and lock ``path``; retry when the file was replaced while we waited."""
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise RunFolderInUseError(
                f"run folder {path.parent} is in use by another `concatnets train` "
                f"(process {_holder_pid(path)}); wait for it to finish or stop it, then "
                f"{purpose}, or choose another --output"
            ) from None
        except BaseException:
            os.close(descriptor)
            raise
        try:
            same = os.fstat(descriptor).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return descriptor
        os.close(descriptor)  # the holder removed the file as we locked it: lock the new one


@contextlib.contextmanager
def locked_run_folder(
    folder: Path, *, enabled: bool = True, purpose: str = "run again"
) -> Iterator[None]:
    """Hold the lock of run folder ``folder`` for the duration of the block.

    Args:
        folder: The run folder (created if missing, removed again if left empty).
        enabled: ``False`` skips locking (processes other than rank 0 under torchrun).
        purpose: What the refusal tells the user to do once the folder is free.

    Raises:
        RunFolderInUseError: Another live process holds the lock.
    """
    if not enabled or fcntl is None:
        yield
        return
    created = _missing_ancestors(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    try:
        descriptor = _acquire(path, purpose)
    except BaseException:
        _remove_empty(created)
        raise
    try:
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode("ascii"))
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # before unlocking: a waiter re-checks the inode and retries
        os.close(descriptor)
        _remove_empty(created)


def _remove_empty(created: list[Path]) -> None:
    for folder in created:  # deepest first; stops at the first folder that holds something
        try:
            folder.rmdir()
        except OSError:
            return
