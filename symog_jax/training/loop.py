"""The training loop: epochs, evaluation (float and hard-quantized), logs, checkpoints, report.

Data-parallel over every device (``jax.devices()``, all hosts) with
:class:`~symog_jax.training.sharding.DataParallel`: each global batch is split along the mesh
axis ``"data"``, the state is replicated, and the next batches are gathered and copied to the
devices in a background thread while the current step runs (:func:`~.sharding.prefetch`). On one
device this is the plain single-device loop, with the same numbers. With several hosts
(``distributed=True``), every host runs this loop on its own rows of each batch; process 0
writes ``config.json``, ``metrics.jsonl`` and ``report.json`` and holds the workdir lock, and
orbax coordinates the checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from symog_jax.data import ImageDataset, epoch_batches, load_dataset, normalize, random_crop_flip
from symog_jax.export.report import HardQuantized
from symog_jax.methods import Method, RunInfo, make_method
from symog_jax.models import count_params, create_model, init_variables
from symog_jax.quantizers.activations import (ActivationQuantConfig, activation_format_report,
                                              calibrate_activation_formats, quantize_activations,
                                              record_layer_inputs)
from symog_jax.training.batch_norm import recalibrate_batch_stats
from symog_jax.training.checkpoint import Checkpointer, WorkdirLock
from symog_jax.training.config import TrainConfig
from symog_jax.training.distill import load_teacher
from symog_jax.training.sharding import DataParallel, initialize_distributed, prefetch
from symog_jax.training.steps import TrainState, base_optimizer, make_eval_step, make_train_step

EVAL_BATCH = 500
#: A training loss above this (in nats: a wrong logit ahead by 10^4) or non-finite means the
#: run diverged; no healthy classifier gets there, and with clipped weights (SYMOG) a diverged
#: run can stay finite at ~1e36 forever.
DIVERGED_LOSS = 1e4
#: Training images in the forward pass that finds the layer order and calibrates activations.
CALIBRATION_BATCH = 256
# Fields that may differ between a run and its resumption.
_RESUMABLE_CHANGES = {"stop_after_epochs", "progress", "workdir", "data_dir", "data_source",
                      "allow_bundled", "distributed", "plots"}
#: Host batches gathered and copied to the devices ahead of the running step.
PREFETCH_BATCHES = 2


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` (and TensorBoard if installed)."""

    def __init__(self, workdir: Path):
        self.path = workdir / "metrics.jsonl"
        self._tb = None
        try:  # optional dependency
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(str(workdir / "tensorboard"))
        except ImportError:
            pass

    def write(self, record: dict) -> None:
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


def make_prepare(dataset: ImageDataset, augment: bool):
    """``prepare(rng, uint8_images, train) -> float32``: device-side augmentation and scaling."""
    mean = dataset.train_images.mean(axis=(0, 1, 2)) / 255.0
    std = dataset.train_images.std(axis=(0, 1, 2)) / 255.0 + 1e-6
    # Crop and flip suit natural images (CIFAR); digits (1 channel) are left alone.
    use_augment = augment and dataset.image_shape[-1] == 3

    def prepare(rng, images, train):
        if train and use_augment:
            images = random_crop_flip(rng, images, padding=4, flip=True)
        return normalize(images, mean, std)

    return prepare


def evaluate(eval_step, params, batch_stats, act_formats, images: np.ndarray,
             labels: np.ndarray, parallel: DataParallel | None = None) -> dict:
    """Loss and error over a whole split, padding the last batch (counted once).

    With ``parallel`` (and an ``eval_step`` made with it) each batch of
    :data:`EVAL_BATCH` rounded up to a multiple of the device count is split over the devices,
    each host feeding its own rows.
    """
    n = len(labels)
    batch = EVAL_BATCH if parallel is None else parallel.round_up(EVAL_BATCH)
    rows = slice(None) if parallel is None else parallel.local_rows(batch)
    if parallel is not None:
        params, batch_stats, act_formats = parallel.replicate((params, batch_stats, act_formats))
    loss_sum, correct = 0.0, 0
    for start in range(0, n, batch):
        x, y = images[start:start + batch], labels[start:start + batch]
        valid = np.ones(batch, bool)
        if len(y) < batch:
            pad = batch - len(y)
            valid[len(y):] = False
            x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
            y = np.concatenate([y, np.zeros(pad, y.dtype)])
        x, y, valid = x[rows], y[rows], valid[rows]
        if parallel is not None:
            x, y, valid = parallel.put_batch(batch, x, y, valid)
        ls, c = eval_step(params, batch_stats, act_formats, x, y, valid)
        loss_sum += float(ls)
        correct += int(c)
    return {"loss": loss_sum / n, "error": 1.0 - correct / n}


