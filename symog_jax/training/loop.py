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
from symog_jax.files import append_line, json_text, path_in_dir, write_text_atomic
from symog_jax.quantizers.hard_quantize import HardQuantized
from symog_jax.models import count_params
from symog_jax.quantizers.activations import activation_format_report
from symog_jax.training.checkpoint import Checkpointer, WorkdirLock, has_checkpoints
from symog_jax.training.config import (PATH_FIELDS, TrainConfig, flat_fields, load_run_config,
                                       paths_for_run_dir)
from symog_jax.training.evaluation import (describe_test_errors, evaluate_float_and_quantized,
                                           finalize)
from symog_jax.training.interrupt import DeferredInterrupt, TrainingInterrupted
from symog_jax.training.run import BuiltRun, build_run, training_split
from symog_jax.training.run_record import (Normalisation, check_run_data, input_normalisation,
                                           write_json_atomic, write_run_data)
from symog_jax.training.sharding import DataParallel, initialize_distributed, prefetch
from symog_jax.training.steps import TrainState, make_eval_step

#: A training loss above this (in nats: a wrong logit ahead by 10^4) or non-finite means the
#: run diverged; no healthy classifier gets there, and with clipped weights (SYMOG) a diverged
#: run can stay finite at ~1e36 forever.
DIVERGED_LOSS = 1e4
#: Fields that may differ between a run and its resumption (or a finished run and its reuse).
RESUMABLE_CHANGES = {"stop_after_epochs", "progress", "workdir", "data_dir", "data_source",
                     "allow_bundled", "distributed", "plots", "eval_every"}
#: Host batches gathered and copied to the devices ahead of the running step.
PREFETCH_BATCHES = 2
#: The progress bar is redrawn at least this often (seconds), also in the middle of a long step.
REFRESH_SECONDS = 2.0
#: The whole-run estimate is printed once this many steps after the first (compiling) one
#: have finished, or once they have taken :data:`ESTIMATE_AFTER_SECONDS`.
ESTIMATE_AFTER_STEPS = 5
ESTIMATE_AFTER_SECONDS = 10.0
#: On a CPU, a run estimated longer than this (seconds) is said to be long, with a smaller one.
LONG_RUN_SECONDS = 3600.0


@dataclasses.dataclass(frozen=True)
class TimePlan:
    """What the whole-run time estimate needs to know beyond the stage :func:`train` runs.

    Attributes:
      later_epochs: epochs of the stages after this one (same data and batch size; their steps
        are assumed to cost what this stage's do).
      earlier_seconds: wall time the stages before this one took in this invocation.
      stage: a label for the messages, e.g. ``"stage 1 of 2"``.
      smaller: given the whole-run estimate in seconds, a smaller command that fits in
        :data:`LONG_RUN_SECONDS` (or None): printed when a CPU run is long.
    """
    later_epochs: int = 0
    earlier_seconds: float = 0.0
    stage: str = ""
    smaller: Callable[[float], str | None] | None = None


def smaller_run(estimate_seconds: float, width: float, epochs: tuple[int, ...], *,
                budget_seconds: float = LONG_RUN_SECONDS, min_width: float = 0.25
                ) -> tuple[float, tuple[int, ...]]:
    """A width and epochs (one per stage) whose run takes about ``budget_seconds``.

    A step's cost is taken to scale with ``width**2`` (convolution and dense work; measured on
    VGG7: width 0.25 runs an epoch 15-24x faster than width 1). The width is halved down to
    ``min_width`` first (a narrower network changes the result less than much shorter
    training), then all stages' epochs are cut in the same proportion (at least 1 each).

    Example:
      >>> smaller_run(4 * 3600.0, 1.0, (70, 30))        # width 0.5 takes ~1 h
      (0.5, (70, 30))
      >>> smaller_run(54 * 3600.0, 1.0, (70, 30))       # width 0.25: 3.4 h, so 1/3.4 of epochs
      (0.25, (20, 8))
    """
    w = width
    while estimate_seconds * (w / width) ** 2 > budget_seconds and w / 2 >= min_width:
        w /= 2
    scaled = estimate_seconds * (w / width) ** 2
    if scaled > budget_seconds:
        factor = budget_seconds / scaled
        epochs = tuple(max(1, int(e * factor)) for e in epochs)
    return w, tuple(epochs)


