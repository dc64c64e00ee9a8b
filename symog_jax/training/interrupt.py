"""Ctrl-C during training: deferred to the next step boundary, reported with the saved epoch."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable
from pathlib import Path

#: How long :meth:`DeferredInterrupt.restore` waits for the watcher thread to end (it ends as
#: soon as it reads the stop byte).
WATCHER_JOIN_SECONDS = 5.0


class DeferredInterrupt:
    """Ctrl-C during training stops at the next step boundary instead of wherever Python is.

    Python raises ``KeyboardInterrupt`` at any bytecode, including inside finalizers and
    callbacks that swallow it (the run would then train on). The first SIGINT only sets a flag
    that the loop checks between steps; a second one interrupts at once. Outside the main
    thread (where handlers cannot be set) nothing changes.

    The first Ctrl-C is acknowledged at once with ``acknowledge()``'s line on stderr, even while
    the main thread is inside a long XLA call (compiling, or a step): Python runs its signal
    handlers only between bytecodes, so a watcher thread woken by the signal
    (:func:`signal.set_wakeup_fd`) prints it.
    """

    def __init__(self, acknowledge: Callable[[], str] | None = None):
        self.requested = False
        self._presses = 0
        self._acknowledge = acknowledge
        self._acknowledged = threading.Lock()
        self._previous = None
        self._wakeup = None
        self._watcher: threading.Thread | None = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._start_watcher()

    def _start_watcher(self) -> None:
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        try:
            previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        except ValueError:   # not the main thread of the main interpreter
            os.close(read_fd), os.close(write_fd)
            return
        if previous_fd != -1:   # someone else (an event loop) listens: leave it theirs
            signal.set_wakeup_fd(previous_fd)
            os.close(read_fd), os.close(write_fd)
            return
        self._wakeup = (read_fd, write_fd)
        self._watcher = threading.Thread(target=self._watch, args=(read_fd,), daemon=True,
                                         name="ctrl-c-watcher")
        self._watcher.start()

    def _watch(self, read_fd: int) -> None:
        try:
            while True:
                data = os.read(read_fd, 64)
                if signal.SIGINT in data:
                    self.requested = True
                    self._say_once()
                if not data or b"\xff" in data:   # closed, or restore()'s stop byte
                    return
        except OSError:
            return
        finally:
            os.close(read_fd)

    def _say_once(self) -> None:
        if self._acknowledge is not None and self._acknowledged.acquire(blocking=False):
            try:
                print("\n" + self._acknowledge(), file=sys.stderr, flush=True)
            except Exception:   # noqa: BLE001 - a message must never stop the shutdown
                pass

    def _handle(self, signum, frame):
        self._presses += 1
        if self._presses > 1:
            raise KeyboardInterrupt
        self.requested = True
        self._say_once()

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` if Ctrl-C was pressed since the handler was set."""
        if self.requested:
            raise KeyboardInterrupt

    def restore(self) -> None:
        """Puts back the SIGINT handler that was there before (once; later calls do nothing)."""
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        if self._wakeup is not None:
            read_fd, write_fd = self._wakeup
            self._wakeup = None
            signal.set_wakeup_fd(-1)
            try:
                os.write(write_fd, b"\xff")   # wakes the watcher, which then ends
            except OSError:
                pass
            os.close(write_fd)   # the watcher closes the read end as it ends
        if self._watcher is not None:
            # Wait for it: a watcher still ending while the interpreter shuts down (an error
            # ends the run right after this) drops the last references to the training state
            # on its own thread, and freeing JAX arrays there aborts the process (exit -6).
            self._watcher.join(timeout=WATCHER_JOIN_SECONDS)
            self._watcher = None


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; ``checkpointed_epoch`` is the last epoch saved (or ``None``)."""

    def __init__(self, checkpointed_epoch: int | None, workdir: Path):
        super().__init__(checkpointed_epoch)
        self.checkpointed_epoch = checkpointed_epoch
        self.workdir = workdir
