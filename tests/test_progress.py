"""Long runs tell the truth about time: the whole-run estimate, a smaller command that fits,
and a Ctrl-C that is acknowledged at once and acted on within one step."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from symog_jax.pipelines.recipes import _with_flags, smaller_command
from symog_jax.training import TrainConfig
from symog_jax.training.interrupt import DeferredInterrupt
from symog_jax.training.loop import format_duration, smaller_run
from tests.test_training import ROOT, _write_image_folder, synthetic_digits


def test_smaller_run_halves_the_width_then_cuts_epochs():
    # under the budget: unchanged
    assert smaller_run(1800.0, 1.0, (70, 30)) == (1.0, (70, 30))
    # 3 h at width 1 -> 45 min at width 0.5 (cost ~ width^2)
    assert smaller_run(3 * 3600.0, 1.0, (70, 30)) == (0.5, (70, 30))
    # 32 h -> 2 h at the narrowest width 0.25 -> half the epochs of each stage
    assert smaller_run(32 * 3600.0, 1.0, (70, 30)) == (0.25, (35, 15))
    # never below one epoch, never below min_width
    assert smaller_run(1e9, 0.5, (3,)) == (0.25, (1,))
    assert smaller_run(4 * 3600.0, 0.25, (10,), budget_seconds=3600.0) == (0.25, (2,))


def test_smaller_command_replaces_the_flags_of_the_command():
    assert _with_flags(["--bits", "2", "--width=1", "--epochs", "30", "--x"],
                       {"--width": 0.25, "--epochs": 8}) == ["--bits", "2", "--x",
                                                             "--width 0.25", "--epochs 8"]
    make = smaller_command(TrainConfig(width=0.5, epochs=4),
                           (4,), ["python -m experiments.mnist", "--epochs", "4"])
    # 16 h at width 0.5 -> 4 h at 0.25 -> a quarter of the epochs
    assert make(16 * 3600.0) == "python -m experiments.mnist --width 0.25 --epochs 1"
    in_words = smaller_command(TrainConfig(width=1.0, epochs=30), (70, 30), argv=None)
    # not run as an experiments command: the values in words (64 h -> 4 h at 0.25 -> 1/4)
    assert in_words(64 * 3600.0) == "width=0.25, float_start_epochs=17, epochs=7"


def test_format_duration():
    assert [format_duration(s) for s in (5, 600, 7200, 3 * 86400)] == \
        ["5 s", "10 min", "2.0 h", "3.0 days"]


class _TimedStderr:
    def __init__(self):
        self.lines: list[tuple[float, str]] = []

    def write(self, text):
        if text.strip():
            self.lines.append((time.time(), text))
        return len(text)

    def flush(self):
        pass


@pytest.mark.e2e
def test_first_ctrl_c_is_acknowledged_while_the_main_thread_is_in_a_long_c_call(monkeypatch):
    """Python runs signal handlers only between bytecodes; a big matmul (BLAS, GIL released)
    stands for an XLA step or compilation. The acknowledgement must not wait for it."""
    stderr = _TimedStderr()
    monkeypatch.setattr(sys, "stderr", stderr)
    interrupt = DeferredInterrupt(lambda: "stopping after this step")
    a = np.random.default_rng(0).standard_normal((2500, 2500))
    sent = []

    def press():
        time.sleep(0.3)
        sent.append(time.time())
        os.kill(os.getpid(), signal.SIGINT)

    try:
        threading.Thread(target=press).start()
        started = time.time()
        a @ a
        finished = time.time()
        deadline = time.time() + 2
        while not stderr.lines and time.time() < deadline:
            time.sleep(0.01)
        assert interrupt.requested
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()
    finally:
        interrupt.restore()
    acks = [t for t, text in stderr.lines if "stopping after this step" in text]
    assert len(acks) == 1                         # said once, by the watcher or the handler
    assert acks[0] - sent[0] < 1.0
    if finished - started > sent[0] - started + 1.0:     # the call outlasted the signal
        assert acks[0] < finished


def test_restore_ends_the_watcher_thread_before_it_returns(monkeypatch):
    """The watcher must be gone when ``restore`` returns: one still ending while the interpreter
    shuts down (an error right after training) freed JAX arrays on its thread and aborted the
    process with exit status -6 in about a third of the runs. A slow watcher (its read takes
    0.3 s longer) makes the race certain."""
    real_read = os.read

    def slow_read(fd, n):
        data = real_read(fd, n)
        time.sleep(0.3)
        return data

    monkeypatch.setattr(os, "read", slow_read)

    def watchers():
        return [t for t in threading.enumerate() if t.name == "ctrl-c-watcher" and t.is_alive()]

    before = len(watchers())
    interrupt = DeferredInterrupt(lambda: "stopping")
    assert len(watchers()) == before + 1
    interrupt.restore()
    assert len(watchers()) == before
    interrupt.restore()                                  # a second call does nothing
    assert signal.getsignal(signal.SIGINT) is not interrupt._handle


def _reader(stream, out: queue.Queue):
    for line in stream:
        out.put((time.time(), line))
    out.put((time.time(), None))


@pytest.mark.e2e
def test_cli_prints_an_estimate_and_stops_within_a_step_of_ctrl_c(tmp_path):
    """A slow model (VGG7 at width 0.5, ~seconds per step on a CPU): the estimate comes after
    the first timed steps; the Ctrl-C is acknowledged within 2 s and the process exits within
    one step plus the shutdown (no mid-epoch checkpoint is written: the last epoch's is kept)."""
    _write_image_folder(tmp_path / "quads", synthetic_digits(n_train=640, n_test=64),
                        n_train=640, n_test=64)
    env = dict(os.environ, PYTHONPATH=str(ROOT), SYMOG_JAX_CACHE=str(tmp_path / "cache"),
               PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.mnist", "--dataset", "quads", "--data-source",
         "folder", "--data-dir", str(tmp_path / "quads"), "--model", "vgg7", "--width", "0.5",
         "--epochs", "1000", "--batch-size", "64", "--warmup-epochs", "0",
         "--float-start-epochs", "0", "--workdir", str(tmp_path / "run")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = queue.Queue(), queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, out), daemon=True).start()
    threading.Thread(target=_reader, args=(proc.stderr, err), daemon=True).start()
    estimate, stdout = None, []
    deadline = time.time() + 400
    while estimate is None and time.time() < deadline:
        try:
            _, line = out.get(timeout=1)
        except queue.Empty:
            assert proc.poll() is None, "the run ended before its estimate"
            continue
        assert line is not None, "".join(stdout)[-2000:]
        stdout.append(line)
        estimate = re.search(r"time: ([0-9.e+-]+) s/step after compiling", line)
    assert estimate is not None, "".join(stdout)[-2000:]
    per_step = float(estimate.group(1))
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    ack = None
    while ack is None:
        t, line = err.get(timeout=60)
        assert line is not None
        if "stopping after this step" in line:
            ack = t
    rc = proc.wait(timeout=120)
    exited = time.time()
    rest = "".join(stdout)
    while not out.empty():
        rest += out.get()[1] or ""
    assert rc == 130
    assert ack - sent < 2.0
    assert exited - sent < per_step + 20.0, (per_step, exited - sent)
    assert "whole run ~" in rest
    # 1000 epochs on a CPU are long: it says so once and offers a smaller command
    assert rest.count("note: this run takes") == 1
    assert "python -m experiments.mnist" in rest and "--width 0.25" in rest