def format_duration(seconds: float) -> str:
    """``"45 s"``, ``"12 min"``, ``"3.5 h"`` or ``"2.3 days"``.

    Example:
      >>> [format_duration(s) for s in (45, 720, 12600, 200000)]
      ['45 s', '12 min', '3.5 h', '2.3 days']
    """
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


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
        append_line(self.path, json_text(record, indent=None))
        if self._tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self._tb.add_scalar(key, value, record["epoch"])
            self._tb.flush()

    def start_anew(self) -> Path | None:
        """A fresh run: an earlier attempt's rows (a run killed before its first checkpoint)
        are moved to ``metrics.jsonl.prev``, never mixed with this run's. Returns that path,
        or ``None`` when there was nothing to move."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return None
        aside = self.path.with_name(self.path.name + ".prev")
        os.replace(self.path, aside)
        return aside

    def truncate_after(self, epoch: int) -> None:
        """Drops records past ``epoch`` (written by a run that died before its checkpoint)."""
        if not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("epoch", 0) <= epoch]
        write_text_atomic(self.path, "".join(line + "\n" for line in keep))


class TrainingDiverged(ValueError):
    """The loss became NaN or inf; the run stopped (nothing non-finite was written)."""


def train(config: TrainConfig, dataset: ImageDataset | None = None,
          resume: bool = False, plan: TimePlan | None = None) -> dict:
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

    Time: a few steps after the first (compiling) one, the estimate of the whole run is
    printed (this stage and ``plan``'s others); on a CPU, a run over :data:`LONG_RUN_SECONDS`
    is said to be long, with ``plan.smaller``'s command. The first Ctrl-C is acknowledged at
    once and stops the run after the running step (the last epoch's checkpoint is kept); a
    second one stops at once.

    Raises:
      FileExistsError: the workdir holds checkpoints and ``resume`` is False.
      FileNotFoundError: ``resume`` with no run directory or no checkpoint in it (one line:
        drop ``--resume``). A fresh run moves an earlier attempt's ``metrics.jsonl`` aside to
        ``metrics.jsonl.prev`` (the rows are never mixed).
      ValueError: resuming with a different config (checked before anything is restored); a
        batch size that is not a multiple of the device count.
      TrainingDiverged: the loss became non-finite (the message names step, epoch and causes).
      TrainingInterrupted: Ctrl-C (it says which epoch is checkpointed).
      RuntimeError: another process is using the workdir.
      OSError: the workdir cannot be written (one line naming it).
    """
    initialize_distributed(config.distributed)
    workdir = Path(config.workdir).absolute()
    if resume and not has_checkpoints(workdir):
        what = ("there is no such run directory" if not workdir.is_dir() else
                "it holds no checkpoint (the earlier attempt stopped before its first epoch "
                "ended)")
        raise FileNotFoundError(f"cannot resume {workdir}: {what}; drop --resume to start the "
                                "run anew")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise OSError(f"cannot write to the workdir {workdir}: {e.strerror or e}") from None
    with WorkdirLock(workdir) if DataParallel.is_primary() else contextlib.nullcontext():
        return _train(config, dataset, resume, workdir, plan or TimePlan())


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
    plan: TimePlan = TimePlan()
    saved_epoch: int | None = None
    estimated: bool = False
    eval_seconds: float | None = None      # the last evaluation's wall time (measured)

    def say(self, *args, **kwargs) -> None:
        """``print`` on the primary host only."""
        if self.parallel.is_primary():
            print(*args, **kwargs)