def finalize(method: Method, state: TrainState) -> HardQuantized:
    """The method's hard-quantized network (rounded params, codes, formats, report).

    Raises:
      AssertionError: the method's ``finalize`` broke the contract (other structure, shapes
        or dtypes than the model's parameters).
    """
    hq = method.finalize(state.trainable, state.opt_state)
    chex.assert_trees_all_equal_shapes_and_dtypes(hq.params, state.params)
    return hq


def evaluate_float_and_quantized(method: Method, state: TrainState, eval_step,
                                 dataset: ImageDataset, parallel: DataParallel | None = None
                                 ) -> tuple[dict, dict, HardQuantized]:
    """Test-split loss/error of the float weights and of the finalized (hard-quantized) ones.

    Both use the run's activation quantization: it is part of the trained network. The
    method's ``finalize`` runs eagerly on this host's copy of the (replicated) state.
    """
    float_eval = evaluate(eval_step, state.params, state.batch_stats, state.act_formats,
                          dataset.test_images, dataset.test_labels, parallel)
    hq = finalize(method, state if parallel is None else parallel.local_copy(state))
    quant_eval = evaluate(eval_step, hq.params, state.batch_stats, state.act_formats,
                          dataset.test_images, dataset.test_labels, parallel)
    return float_eval, quant_eval, hq


def recalibrated_batch_stats(model, prepare, params, batch_stats, act_formats,
                             images: np.ndarray, *, batches: int, batch_size: int,
                             seed: int = 0, augment: bool = True):
    """The batch-norm statistics of ``params``, re-estimated on ``batches`` random batches.

    A thin layer over :func:`~symog_jax.training.batch_norm.recalibrate_batch_stats` for this
    library's models: ``images`` uint8 ``(N, H, W, C)`` (the training split), batches of
    ``batch_size`` drawn without replacement (seeded), preprocessed by ``prepare`` as in
    training (``augment=True``: the crop/flip the statistics were collected with) and run with
    the run's activation formats. Runs on this host's first device.

    Raises:
      ValueError: fewer than ``batches * batch_size`` images, or ``batches < 1``.
    """
    if batches < 1 or batches * batch_size > len(images):
        raise ValueError(f"cannot draw {batches} batches of {batch_size} from {len(images)} "
                         "images (need 1 <= batches <= images // batch_size)")

    @jax.jit
    def forward_stats(params, stats, key, x):
        # params are an argument, not a closure: jit would bake them in as constants.
        with quantize_activations(act_formats):
            _, updates = model.apply({"params": params, "batch_stats": stats},
                                     prepare(key, x, augment), train=True,
                                     mutable=["batch_stats"])
        return updates["batch_stats"]

    def update_stats(stats, key_and_images):
        return forward_stats(params, stats, *key_and_images)

    order = np.random.default_rng(seed).permutation(len(images))
    keys = jax.random.split(jax.random.PRNGKey(seed), batches)
    chosen = ((keys[k], images[np.sort(order[k * batch_size:(k + 1) * batch_size])])
              for k in range(batches))
    return recalibrate_batch_stats(update_stats, batch_stats, chosen)


def probe_model(model, variables, prepare, images: np.ndarray, act: ActivationQuantConfig):
    """One forward pass on ``images``: the conv/dense layer order and the activation formats."""
    x = prepare(None, images, False)
    _, inputs = record_layer_inputs(lambda: model.apply(variables, x, train=False))
    order = tuple(dict.fromkeys(path for path, _ in inputs))
    return order, calibrate_activation_formats(inputs, act)


