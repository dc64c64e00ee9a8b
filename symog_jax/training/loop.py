"""The training loop: epochs, evaluation (float and hard-quantized), logs, checkpoints, report.

Data-parallel over every device (``jax.devices()``, all hosts) with
:class:`~symog_jax.training.sharding.DataParallel`: each global batch is split along the mesh
axis ``"data"``, the state is replicated, and the next batches are gathered and copied to the
devices in a background thread while the current step runs (:func:`~.sharding.prefetch`). On one
device this is the plain single-device loop, with the same numbers. With several hosts
(``distributed=True``), every host runs this loop on its own rows of each batch; process 0
writes ``config.json``, ``data.json`` (input normalisation, class names, data fingerprint,
version: :mod:`~symog_jax.training.run_record`), ``metrics.jsonl`` and ``report.json`` and holds
the workdir lock, and orbax coordinates the checkpoints.

The run itself is built by :mod:`~symog_jax.training.run` and evaluated by
:mod:`~symog_jax.training.evaluation`; :func:`train` returns the report and draws nothing
(figures of a run: :func:`symog_jax.pipelines.figures.save_run_figures`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from symog_jax.data import ImageDataset, epoch_batches, load_dataset
from symog_jax.quantizers.hard_quantize import HardQuantized
from symog_jax.models import count_params
from symog_jax.quantizers.activations import activation_format_report
from symog_jax.training.checkpoint import Checkpointer, WorkdirLock
from symog_jax.training.config import TrainConfig
# evaluate, restore_run and save_variables are not used here: experiments/prune.py imports
# them from this module until its workflow moves to symog_jax.pipelines (issue 28).
from symog_jax.training.evaluation import (evaluate,  # noqa: F401
                                           evaluate_float_and_quantized)
from symog_jax.training.interrupt import DeferredInterrupt, TrainingInterrupted
from symog_jax.training.run import (BuiltRun, build_run, restore_run,  # noqa: F401
                                    training_split)
from symog_jax.training.run_record import (Normalisation, check_run_data, input_normalisation,
                                           write_json_atomic, write_run_data)
from symog_jax.training.sharding import DataParallel, initialize_distributed, prefetch
from symog_jax.training.steps import TrainState, make_eval_step
from symog_jax.training.variables_io import save_variables  # noqa: F401

#: A training loss above this (in nats: a wrong logit ahead by 10^4) or non-finite means the
#: run diverged; no healthy classifier gets there, and with clipped weights (SYMOG) a diverged
#: run can stay finite at ~1e36 forever.
DIVERGED_LOSS = 1e4
# Fields that may differ between a run and its resumption.
_RESUMABLE_CHANGES = {"stop_after_epochs", "progress", "workdir", "data_dir", "data_source",
                      "allow_bundled", "distributed", "plots"}
#: Host batches gathered and copied to the devices ahead of the running step.
PREFETCH_BATCHES = 2
#: Training steps whose metrics are fetched from the devices at once (fetching rarely keeps
#: XLA busy).
FETCH_EVERY = 20


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` (and TensorBoard if installed)."""

    def __init__(self, workdir: Path):
        self.path = workdir / "metrics.jsonl"
        self._tb = None
        try:  # an optional dependency: imported here so that training runs without it
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(str(workdir / "tensorboard"))
        except ImportError:
            pass

    def write(self, record: dict) -> None:
        """Appends ``record`` (a flat dict with an ``epoch``) as one JSON line."""
        with open(self.path, "a") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self._tb.add_scalar(key, value, record["epoch"])
            self._tb.flush()

    def truncate_after(self, epoch: int) -> None:
        """Drops records past ``epoch`` (written by a run that died before its checkpoint)."""
        if not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("epoch", 0) <= epoch]
        self.path.write_text("".join(line + "\n" for line in keep))


class TrainingDiverged(ValueError):
    """The loss became NaN or inf; the run stopped (nothing non-finite was written)."""