def _train(config: TrainConfig, dataset: ImageDataset | None, resume: bool,
           workdir: Path, plan: TimePlan) -> dict:
    session, state = _start(config, dataset, resume, workdir)
    session.plan = plan
    session.saved_epoch = session.first_epoch - 1 if session.first_epoch > 1 else None
    interrupt = DeferredInterrupt(lambda: _acknowledgement(session))
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


def _acknowledgement(session: _Session) -> str:
    """The line that answers the first Ctrl-C at once."""
    kept = (f"the checkpoint of epoch {session.saved_epoch} is kept (--resume goes on from it)"
            if session.saved_epoch is not None else "no epoch has finished yet: nothing is "
            "checkpointed")
    return (f"Ctrl-C: stopping after this step; {kept}. Press Ctrl-C again to stop at once")


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
            state, check=lambda m: _check_resume_config(m["config"], config, workdir))
        session.first_epoch = meta["epoch"] + 1
        if log is not None:
            log.truncate_after(meta["epoch"])
        session.say(f"resuming {workdir} after epoch {meta['epoch']}")
    elif log is not None:
        aside = log.start_anew()
        if aside is not None:
            session.say(f"{log.path.name} of an earlier attempt (no checkpoint) moved to "
                        f"{aside.name}; this run starts its metrics anew")
    if config.stop_after_epochs is not None:
        session.last_epoch = min(config.epochs,
                                 session.first_epoch + config.stop_after_epochs - 1)
    return session, state


def _announce(session: _Session, state: TrainState) -> None:
    """Writes ``config.json`` and ``data.json`` (primary host) and prints what is trained on
    what. A resumed run keeps the ``data.json`` it started with (an old run has none)."""
    config, dataset = session.config, session.dataset
    if session.parallel.is_primary():
        if session.resumed:
            _say_if_config_file_replaced(session)
        # Paths to other runs relative to this one: the file re-runs from any directory.
        write_json_atomic(session.workdir / "config.json",
                          paths_for_run_dir(config, session.workdir).to_json())
        if not session.resumed:
            write_run_data(session.workdir, dataset, session.normalisation)
    shape = f"widths {','.join(map(str, config.widths))}" if config.widths is not None else \
        f"width {config.width}"
    session.say(f"{config.describe()} {config.model} ({shape}, "
                f"{count_params(state.params):,} params) on {dataset.source}: "
                f"{len(session.train_y)} train / {len(dataset.test_labels)} test, "
                f"{session.steps_per_epoch} steps/epoch, {session.parallel.describe()}, "
                f"{config.precision}")


def _say_if_config_file_replaced(session: _Session) -> None:
    """A resumed run rewrites ``config.json`` from the config its checkpoint was checked
    against; say so when the file there was missing, unreadable or different."""
    path = session.workdir / "config.json"
    try:
        on_disk = load_run_config(session.workdir)
        was, now = (paths_for_run_dir(c, session.workdir).flat()
                    for c in (on_disk, session.config))
        same = all(was[k] == now[k] for k in now if k not in RESUMABLE_CHANGES)
        problem = None if same else "differed from the run's config"
    except (OSError, ValueError, TypeError) as e:
        problem = f"was unreadable ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    if problem is not None:
        session.say(f"note: {path} {problem}; rewritten from the config the checkpoint was "
                    "trained with")


