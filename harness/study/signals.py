"""Signals for workers: SIGTERM (a SLURM time limit, scancel) and SIGINT (Ctrl-C) stop a worker
only where that is safe, and end in one line."""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

from harness.errors import HarnessError

log = logging.getLogger(__name__)


class Interrupted(HarnessError):
    """The worker got SIGTERM (SLURM time limit, scancel) or SIGINT (Ctrl-C)."""


def signal_name(e: KeyboardInterrupt) -> str:
    """KeyboardInterrupt() from Ctrl-C has no text; ours carry 'signal N'."""
    text = str(e)
    if text.startswith("signal "):
        try:
            return signal.Signals(int(text.split()[1])).name
        except ValueError:
            return text
    return "SIGINT (Ctrl-C)"


class Signals:
    """SIGTERM and SIGINT (Ctrl-C) raise KeyboardInterrupt only where that is safe (inside a trial,
    or while the worker waits); elsewhere (a sweep re-queuing another worker's trial, our own
    re-queue) the signal is held until that step is done, so no trial is ever left FAIL without its
    retry. Only the first signal counts: a second one (Ctrl-C pressed twice, SLURM's SIGTERM reaching
    both a worker group and its processes, which the group forwards) is ignored, so it cannot cut
    short the re-queue the first one started. One exception: a Ctrl-C pressed again more than
    ``FORCE_AFTER`` seconds after a first one that is still held (the worker waits on a lock another
    worker holds) stops the wait. A signal the parent process set to be ignored stays ignored."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)
    FORCE_AFTER = 1.0  # a forwarded copy of one Ctrl-C comes within ms; a person's second press later

    def __init__(self) -> None:
        self.interruptible = False
        self.pending: int | None = None
        self.raised = False
        self.held_at = 0.0
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> Signals:
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            for s in self.SIGNALS:
                if signal.getsignal(s) is not signal.SIG_IGN:
                    self.previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)  # None: set from C

    def _interrupt(self) -> KeyboardInterrupt:
        if self.pending == signal.SIGINT:
            return KeyboardInterrupt()  # named "SIGINT (Ctrl-C)" by signal_name
        return KeyboardInterrupt(f"signal {self.pending}")

    def _handle(self, signum: int, frame: object) -> None:
        if self.pending is None:
            self.pending, self.held_at = signum, time.monotonic()
            if self.interruptible:
                self.raised = True
                raise self._interrupt()
            return
        if not self.raised and signum == signal.SIGINT and time.monotonic() - self.held_at > self.FORCE_AFTER:
            log.warning("Ctrl-C again: stopping now, without waiting for the step in progress")
            self.raised = True
            raise self._interrupt()
        log.info("signal %d ignored: already stopping on signal %d", signum, self.pending)

    def check(self) -> None:
        if self.pending is not None:
            self.raised = True
            raise self._interrupt()