def train(config: TrainConfig, dataset: ImageDataset | None = None,
          resume: bool = False) -> dict:
    """Trains ``config`` end to end; returns (and saves as ``report.json``) the final report.

    Each epoch: train, evaluate float and hard-quantized weights on the test split, append to
    ``metrics.jsonl``, checkpoint. ``resume=True`` continues from the newest intact checkpoint
    in ``config.workdir`` (a damaged newer one is reported and set aside) and ends with exactly
    the parameters of an uninterrupted run. The workdir is locked while the run uses it.
    Nothing is drawn (``config.plots`` is for the caller:
    :func:`symog_jax.pipelines.train_run` draws the figures).

    Training is data-parallel over all devices (see the module docstring): the batch size must
    be a multiple of the device count, and a run continues from its checkpoints on any number
    of devices. ``config.distributed`` (or ``SYMOG_JAX_DISTRIBUTED=1``) first joins the hosts of
    a multi-host run (:func:`~symog_jax.training.sharding.initialize_distributed`).

    Raises:
      FileExistsError: the workdir holds checkpoints and ``resume`` is False.
      ValueError: resuming with a different config (checked before anything is restored); a
        batch size that is not a multiple of the device count.
      TrainingDiverged: the loss became non-finite (the message names step, epoch and causes).
      TrainingInterrupted: Ctrl-C (it says which epoch is checkpointed).
      RuntimeError: another process is using the workdir.
      OSError: the workdir cannot be written (one line naming it).
    """
    initialize_distributed(config.distributed)
    workdir = Path(config.workdir).absolute()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise OSError(f"cannot write to the workdir {workdir}: {e.strerror or e}") from None
    with WorkdirLock(workdir) if DataParallel.is_primary() else contextlib.nullcontext():
        return _train(config, dataset, resume, workdir)


@dataclasses.dataclass
class _Session:
    """What one invocation of :func:`train` works with, from setup to the report."""
    config: TrainConfig
    workdir: Path
    dataset: ImageDataset
    parallel: DataParallel
    ckpt: Checkpointer
    log: MetricsLog | None
    built: BuiltRun
    eval_step: Callable
    train_x: np.ndarray
    train_y: np.ndarray
    steps_per_epoch: int
    first_epoch: int
    last_epoch: int
    started: float
    data_seconds: float
    normalisation: Normalisation
    resumed: bool = False

    def say(self, *args, **kwargs) -> None:
        """``print`` on the primary host only."""
        if self.parallel.is_primary():
            print(*args, **kwargs)


def _train(config: TrainConfig, dataset: ImageDataset | None, resume: bool,
           workdir: Path) -> dict:
    session, state = _start(config, dataset, resume, workdir)
    interrupt = DeferredInterrupt()
    _announce(session, state)
    train_seconds, record, hq = 0.0, {}, None
    try:
        for epoch in range(session.first_epoch, session.last_epoch + 1):
            state, sums, seconds = _train_epoch(session, state, epoch, interrupt)
            train_seconds += seconds
            record, hq = _end_epoch(session, state, epoch, sums, seconds)
    except KeyboardInterrupt:
        saved = session.ckpt.latest_epoch()
        session.ckpt.close()
        raise TrainingInterrupted(saved, workdir) from None
    except Exception:
        session.ckpt.close()
        raise
    finally:
        interrupt.restore()
    session.ckpt.close()
    if session.last_epoch < config.epochs:
        session.say(f"stopped after epoch {session.last_epoch} of {config.epochs}; continue "
                    "with --resume")
        return {"stopped_at_epoch": session.last_epoch, "workdir": str(workdir)}
    return _final_report(session, state, record, hq, train_seconds)


def _start(config: TrainConfig, dataset: ImageDataset | None, resume: bool,
           workdir: Path) -> tuple[_Session, TrainState]:
    """Loads the data, builds the run and restores its checkpoint when resuming."""
    started = time.time()
    parallel = DataParallel()
    parallel.check_batch_size(config.batch_size)
    ckpt = Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
    if ckpt.latest_epoch() is not None and not resume:
        raise FileExistsError(f"{workdir} already holds checkpoints (epoch {ckpt.latest_epoch()}); "
                              "pass --resume to continue that run or choose a new --workdir")
    t_data = time.time()
    if dataset is None:
        dataset = load_dataset(config.dataset, source=config.data_source,
                               data_dir=config.data_dir, allow_bundled=config.allow_bundled)
    data_seconds = time.time() - t_data
    train_x, train_y, steps_per_epoch = training_split(config, dataset)
    resuming = resume and ckpt.latest_epoch() is not None
    # A resumed run goes on with the normalisation it stored, on the data it was trained on.
    normalisation = (check_run_data(workdir, dataset, say=_primary_print) if resuming
                     else input_normalisation(dataset))
    built = build_run(config, dataset, train_x, steps_per_epoch, parallel,
                      normalisation=normalisation)
    eval_step = make_eval_step(built.model, built.prepare, parallel=parallel,
                               precision=config.precision)
    log = MetricsLog(workdir) if parallel.is_primary() else None
    session = _Session(config, workdir, dataset, parallel, ckpt, log, built, eval_step, train_x,
                       train_y, steps_per_epoch, 1, config.epochs, started, data_seconds,
                       normalisation, resuming)
    state = built.state
    if resuming:
        state, meta = ckpt.restore_latest_intact(
            state, check=lambda m: _check_resume_config(m["config"], config))
        session.first_epoch = meta["epoch"] + 1
        if log is not None:
            log.truncate_after(meta["epoch"])
        session.say(f"resuming {workdir} after epoch {meta['epoch']}")
    elif not resume and log is not None:
        log.truncate_after(0)
    if config.stop_after_epochs is not None:
        session.last_epoch = min(config.epochs,
                                 session.first_epoch + config.stop_after_epochs - 1)
    return session, state