def _train_epoch(session: _Session, state: TrainState, epoch: int,
                 interrupt: DeferredInterrupt) -> tuple[TrainState, dict, float]:
    """The steps of one epoch: ``(state, {"loss": sum, "accuracy": sum}, seconds)``.

    At most two steps are in flight: after dispatching step ``i`` the loop waits for step
    ``i - 1`` (polling, so that Ctrl-C and the progress bar are served while XLA runs). The bar
    counts finished steps and is redrawn at least every :data:`REFRESH_SECONDS`; a Ctrl-C stops
    the epoch before the next step is dispatched, i.e. within the running step.
    """
    config, parallel, steps = session.config, session.parallel, session.steps_per_epoch
    t0 = time.time()
    rows = parallel.local_rows(config.batch_size)
    batches = prefetch(
        _host_batches(session.train_x, session.train_y, config.batch_size, config.seed, epoch,
                      rows),
        lambda b: parallel.put_batch(config.batch_size, *b), PREFETCH_BATCHES)
    bar = tqdm(total=steps, desc=f"epoch {epoch}/{config.epochs}",
               disable=not (config.progress and parallel.is_primary()), leave=False,
               mininterval=0.5)
    sums = {"loss": 0.0, "accuracy": 0.0}
    timing = _StepTiming()
    in_flight = None   # (batch index, optimizer step, metrics) dispatched, not yet counted
    with contextlib.closing(batches), contextlib.closing(bar):  # stops the prefetch thread
        for i, (x, y) in enumerate(batches):
            interrupt.check()
            state, metrics = session.built.train_step(state, x, y)
            if in_flight is not None:
                sums = _finish_step(session, sums, in_flight, epoch, bar, interrupt, timing)
            in_flight = (i, metrics)
        if in_flight is not None:
            sums = _finish_step(session, sums, in_flight, epoch, bar, interrupt, timing)
    jax.block_until_ready(state.params)
    if not _all_finite(state.trainable):
        raise _diverged(config, epoch, int(state.step), "non-finite parameters")
    return state, sums, time.time() - t0


class _StepTiming:
    """Finish times of an epoch's steps, for the whole-run estimate."""

    def __init__(self):
        self.first_done: float | None = None   # the first step of the epoch includes compiling
        self.timed_steps = 0

    def seconds_per_step(self) -> float | None:
        """Mean seconds per step after the first, once enough have been timed."""
        if self.first_done is None or self.timed_steps < 1:
            return None
        elapsed = time.time() - self.first_done
        if self.timed_steps >= ESTIMATE_AFTER_STEPS or elapsed >= ESTIMATE_AFTER_SECONDS:
            return elapsed / self.timed_steps
        return None


def _finish_step(session: _Session, sums: dict, in_flight: tuple, epoch: int, bar,
                 interrupt: DeferredInterrupt, timing: _StepTiming) -> dict:
    """Waits for the step ``in_flight``, adds its metrics and advances the bar."""
    i, metrics = in_flight
    _wait_ready(metrics, bar, interrupt)
    sums = _add_fetched(session, sums, [metrics], epoch, session.steps_per_epoch * (epoch - 1)
                        + i + 1, i)
    if timing.first_done is None:
        timing.first_done = time.time()
    else:
        timing.timed_steps += 1
    bar.update(1)
    bar.set_postfix(loss=f"{sums['loss'] / (i + 1):.4f}", acc=f"{sums['accuracy'] / (i + 1):.3f}",
                    refresh=False)
    if not session.estimated:
        per_step = timing.seconds_per_step()
        if per_step is not None:
            session.estimated = True
            _print_estimate(session, epoch, i + 1, per_step)
    return sums


def _wait_ready(tree, bar, interrupt: DeferredInterrupt) -> None:
    """Blocks until every array of ``tree`` is computed, redrawing ``bar`` meanwhile.

    It sleeps in short slices rather than blocking inside XLA, so that Python runs its
    Ctrl-C handler at once; after a Ctrl-C it waits for the step to finish.
    """
    leaves = [leaf for leaf in jax.tree_util.tree_leaves(tree) if hasattr(leaf, "is_ready")]
    nap, last_draw = 0.0005, time.time()
    while not all(leaf.is_ready() for leaf in leaves):
        time.sleep(nap)
        nap = min(nap * 2, 0.05)
        if time.time() - last_draw >= REFRESH_SECONDS:
            bar.refresh()
            last_draw = time.time()


