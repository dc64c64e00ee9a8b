"""Ctrl-C during training: deferred to the next step boundary, reported with the saved epoch."""

from __future__ import annotations

import signal
import threading
from pathlib import Path


class DeferredInterrupt:
    """Ctrl-C during training stops at the next step boundary instead of wherever Python is.

    Python raises ``KeyboardInterrupt`` at any bytecode, including inside finalizers and
    callbacks that swallow it (the run would then train on). The first SIGINT only sets a flag
    that the loop checks between steps; a second one interrupts at once. Outside the main
    thread (where handlers cannot be set) nothing changes.
    """

    def __init__(self):
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` if Ctrl-C was pressed since the handler was set."""
        if self.requested:
            raise KeyboardInterrupt

    def restore(self) -> None:
        """Puts back the SIGINT handler that was there before (once; later calls do nothing)."""
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; ``checkpointed_epoch`` is the last epoch saved (or ``None``)."""

    def __init__(self, checkpointed_epoch: int | None, workdir: Path):
        super().__init__(checkpointed_epoch)
        self.checkpointed_epoch = checkpointed_epoch
        self.workdir = workdir
