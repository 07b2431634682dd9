"""Graceful stops: Ctrl-C (SIGINT) and SIGTERM ask training to stop after the current step.

The signal handler only sets a flag; the training loop checks it between optimizer
steps, saves a checkpoint of the exact position (mid-epoch included) and raises
:class:`TrainingInterrupted`. A second Ctrl-C raises :class:`KeyboardInterrupt` at once
(the checkpoint protocol keeps the previous checkpoint intact even then).

``torchrun`` forwards SIGINT/SIGTERM to every worker; workers agree on the step to stop
at with :func:`~concatnets.training.distributed.any_process`, so all ranks stop together.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["StopRequest", "TrainingInterrupted"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on request after saving its position."""


class StopRequest:
    """A flag set by SIGINT/SIGTERM while :meth:`installed` is active."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None

    def request(self, signal_name: str = "request") -> None:
        """Ask for a stop (what the signal handler does)."""
        self.requested = True
        self.signal_name = self.signal_name or signal_name

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now, without saving
        self.request(signal.Signals(signum).name)

    @contextmanager
    def installed(self) -> Iterator[StopRequest]:
        """Route SIGINT and SIGTERM to this flag; restores the previous handlers on exit.

        Outside the main thread (where Python cannot install handlers) nothing changes,
        and a signal the process was told to ignore (``nohup``, a background job) stays
        ignored.
        """
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {
            sig: handler
            for sig in _SIGNALS
            if (handler := signal.getsignal(sig)) is not signal.SIG_IGN
        }
        for sig in previous:
            signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