def _print_estimate(session: _Session, epoch: int, done_in_epoch: int, per_step: float) -> None:
    """Prints the whole-run estimate (and, for a long CPU run, a smaller command)."""
    config, plan, steps = session.config, session.plan, session.steps_per_epoch
    eval_seconds = _guessed_eval_seconds(session, per_step)
    epochs_left = session.last_epoch - epoch + 1
    evals_left = sum(_evaluates_after(session, e) for e in range(epoch, session.last_epoch + 1))
    stage_left = (epochs_left * steps - done_in_epoch) * per_step + evals_left * eval_seconds
    later = plan.later_epochs * (steps * per_step + eval_seconds / config.eval_every)
    whole = plan.earlier_seconds + (time.time() - session.started) + stage_left + later
    where = f" ({plan.stage})" if plan.stage else ""
    session.say(f"time: {per_step:.3g} s/step after compiling, {steps} steps/epoch; this "
                f"stage{where} needs ~{format_duration(stage_left)} more"
                + (f", the later stages ({plan.later_epochs} epochs) ~{format_duration(later)}"
                   if plan.later_epochs else "")
                + f"; whole run ~{format_duration(whole)}")
    if jax.default_backend() == "cpu" and whole > LONG_RUN_SECONDS:
        smaller = plan.smaller(whole) if plan.smaller is not None else None
        session.say(f"note: this run takes ~{format_duration(whole)} on this CPU (over "
                    f"{format_duration(LONG_RUN_SECONDS)})"
                    + (f"; a smaller run that fits in about {format_duration(LONG_RUN_SECONDS)}:"
                       f"\n  {smaller}" if smaller else ""))


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
    """Evaluates the epoch's state (on :func:`_evaluates_after` epochs), logs and checkpoints
    it: ``(record, finalized network)``. A record without evaluation has no ``test_*`` keys."""
    config, parallel, steps = session.config, session.parallel, session.steps_per_epoch
    method = session.built.method
    record = {"epoch": epoch, "step": int(state.step),
              "train_loss": sums["loss"] / steps,
              "train_error": 1.0 - sums["accuracy"] / steps}
    local = parallel.local_copy(state)
    if _evaluates_after(session, epoch):
        started = time.time()
        float_eval, quant_eval, hq = evaluate_float_and_quantized(
            method, state, session.eval_step, session.dataset, parallel)
        session.eval_seconds = time.time() - started
        record.update(test_loss=float_eval["loss"], test_error_float=float_eval["error"],
                      test_error_quantized=quant_eval["error"])
    else:
        hq = finalize(method, local)
    near = float(np.mean([r.near_level_fraction for r in hq.report]))
    record.update(near_level_fraction=near, epoch_seconds=seconds,
                  images_per_second=steps * config.batch_size / seconds)
    extra = {k: float(v) for k, v in
             method.epoch_metrics(local.trainable, local.opt_state).items()}
    record.update(extra)
    bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise _diverged(config, epoch, int(state.step), f"non-finite {', '.join(bad)}")
    if session.log is not None:
        session.log.write(record)
    session.ckpt.save(epoch, state, {"epoch": epoch, "config": paths_for_run_dir(
        config, session.workdir).flat()})
    session.saved_epoch = epoch
    tested = (describe_test_errors(method, record["test_error_float"],
                                   record["test_error_quantized"]) + "  "
              if "test_error_float" in record else "")
    session.say(f"epoch {epoch:3d}  loss {record['train_loss']:.4f}  " + tested
                + f"near-level {100 * near:.1f}%  "
                + "".join(f"{k} {v:.4g}  " for k, v in extra.items())
                + f"({seconds:.1f}s{_time_left(session, epoch, seconds)})")
    return record, hq


