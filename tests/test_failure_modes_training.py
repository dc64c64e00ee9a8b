"""Promises of the trainer and the command line on bad runs, faults and interruptions.

(Data and numerics promises are in ``tests/test_failure_modes.py``.)

* A run whose loss or parameters become NaN/inf stops at the first fetched non-finite loss,
  naming the epoch, the step and the likely cause (the learning rate); it writes no report, and
  every JSON file it wrote stays valid (no ``Infinity``).
* ``--resume`` compares the config *before* restoring anything (one line, no orbax internals);
  a damaged newest checkpoint is reported by path, set aside, and the run continues from the
  newest intact one, ending with exactly the parameters of an uninterrupted run.
* Two runs cannot use one workdir at once (a lock); an unwritable workdir is one line naming it.
* Ctrl-C says truthfully what is checkpointed and exits with 130, without a traceback or crash.
* Numeric flags are validated when parsed (non-finite values, widths that leave a layer with
  fewer than 2 channels).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from symog_jax.training import train
from symog_jax.training.checkpoint import WorkdirLock
from symog_jax.training import TrainingDiverged
from tests.test_training import ROOT, _restore, _write_image_folder, synthetic_digits, tiny_config


@pytest.fixture(scope="module")
def dataset():
    return synthetic_digits(n_train=128, n_test=64)


# -- divergence --------------------------------------------------------------------------------

@pytest.mark.e2e
@pytest.mark.parametrize("method", ["symog", "ste", "float", "syq"])
def test_divergence_stops_the_run_and_writes_no_report(tmp_path, dataset, method):
    cfg = tiny_config(tmp_path, method=method,
                      method_config=None if method != "syq" else {"granularity": "layer"},
                      optimizer="sgd", lr=1e36, epochs=2)
    with pytest.raises(TrainingDiverged, match=r"diverged in epoch 1 \(step \d+\).*--lr 1e\+36"):
        train(cfg, dataset=dataset)
    assert not (tmp_path / "report.json").exists()
    metrics = tmp_path / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in metrics.jsonl"))


# -- checkpoints -------------------------------------------------------------------------------

@pytest.mark.e2e
def test_resume_with_another_config_fails_before_restoring(tmp_path, dataset):
    train(tiny_config(tmp_path, epochs=2, stop_after_epochs=1), dataset=dataset)
    with pytest.raises(ValueError, match=r"^cannot resume: .*model: checkpoint 'lenet5' vs now "
                                         r"'vgg7'"):
        train(tiny_config(tmp_path, epochs=2, model="vgg7"), dataset=dataset, resume=True)
    with pytest.raises(ValueError, match="^cannot resume: .*width"):
        train(tiny_config(tmp_path, epochs=2, width=0.25), dataset=dataset, resume=True)


def _damage(checkpoint: Path) -> None:
    for f in sorted((checkpoint / "state").rglob("*")):
        if f.is_file() and f.stat().st_size > 0 and "ocdbt" in str(f.parent.name) + f.name:
            f.write_bytes(b"\0" * 7)


@pytest.mark.e2e
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, dataset):
    train(tiny_config(tmp_path / "a", epochs=3), dataset=dataset)
    cfg = tiny_config(tmp_path / "b", epochs=3, stop_after_epochs=2)
    train(cfg, dataset=dataset)
    _damage(tmp_path / "b" / "checkpoints" / "2")
    with pytest.warns(UserWarning, match=r"checkpoints/2 is damaged"):
        train(cfg.replace(stop_after_epochs=None), dataset=dataset, resume=True)
    assert any((tmp_path / "b" / "damaged-checkpoints").iterdir())
    for x, y in zip(jax.tree_util.tree_leaves(_restore(tmp_path / "a")),
                    jax.tree_util.tree_leaves(_restore(tmp_path / "b"))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    epochs = [json.loads(line)["epoch"]
              for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


@pytest.mark.e2e
def test_a_locked_workdir_is_refused(tmp_path, dataset):
    with WorkdirLock(tmp_path):
        with pytest.raises(RuntimeError, match="another run is using"):
            train(tiny_config(tmp_path, epochs=1), dataset=dataset)
    train(tiny_config(tmp_path, epochs=1), dataset=dataset)      # free again afterwards


def test_an_unwritable_workdir_is_one_line(tmp_path, dataset):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError, match="cannot write to the workdir .*file/run"):
        train(tiny_config(tmp_path / "file" / "run", epochs=1), dataset=dataset)


# -- command line ------------------------------------------------------------------------------

def _cli(args, cwd, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT), SYMOG_JAX_CACHE=str(Path(cwd) / "cache"))
    return subprocess.Popen([sys.executable, "-m", "experiments.mnist", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.e2e
@pytest.mark.parametrize("flags, message", [
    (["--optimizer", "sgd", "--lr", "1e36"], "training diverged in epoch 1"),
    (["--lr", "nan"], "argument --lr: must be a finite number, got 'nan'"),
    (["--width", "0.01"], "leaves lenet5 layer conv1 with 1 channel(s)"),
    (["--momentum", "inf"], "argument --momentum: must be a finite number, got 'inf'"),
    (["--momentum", "1.5"], "momentum must be in [0, 1)"),
])
def test_cli_bad_runs_are_one_line_errors(tmp_path, dataset, flags, message):
    _write_image_folder(tmp_path / "quads", dataset)
    proc = _cli(["--dataset", "quads", "--data-source", "folder", "--data-dir",
                 str(tmp_path / "quads"), "--epochs", "2", "--batch-size", "16", "--width",
                 "0.125", "--warmup-epochs", "0", "--workdir", str(tmp_path / "run"),
                 "--float-start-epochs", "0", "--no-progress", *flags], tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err[-2000:]
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "report.json").exists()


@pytest.mark.e2e
@pytest.mark.parametrize("when", ["first-epoch", "after-epoch-1"])
def test_ctrl_c_says_what_is_checkpointed(tmp_path, dataset, when):
    _write_image_folder(tmp_path / "quads", dataset, n_train=96)
    run = tmp_path / "run"
    args = ["--dataset", "quads", "--data-source", "folder", "--data-dir",
            str(tmp_path / "quads"), "--epochs", "1000", "--batch-size", "16", "--width",
            "0.125", "--warmup-epochs", "0", "--workdir", str(run), "--no-progress",
            "--float-start-epochs", "0"]
    proc = _cli(args, tmp_path)
    deadline = time.time() + 240
    target = run / "config.json" if when == "first-epoch" else run / "checkpoints" / "1"
    while not target.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert target.exists()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "Segmentation" not in err
    saved = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit()) \
        if (run / "checkpoints").exists() else []
    if saved:
        # the whole command again (a bare --resume --workdir would be another config)
        again = ["python", "-m", "experiments.mnist", *args, "--resume"]
        assert (f"epoch {saved[-1]} is checkpointed; continue with --resume: "
                f"{shlex.join(again)}") in err
    else:
        assert "nothing is checkpointed" in err


def test_first_ctrl_c_is_deferred_to_a_step_boundary_second_is_immediate():
    from symog_jax.training.interrupt import DeferredInterrupt as _DeferredInterrupt
    before = signal.getsignal(signal.SIGINT)
    interrupt = _DeferredInterrupt()
    try:
        interrupt.check()                        # nothing pressed: no-op
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)                         # the handler runs in the main thread
        assert interrupt.requested
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
    finally:
        interrupt.restore()
    assert signal.getsignal(signal.SIGINT) is before