def _announce(session: _Session, state: TrainState) -> None:
    """Writes ``config.json`` and ``data.json`` (primary host) and prints what is trained on
    what. A resumed run keeps the ``data.json`` it started with (an old run has none)."""
    config, dataset = session.config, session.dataset
    if session.parallel.is_primary():
        write_json_atomic(session.workdir / "config.json", config.to_json())
        if not session.resumed:
            write_run_data(session.workdir, dataset, session.normalisation)
    shape = f"widths {','.join(map(str, config.widths))}" if config.widths is not None else \
        f"width {config.width}"
    session.say(f"{config.describe()} {config.model} ({shape}, "
                f"{count_params(state.params):,} params) on {dataset.source}: "
                f"{len(session.train_y)} train / {len(dataset.test_labels)} test, "
                f"{session.steps_per_epoch} steps/epoch, {session.parallel.describe()}, "
                f"{config.precision}")


def _train_epoch(session: _Session, state: TrainState, epoch: int,
                 interrupt: DeferredInterrupt) -> tuple[TrainState, dict, float]:
    """The steps of one epoch: ``(state, {"loss": sum, "accuracy": sum}, seconds)``."""
    config, parallel, steps = session.config, session.parallel, session.steps_per_epoch
    t0 = time.time()
    rows = parallel.local_rows(config.batch_size)
    batches = prefetch(
        _host_batches(session.train_x, session.train_y, config.batch_size, config.seed, epoch,
                      rows),
        lambda b: parallel.put_batch(config.batch_size, *b), PREFETCH_BATCHES)
    bar = tqdm(batches, total=steps, desc=f"epoch {epoch}/{config.epochs}",
               disable=not (config.progress and parallel.is_primary()), leave=False)
    sums = {"loss": 0.0, "accuracy": 0.0}
    pending = []
    with contextlib.closing(batches):  # stops the prefetch thread on errors
        for i, (x, y) in enumerate(bar):
            interrupt.check()
            state, metrics = session.built.train_step(state, x, y)
            pending.append(metrics)
            if len(pending) == FETCH_EVERY or i == steps - 1:
                sums = _add_fetched(session, sums, pending, epoch, int(state.step), i)
                pending = []
                bar.set_postfix(loss=f"{sums['loss'] / (i + 1):.4f}",
                                acc=f"{sums['accuracy'] / (i + 1):.3f}")
    jax.block_until_ready(state.params)
    if not _all_finite(state.trainable):
        raise _diverged(config, epoch, int(state.step), "non-finite parameters")
    return state, sums, time.time() - t0


def _add_fetched(session: _Session, sums: dict, pending: list, epoch: int, step: int,
                 batch: int) -> dict:
    """``sums`` plus the fetched metrics of the ``pending`` steps (the last one is batch
    ``batch`` of the epoch, 0-based, and optimizer step ``step``); a diverged loss raises."""
    first = batch + 1 - len(pending)
    for j, m in enumerate(jax.device_get(pending)):
        if not float(m["loss"]) <= DIVERGED_LOSS:    # also NaN
            raise _diverged(session.config, epoch, step - len(pending) + j + 1,
                            f"training loss {float(m['loss'])} at batch {first + j + 1} of "
                            "the epoch")
        sums = {k: sums[k] + float(m[k]) for k in sums}
    return sums