def training_split(config: TrainConfig, dataset: ImageDataset):
    """``(images, labels, steps_per_epoch)`` the run trains on (a seeded subset if asked)."""
    train_x, train_y = dataset.train_images, dataset.train_labels
    if config.max_train_examples is not None and config.max_train_examples < len(train_y):
        # A seeded random subset: files are often stored in class order.
        keep = np.sort(np.random.default_rng(config.seed).permutation(len(train_y))[
            :config.max_train_examples])
        train_x, train_y = train_x[keep], train_y[keep]
    steps_per_epoch = len(train_y) // config.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch size {config.batch_size} exceeds the {len(train_y)} training "
                         "examples")
    return train_x, train_y, steps_per_epoch


def load_run_config(workdir: str | Path) -> TrainConfig:
    """The :class:`TrainConfig` a run directory was trained with (its ``config.json``).

    Raises:
      FileNotFoundError: ``workdir`` has no ``config.json`` (not a run directory).
      ValueError: the file is not a valid config (the message names the problem).
    """
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {workdir} is not a run directory")
    return config_from_file(path)


def config_from_file(path: str | Path) -> TrainConfig:
    """A :class:`TrainConfig` from a JSON file (e.g. a run's ``config.json``).

    Raises:
      FileNotFoundError / ValueError: missing file, invalid JSON, unknown or bad fields.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"config file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a JSON object")
    try:
        return TrainConfig.from_dict(data)
    except (TypeError, ValueError) as e:
        raise ValueError(f"config file {path}: {e}") from None


def evaluate_run(workdir: str | Path, dataset: ImageDataset | None = None, *,
                 data_dir: str | None = None, data_source: str | None = None,
                 recalibrate_batches: int = 0, recalibrate_augment: bool = True) -> dict:
    """Float and hard-quantized test error of a run's newest intact checkpoint, no training.

    Writes ``<workdir>/eval.json`` and returns it (with the per-layer table under ``layers``).
    With ``recalibrate_batches=N`` it also reports ``test_error_quantized_recalibrated``: the
    hard-quantized network with batch-norm statistics re-estimated for its weights on ``N``
    training batches (:func:`recalibrated_batch_stats`, preprocessed as in training unless
    ``recalibrate_augment=False``).

    Raises:
      FileNotFoundError: no ``config.json`` or no (intact) checkpoint in ``workdir``.
      ValueError: ``recalibrate_batches`` for a model without batch norm, or more batches than
        the training split holds.
    """
    workdir = Path(workdir).absolute()
    config = load_run_config(workdir)
    if recalibrate_batches < 0:
        raise ValueError(f"recalibrate_batches must be >= 0, got {recalibrate_batches}")
    ckpt = Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
    has_checkpoint = ckpt.latest_epoch() is not None
    ckpt.close()
    if not has_checkpoint:   # before loading any data
        raise FileNotFoundError(f"no checkpoint in {ckpt.directory}: the run in {workdir} "
                                "has not finished an epoch")
    if dataset is None:
        dataset = load_dataset(config.dataset, source=data_source or config.data_source,
                               data_dir=data_dir if data_dir is not None else config.data_dir,
                               allow_bundled=config.allow_bundled)
    config, built, state, meta = restore_run(workdir, dataset)
    eval_step = make_eval_step(built.model, built.prepare, parallel=built.parallel,
                               precision=config.precision)
    float_eval, quant_eval, hq = evaluate_float_and_quantized(built.method, state, eval_step,
                                                              dataset, built.parallel)
    result = {"workdir": str(workdir), "epoch": meta["epoch"], "method": config.describe(),
              "dataset_source": dataset.source,
              "test_error_float": float_eval["error"],
              "test_error_quantized": quant_eval["error"],
              "layers": [r.as_dict() for r in hq.report],
              "activations": activation_format_report(jax.device_get(state.act_formats))}
    if recalibrate_batches:
        if not jax.tree_util.tree_leaves(state.batch_stats):
            raise ValueError(f"model {config.model} has no batch norm: nothing to recalibrate")
        train_x, _, _ = training_split(config, dataset)
        local = state if built.parallel is None else built.parallel.local_copy(state)
        stats = recalibrated_batch_stats(
            built.model, built.prepare, hq.params, local.batch_stats, local.act_formats,
            train_x, batches=recalibrate_batches, batch_size=config.batch_size,
            seed=config.seed, augment=recalibrate_augment)
        recal_eval = evaluate(eval_step, hq.params, stats, state.act_formats,
                              dataset.test_images, dataset.test_labels, built.parallel)
        result["test_error_quantized_recalibrated"] = recal_eval["error"]
        result["recalibration"] = {"batches": recalibrate_batches,
                                   "batch_size": config.batch_size,
                                   "augment": recalibrate_augment}
    if DataParallel.is_primary():
        (workdir / "eval.json").write_text(json.dumps(result, indent=2, allow_nan=False))
    say = print if DataParallel.is_primary() else (lambda *a, **k: None)
    say(hq.summary())
    say(f"{workdir.name}, epoch {meta['epoch']}: float error "
        f"{100 * float_eval['error']:.2f}%, quantized error {100 * quant_eval['error']:.2f}%"
        + (f" ({100 * result['test_error_quantized_recalibrated']:.2f}% with batch norm "
           f"recalibrated on {recalibrate_batches} batches)" if recalibrate_batches else "")
        + f" ({config.describe()}); written to {workdir / 'eval.json'}")
    return result


def _all_finite(tree) -> bool:
    return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree_util.tree_leaves(tree)
               if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.inexact))


def _diverged(config: TrainConfig, epoch: int, step: int, what: str) -> TrainingDiverged:
    return TrainingDiverged(
        f"training diverged in epoch {epoch} (step {step}): {what}. Likely causes: the learning "
        f"rate (--lr {config.lr} with {config.optimizer}) is too high, or the method's "
        f"strength/scales are; nothing after the last finished epoch was saved")


class BuiltRun(NamedTuple):
    """Everything :func:`build_run` makes for a run, before any step."""
    model: Any
    method: Method
    state: TrainState
    train_step: Callable
    prepare: Callable
    parallel: DataParallel | None = None


def build_run(config: TrainConfig, dataset: ImageDataset, train_images: np.ndarray,
              steps_per_epoch: int, parallel: DataParallel | None = None) -> BuiltRun:
    """Model, method, initial state and jitted train step of ``config`` (what ``train`` runs).

    One forward pass over the first :data:`CALIBRATION_BATCH` of ``train_images`` finds the
    conv/dense layer order and calibrates the activation formats. The state is replicated over
    ``parallel``'s mesh (default: all devices) and the train step (in ``config.precision``)
    shards its batch over it and donates the state it is given.
    """
    parallel = DataParallel() if parallel is None else parallel
    model = create_model(config.model, dataset.num_classes, width=config.width,
                         widths=config.widths)
    init_rng, data_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    variables = init_variables(model, init_rng, dataset.image_shape)
    if config.init_from is not None:
        variables = _variables_from_run(config.init_from, variables, dataset)
    params = variables["params"]
    prepare = make_prepare(dataset, config.augment)
    act = ActivationQuantConfig(bits=config.act_bits, range=config.act_range,
                                skip_last=config.act_float_last,
                                bits_per_layer=config.act_bits_per_layer,
                                input_bits=config.input_bits)
    layer_order, act_formats = probe_model(model, variables, prepare,
                                           train_images[:CALIBRATION_BATCH], act)
    run = RunInfo(steps_per_epoch=steps_per_epoch, epochs=config.epochs, layer_order=layer_order,
                  model=config.model, input_shape=tuple(dataset.image_shape), module=model)
    method = make_method(config.method, config.method_config, run)
    method_vars = method.init_variables(params)
    trainable = {"params": params, "method": method_vars}
    base = base_optimizer(config.optimizer, config.lr, run.total_steps, momentum=config.momentum,
                          weight_decay=config.weight_decay,
                          decay_mask=method.decay_mask(trainable))
    tx = method.transform(base, run)
    state = TrainState(step=jnp.zeros([], jnp.int32), params=params, method_vars=method_vars,
                       batch_stats=variables.get("batch_stats", {}),
                       opt_state=tx.init(trainable), act_formats=act_formats, rng=data_rng)
    teacher = None
    if config.distill_from is not None:
        teacher = load_teacher(config.distill_from, dataset, model, weight=config.distill_weight,
                               temperature=config.distill_temperature)
    step = make_train_step(model, tx, method, prepare, parallel=parallel,
                           precision=config.precision, donate=True, teacher=teacher)
    return BuiltRun(model, method, parallel.replicate(state), step, prepare, parallel)


def restore_run(workdir: str | Path, dataset: ImageDataset):
    """``(config, built, state, metadata)`` of a run directory's newest intact checkpoint.

    Raises:
      FileNotFoundError: no ``config.json`` or no (intact) checkpoint in ``workdir``.
    """
    workdir = Path(workdir).absolute()
    config = load_run_config(workdir)
    ckpt = Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
    try:
        if ckpt.latest_epoch() is None:
            raise FileNotFoundError(f"no checkpoint in {ckpt.directory}: the run in {workdir} "
                                    "has not finished an epoch")
        train_x, _, steps_per_epoch = training_split(config, dataset)
        # The teacher shapes no state: restoring needs neither it nor its run directory.
        built = build_run(config.replace(distill_from=None), dataset, train_x, steps_per_epoch)
        state, meta = ckpt.restore_latest_intact(built.state)
    finally:
        ckpt.close()
    return config, built, state, meta


def save_variables(path: str | Path, variables: dict) -> Path:
    """Writes model variables (``{"params": ..., "batch_stats": ...}``) as one msgpack file.

    ``TrainConfig(init_from=path)`` then starts a run from them, e.g. a thinned network
    (:func:`symog_jax.pruning.thin_variables`) built with ``TrainConfig.widths``. The file is
    written to a temporary name and renamed, so it is never half written.

    Example:
      >>> import tempfile, numpy as np
      >>> p = save_variables(Path(tempfile.mkdtemp()) / "v.msgpack",
      ...                    {"params": {"fc": {"kernel": np.ones((2, 3), np.float32)}}})
      >>> load_variables(p)["params"]["fc"]["kernel"].shape
      (2, 3)
    """
    from flax import serialization
    path = Path(path)
    tree = jax.tree_util.tree_map(np.asarray, jax.device_get(dict(variables)))
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_bytes(serialization.msgpack_serialize(tree))
    os.replace(tmp, path)
    return path


def load_variables(path: str | Path) -> dict:
    """The variables written by :func:`save_variables` (nested dicts of numpy arrays).

    Raises:
      FileNotFoundError: no such file. ValueError: not a variables file (one line).
    """
    from flax import serialization
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"variables file {path} does not exist")
    try:
        tree = serialization.msgpack_restore(path.read_bytes())
    except Exception as e:  # noqa: BLE001 - msgpack raises several types
        raise ValueError(f"{path} is not a variables file ({type(e).__name__})") from None
    if not isinstance(tree, dict) or "params" not in tree:
        raise ValueError(f"{path} is not a variables file (no 'params')")
    return tree


def _variables_from_run(run_dir: str, variables: dict, dataset: ImageDataset) -> dict:
    """``variables`` with the params (and batch stats) of ``run_dir``'s newest checkpoint, or
    of a variables file (:func:`save_variables`)."""
    if Path(run_dir).is_file():
        source = load_variables(run_dir)
    elif not (Path(run_dir) / "config.json").is_file():
        raise FileNotFoundError(f"init_from: {run_dir} is not a run directory (no config.json) "
                                "or a variables file")
    else:
        _, _, state, _ = restore_run(run_dir, dataset)
        source = {"params": state.params, "batch_stats": state.batch_stats}
    return fit_variables(variables, source, run_dir, "init_from")


def fit_variables(variables: dict, source: dict, where: str, option: str) -> dict:
    """``variables`` with each collection of ``source`` that it has, after checking that the
    shapes match (a one-line ValueError naming ``option`` and ``where`` if not)."""
    out = dict(variables)
    for name, tree in source.items():
        if name not in variables:
            continue
        want = jax.tree_util.tree_map(np.shape, variables[name])
        got = jax.tree_util.tree_map(np.shape, tree)
        if jax.tree_util.tree_structure(want) != jax.tree_util.tree_structure(got) or \
                jax.tree_util.tree_leaves(want) != jax.tree_util.tree_leaves(got):
            raise ValueError(f"{option}: the {name} of {where} do not fit this model (another "
                             "model, width(s) or data set)")
        out[name] = jax.tree_util.tree_map(jnp.asarray, tree)
    return out


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


class TrainingDiverged(ValueError):
    """The loss became NaN or inf; the run stopped (nothing non-finite was written)."""


class _DeferredInterrupt:
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
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; ``checkpointed_epoch`` is the last epoch saved (or ``None``)."""

    def __init__(self, checkpointed_epoch: int | None, workdir: Path):
        super().__init__(checkpointed_epoch)
        self.checkpointed_epoch = checkpointed_epoch
        self.workdir = workdir