def _time_left(session: _Session, epoch: int, train_seconds: float) -> str:
    """``"; ~12 min left"``: the rest of the run after ``epoch``, from this epoch's measured
    training time and the last measured evaluation (the first estimate guesses evaluation
    from the step time and is often off by 2x on a CPU); ``""`` after the run's last epoch."""
    later = session.plan.later_epochs
    if epoch == session.last_epoch and not later:
        return ""
    evals = sum(_evaluates_after(session, e) for e in range(epoch + 1, session.last_epoch + 1))
    per_eval = session.eval_seconds
    if per_eval is None:      # no evaluation yet (eval_every > 1)
        per_eval = _guessed_eval_seconds(session, train_seconds / session.steps_per_epoch)
    left = ((session.last_epoch - epoch + later) * train_seconds
            + (evals + later / session.config.eval_every) * per_eval)
    return f"; ~{format_duration(left)} left"


def _guessed_eval_seconds(session: _Session, seconds_per_step: float) -> float:
    """An evaluation's time before one was measured. It runs the float and the quantized
    network over the test split: forward passes only, about a third of a training step's work
    per image."""
    batches = len(session.dataset.test_labels) / session.config.batch_size
    return 2 * batches * seconds_per_step / 3


def _evaluates_after(session: _Session, epoch: int) -> bool:
    """Whether ``epoch`` ends with an evaluation: every ``eval_every``-th epoch and the last
    one of this invocation (so a stopped run's newest checkpoint has its test error)."""
    return epoch % session.config.eval_every == 0 or epoch == session.last_epoch


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
        "config": config.flat(),      # the flat form reports have always had
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
        # relative to the run directory (resolve_in_dir reads them): no machine path
        "files": {"workdir": ".", "metrics": "metrics.jsonl",
                  "checkpoints": path_in_dir(session.ckpt.directory, workdir),
                  "report": "report.json"},
    }
    if session.parallel.is_primary():
        write_json_atomic(workdir / "report.json", report)
    session.say(hq.summary())
    session.say("final: " + describe_test_errors(session.built.method,
                                                 report["test_error_float"],
                                                 report["test_error_quantized"])
                + f" ({config.describe()}); report {workdir / 'report.json'}")
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


def check_resumable(config: TrainConfig, dataset: ImageDataset) -> None:
    """Refuses, before any work, a resume of ``config.workdir`` that :func:`train` would refuse
    after loading and building: its newest checkpoint was trained with another config, or on
    other data. Does nothing when the workdir holds no checkpoint, or when the newest one's
    metadata does not read (:func:`train` then falls back to an older one and says so).

    Raises:
      ValueError: one line saying what differs.
    """
    workdir = Path(config.workdir).absolute()
    if not has_checkpoints(workdir):
        return
    ckpt = Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
    try:
        saved = ckpt.read_metadata(ckpt.latest_epoch())["config"]
    except Exception:  # noqa: BLE001 - damage is train's to handle (it tries older ones)
        return
    finally:
        ckpt.close()
    _check_resume_config(saved, config, workdir)
    check_run_data(workdir, dataset, say=lambda _: None)


def _check_resume_config(saved: dict, config: TrainConfig, workdir: Path) -> None:
    # As saved (flat, paths relative to the run): tuples are lists.
    current = json.loads(json.dumps(paths_for_run_dir(config, workdir).flat()))
    given = config.flat()
    for name in PATH_FIELDS:     # a checkpoint written before: the path as given then
        if saved.get(name) is not None and saved.get(name) == given[name]:
            saved = {**saved, name: current[name]}
    # A field added after the checkpoint was written had its default then.
    defaults = {name: f.default for name, f in flat_fields().items()}
    saved = {**{k: defaults[k] for k in current if k not in saved}, **saved}
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {v!r}" for k, v in current.items()
             if k not in RESUMABLE_CHANGES and saved.get(k) != v]
    if diffs:
        raise ValueError("cannot resume: the run was started with a different config ("
                         + "; ".join(diffs) + "). Use a new --workdir or the same flags.")