def _end_epoch(session: _Session, state: TrainState, epoch: int, sums: dict,
               seconds: float) -> tuple[dict, HardQuantized]:
    """Evaluates the epoch's state, logs and checkpoints it: ``(record, finalized network)``."""
    config, parallel, steps = session.config, session.parallel, session.steps_per_epoch
    method = session.built.method
    float_eval, quant_eval, hq = evaluate_float_and_quantized(method, state, session.eval_step,
                                                              session.dataset, parallel)
    near = float(np.mean([r.near_level_fraction for r in hq.report]))
    record = {"epoch": epoch, "step": int(state.step),
              "train_loss": sums["loss"] / steps,
              "train_error": 1.0 - sums["accuracy"] / steps,
              "test_loss": float_eval["loss"], "test_error_float": float_eval["error"],
              "test_error_quantized": quant_eval["error"], "near_level_fraction": near,
              "epoch_seconds": seconds,
              "images_per_second": steps * config.batch_size / seconds}
    local = parallel.local_copy(state)
    extra = {k: float(v) for k, v in
             method.epoch_metrics(local.trainable, local.opt_state).items()}
    record.update(extra)
    bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise _diverged(config, epoch, int(state.step), f"non-finite {', '.join(bad)}")
    if session.log is not None:
        session.log.write(record)
    session.ckpt.save(epoch, state, {"epoch": epoch, "config": dataclasses.asdict(config)})
    session.say(f"epoch {epoch:3d}  loss {record['train_loss']:.4f}  test error float "
                f"{100 * record['test_error_float']:.2f}%  quantized "
                f"{100 * record['test_error_quantized']:.2f}%  near-level {100 * near:.1f}%  "
                + "".join(f"{k} {v:.4g}  " for k, v in extra.items())
                + f"({seconds:.1f}s)")
    return record, hq


def _final_report(session: _Session, state: TrainState, record: dict, hq: HardQuantized | None,
                  train_seconds: float) -> dict:
    """The report of a finished run; written as ``report.json`` (primary host) and returned."""
    config, workdir, dataset = session.config, session.workdir, session.dataset
    if not record:  # resumed a finished run: evaluate the final state
        float_eval, quant_eval, hq = evaluate_float_and_quantized(
            session.built.method, state, session.eval_step, dataset, session.parallel)
        record = {"test_error_float": float_eval["error"],
                  "test_error_quantized": quant_eval["error"]}
    quant_bits, float_bits = hq.weight_bits()
    report = {
        "config": dataclasses.asdict(config),
        "dataset_source": dataset.source,
        "num_params": count_params(state.params),
        "devices": session.parallel.num_devices,
        "test_error_float": record["test_error_float"],
        "test_error_quantized": record["test_error_quantized"],
        "weight_memory_bits": {"quantized": quant_bits, "float32": float_bits,
                               "ratio": float_bits / quant_bits},
        "layers": [r.as_dict() for r in hq.report],
        "activations": activation_format_report(jax.device_get(state.act_formats)),
        "train_seconds_this_invocation": train_seconds,
        "data_load_seconds": session.data_seconds,
        "total_seconds_this_invocation": time.time() - session.started,
        "files": {"workdir": str(workdir), "metrics": str(workdir / "metrics.jsonl"),
                  "checkpoints": str(session.ckpt.directory),
                  "report": str(workdir / "report.json")},
    }
    if session.parallel.is_primary():
        (workdir / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False))
    session.say(hq.summary())
    session.say(f"final: float error {100 * report['test_error_float']:.2f}%, quantized "
                f"error {100 * report['test_error_quantized']:.2f}% ({config.describe()}); "
                f"report {workdir / 'report.json'}")
    return report


def _primary_print(*args) -> None:
    if DataParallel.is_primary():
        print(*args)


def _host_batches(train_x: np.ndarray, train_y: np.ndarray, batch_size: int, seed: int,
                  epoch: int, rows: slice):
    """This host's rows of each global batch of ``epoch``: ``(images, int32 labels)``, in the
    order of :func:`~symog_jax.data.epoch_batches` (all rows on one host)."""
    index = np.arange(len(train_y))
    for idx, _ in epoch_batches(index, index, batch_size, seed=seed, epoch=epoch):
        idx = idx[rows]
        yield train_x[idx], np.asarray(train_y[idx], np.int32)


def _all_finite(tree) -> bool:
    return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree_util.tree_leaves(tree)
               if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.inexact))


def _diverged(config: TrainConfig, epoch: int, step: int, what: str) -> TrainingDiverged:
    return TrainingDiverged(
        f"training diverged in epoch {epoch} (step {step}): {what}. Likely causes: the learning "
        f"rate (--lr {config.lr} with {config.optimizer}) is too high, or the method's "
        f"strength/scales are; nothing after the last finished epoch was saved")


def _check_resume_config(saved: dict, config: TrainConfig) -> None:
    current = json.loads(config.to_json())    # as saved: tuples are lists
    # A field added after the checkpoint was written had its default then.
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    saved = {**{k: defaults[k] for k in current if k not in saved}, **saved}
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {v!r}" for k, v in current.items()
             if k not in _RESUMABLE_CHANGES and saved.get(k) != v]
    if diffs:
        raise ValueError("cannot resume: the run was started with a different config ("
                         + "; ".join(diffs) + "). Use a new --workdir or the same flags.")