def train(config: TrainConfig, dataset: ImageDataset | None = None,
          resume: bool = False) -> dict:
    """Trains ``config`` end to end; returns (and saves as ``report.json``) the final report.

    Each epoch: train, evaluate float and hard-quantized weights on the test split, append to
    ``metrics.jsonl``, checkpoint. ``resume=True`` continues from the newest intact checkpoint
    in ``config.workdir`` (a damaged newer one is reported and set aside) and ends with exactly
    the parameters of an uninterrupted run. The workdir is locked while the run uses it.

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


def _host_batches(train_x: np.ndarray, train_y: np.ndarray, batch_size: int, seed: int,
                  epoch: int, rows: slice):
    """This host's rows of each global batch of ``epoch``: ``(images, int32 labels)``, in the
    order of :func:`~symog_jax.data.epoch_batches` (all rows on one host)."""
    index = np.arange(len(train_y))
    for idx, _ in epoch_batches(index, index, batch_size, seed=seed, epoch=epoch):
        idx = idx[rows]
        yield train_x[idx], np.asarray(train_y[idx], np.int32)


def _train(config: TrainConfig, dataset: ImageDataset | None, resume: bool,
           workdir: Path) -> dict:
    t_start = time.time()
    parallel = DataParallel()
    parallel.check_batch_size(config.batch_size)
    primary = parallel.is_primary()
    say = print if primary else (lambda *a, **k: None)
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

    built = build_run(config, dataset, train_x, steps_per_epoch, parallel)
    model, method, state, train_step = built.model, built.method, built.state, built.train_step
    num_params = count_params(state.params)
    eval_step = make_eval_step(model, built.prepare, parallel=parallel,
                               precision=config.precision)
    tag = config.describe()
    log = MetricsLog(workdir) if primary else None
    rows = parallel.local_rows(config.batch_size)

    first_epoch = 1
    if resume and ckpt.latest_epoch() is not None:
        state, meta = ckpt.restore_latest_intact(
            state, check=lambda m: _check_resume_config(m["config"], config))
        first_epoch = meta["epoch"] + 1
        if log is not None:
            log.truncate_after(meta["epoch"])
        say(f"resuming {workdir} after epoch {meta['epoch']}")
    elif not resume and log is not None:
        log.truncate_after(0)
    interrupt = _DeferredInterrupt()
    if primary:
        (workdir / "config.json").write_text(config.to_json())
    shape = f"widths {','.join(map(str, config.widths))}" if config.widths is not None else \
        f"width {config.width}"
    say(f"{tag} {config.model} ({shape}, "
        f"{num_params:,} params) on {dataset.source}: {len(train_y)} train / "
        f"{len(dataset.test_labels)} test, {steps_per_epoch} steps/epoch, "
        f"{parallel.describe()}, {config.precision}")

    last_epoch = config.epochs
    if config.stop_after_epochs is not None:
        last_epoch = min(last_epoch, first_epoch + config.stop_after_epochs - 1)
    train_seconds = 0.0
    record: dict[str, Any] = {}
    try:
        for epoch in range(first_epoch, last_epoch + 1):
            t0 = time.time()
            batches = prefetch(
                _host_batches(train_x, train_y, config.batch_size, config.seed, epoch, rows),
                lambda b: parallel.put_batch(config.batch_size, *b), PREFETCH_BATCHES)
            bar = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch}/{config.epochs}",
                       disable=not (config.progress and primary), leave=False)
            sums = {"loss": 0.0, "accuracy": 0.0}
            pending = []
            with contextlib.closing(batches):  # stops the prefetch thread on errors
                for i, (x, y) in enumerate(bar):
                    interrupt.check()
                    state, metrics = train_step(state, x, y)
                    pending.append(metrics)
                    # Fetch rarely: keeps XLA busy.
                    if len(pending) == 20 or i == steps_per_epoch - 1:
                        first = i + 1 - len(pending)
                        for j, m in enumerate(jax.device_get(pending)):
                            if not float(m["loss"]) <= DIVERGED_LOSS:    # also NaN
                                raise _diverged(config, epoch,
                                                int(state.step) - len(pending) + j + 1,
                                                f"training loss {float(m['loss'])} at batch "
                                                f"{first + j + 1} of the epoch")
                            sums = {k: sums[k] + float(m[k]) for k in sums}
                        pending = []
                        bar.set_postfix(loss=f"{sums['loss'] / (i + 1):.4f}",
                                        acc=f"{sums['accuracy'] / (i + 1):.3f}")
            jax.block_until_ready(state.params)
            if not _all_finite(state.trainable):
                raise _diverged(config, epoch, int(state.step), "non-finite parameters")
            epoch_seconds = time.time() - t0
            train_seconds += epoch_seconds
            float_eval, quant_eval, hq = evaluate_float_and_quantized(method, state, eval_step,
                                                                      dataset, parallel)
            near = float(np.mean([r.near_level_fraction for r in hq.report]))
            record = {"epoch": epoch, "step": int(state.step),
                      "train_loss": sums["loss"] / steps_per_epoch,
                      "train_error": 1.0 - sums["accuracy"] / steps_per_epoch,
                      "test_loss": float_eval["loss"], "test_error_float": float_eval["error"],
                      "test_error_quantized": quant_eval["error"], "near_level_fraction": near,
                      "epoch_seconds": epoch_seconds,
                      "images_per_second": steps_per_epoch * config.batch_size / epoch_seconds}
            local = state if parallel is None else parallel.local_copy(state)
            extra = {k: float(v) for k, v in
                     method.epoch_metrics(local.trainable, local.opt_state).items()}
            record.update(extra)
            bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
            if bad:
                raise _diverged(config, epoch, int(state.step), f"non-finite {', '.join(bad)}")
            if log is not None:
                log.write(record)
            ckpt.save(epoch, state, {"epoch": epoch, "config": dataclasses.asdict(config)})
            say(f"epoch {epoch:3d}  loss {record['train_loss']:.4f}  test error float "
                f"{100 * record['test_error_float']:.2f}%  quantized "
                f"{100 * record['test_error_quantized']:.2f}%  near-level {100 * near:.1f}%  "
                + "".join(f"{k} {v:.4g}  " for k, v in extra.items())
                + f"({epoch_seconds:.1f}s)")

    except KeyboardInterrupt:
        saved = ckpt.latest_epoch()
        ckpt.close()
        raise TrainingInterrupted(saved, workdir) from None
    except Exception:
        ckpt.close()
        raise
    finally:
        interrupt.restore()
    ckpt.close()
    if last_epoch < config.epochs:
        say(f"stopped after epoch {last_epoch} of {config.epochs}; continue with --resume")
        return {"stopped_at_epoch": last_epoch, "workdir": str(workdir)}
    if not record:  # resumed a finished run: evaluate the final state
        float_eval, quant_eval, hq = evaluate_float_and_quantized(method, state, eval_step,
                                                                  dataset, parallel)
        record = {"test_error_float": float_eval["error"],
                  "test_error_quantized": quant_eval["error"]}
    quant_bits, float_bits = hq.weight_bits()
    report = {
        "config": dataclasses.asdict(config),
        "dataset_source": dataset.source,
        "num_params": num_params,
        "devices": parallel.num_devices,
        "test_error_float": record["test_error_float"],
        "test_error_quantized": record["test_error_quantized"],
        "weight_memory_bits": {"quantized": quant_bits, "float32": float_bits,
                               "ratio": float_bits / quant_bits},
        "layers": [r.as_dict() for r in hq.report],
        "activations": activation_format_report(jax.device_get(state.act_formats)),
        "train_seconds_this_invocation": train_seconds,
        "data_load_seconds": data_seconds,
        "total_seconds_this_invocation": time.time() - t_start,
        "files": {"workdir": str(workdir), "metrics": str(workdir / "metrics.jsonl"),
                  "checkpoints": str(ckpt.directory), "report": str(workdir / "report.json")},
    }
    if primary:
        (workdir / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False))
        if config.plots:
            from symog_jax.plots import save_run_figures   # matplotlib only when asked
            figures = save_run_figures(workdir, dataset=dataset)
            say("figures: " + ", ".join(str(p) for p in figures))
    say(hq.summary())
    say(f"final: float error {100 * report['test_error_float']:.2f}%, quantized "
        f"error {100 * report['test_error_quantized']:.2f}% ({tag}); "
        f"report {workdir / 'report.json'}")
    return report
