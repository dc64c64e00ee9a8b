"""Closing a prefetch generator waits for its thread: no thread is left inside ``put`` (a
device copy in native code) when the caller goes on, e.g. to exit after an error (a daemon
thread inside XLA at interpreter exit aborted the process with rc -6)."""

from __future__ import annotations

import threading
import time

from symog_jax.training.sharding import prefetch


def test_closing_waits_for_the_thread_to_leave_put():
    inside = threading.Event()

    def slow_put(batch):
        inside.set()
        time.sleep(0.5)
        return batch

    gen = prefetch(iter(range(100)), slow_put, size=1)
    assert next(gen) == 0
    inside.wait(2)
    before = {t for t in threading.enumerate() if t.name == "symog-prefetch"}
    assert before and all(t.is_alive() for t in before)
    gen.close()
    assert not any(t.is_alive() for t in before)     # joined, not left running


def test_an_error_in_the_consumer_also_stops_the_thread():
    seen = []

    def work():
        with_thread = prefetch(iter(range(100)), lambda b: (time.sleep(0.05), b)[1], size=2)
        try:
            for b in with_thread:
                if b == 3:
                    raise RuntimeError("diverged")
        finally:
            with_thread.close()
            seen.extend(t for t in threading.enumerate() if t.name == "symog-prefetch")

    try:
        work()
    except RuntimeError:
        pass
    assert not any(t.is_alive() for t in seen)
