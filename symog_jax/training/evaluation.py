"""Evaluating a run: test loss/error of float and hard-quantized weights, batch-norm recalibration.

:func:`evaluate` runs an eval step over a whole split; :func:`evaluate_float_and_quantized` does
it for the float weights and for the method's finalized (hard-quantized) ones, as the training
loop does after every epoch; :func:`evaluate_run` does it for a run directory's newest intact
checkpoint without training and writes ``eval.json``, and can save the run with its batch norm
re-estimated as a new run directory (the network to export).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import chex
import jax
import numpy as np

from symog_jax.data import ImageDataset
from symog_jax.files import path_in_dir
from symog_jax.quantizers.hard_quantize import HardQuantized
from symog_jax.methods import Method
from symog_jax.quantizers.activations import activation_format_report, quantize_activations
from symog_jax.training.batch_norm import recalibrate_batch_stats
from symog_jax.training.checkpoint import Checkpointer
from symog_jax.training.config import load_run_config
from symog_jax.training.derived_run import check_new_run_dir, write_derived_run
from symog_jax.training.run_record import write_json_atomic
from symog_jax.training.run import load_run_dataset, restore_run, training_split
from symog_jax.training.sharding import DataParallel
from symog_jax.training.steps import TrainState, make_eval_step

#: Test images per eval step (rounded up to a multiple of the device count when data-parallel).
EVAL_BATCH = 500


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


def trains_latent_weights(method: Method) -> bool:
    """Whether the training forward pass sees the float (latent) weights themselves.

    Then the latent weights' test error means something (float training, SYMOG as published
    with ``forward="float"``); for methods that train through their quantizer (STE, LSQ, ...)
    the latent weights are never run as a network and their error is noise.
    """
    return method.runs_latent_weights()


def describe_test_errors(method: Method, float_error: float, quantized_error: float) -> str:
    """The test errors as a summary line says them: the deployed network's always, the latent
    (float) weights' only where :func:`trains_latent_weights`.

    Example:
      >>> from symog_jax.methods import make_method
      >>> describe_test_errors(make_method("float", {"bits": 2}), 0.011, 0.052)
      'test error 1.10% (float weights; 5.20% rounded after training)'
    """
    if not method.trains_quantized:
        return (f"test error {100 * float_error:.2f}% (float weights; "
                f"{100 * quantized_error:.2f}% rounded after training)")
    text = f"test error {100 * quantized_error:.2f}% (deployed: quantized weights)"
    if trains_latent_weights(method):
        text += f", latent (float) weights {100 * float_error:.2f}%"
    return text


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


def evaluate_run(workdir: str | Path, dataset: ImageDataset | None = None, *,
                 data_dir: str | None = None, data_source: str | None = None,
                 recalibrate_batches: int = 0, recalibrate_augment: bool = True,
                 allow_other_data: bool = False,
                 save_recalibrated: str | Path | None = None) -> dict:
    """Float and hard-quantized test error of a run's newest intact checkpoint, no training.

    Writes ``<workdir>/eval.json`` and returns it (with the per-layer table under ``layers``).
    With ``recalibrate_batches=N`` it also reports ``test_error_quantized_recalibrated``: the
    hard-quantized network with batch-norm statistics re-estimated for its weights on ``N``
    training batches (:func:`recalibrated_batch_stats`, preprocessed as in training unless
    ``recalibrate_augment=False``). ``save_recalibrated=DIR`` (needs ``recalibrate_batches``)
    also writes that network as a new run directory ``DIR``
    (:func:`~symog_jax.training.derived_run.write_derived_run`: the same checkpoint with the
    re-estimated statistics, its ``report.json`` giving the errors after recalibration and,
    under ``recalibration``, where it came from and the errors before), so that
    ``experiments.export`` deploys the recalibrated network; the source run is not changed.

    The run is evaluated with the input normalisation it stored (``data.json``); data that is
    not what it was trained on is refused unless ``allow_other_data`` (then it says what
    differs and goes on).

    Raises:
      FileNotFoundError: no ``config.json`` or no (intact) checkpoint in ``workdir``.
      ValueError: ``recalibrate_batches`` for a model without batch norm, or more batches than
        the training split holds; other data than the run's (without ``allow_other_data``);
        ``save_recalibrated`` without ``recalibrate_batches``, or naming a directory that is
        not new or empty.
    """
    given, workdir = workdir, Path(workdir).absolute()
    config = load_run_config(workdir)
    if recalibrate_batches < 0:
        raise ValueError(f"recalibrate_batches must be >= 0, got {recalibrate_batches}")
    if save_recalibrated is not None:
        if not recalibrate_batches:
            raise ValueError("save_recalibrated needs recalibrate_batches >= 1 (the batches "
                             "to re-estimate batch norm on)")
        check_new_run_dir(save_recalibrated, workdir)
        if jax.process_count() > 1:
            raise ValueError("save_recalibrated runs in one process: evaluate the run without "
                             "--distributed to save it")
    ckpt = Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
    has_checkpoint = ckpt.latest_epoch() is not None
    ckpt.close()
    if not has_checkpoint:   # before loading any data
        raise FileNotFoundError(f"no checkpoint in {ckpt.directory}: the run in {workdir} "
                                "has not finished an epoch")
    if dataset is None:
        dataset = load_run_dataset(config, data_dir, data_source)
    config, built, state, meta = restore_run(workdir, dataset, allow_other_data=allow_other_data)
    eval_step = make_eval_step(built.model, built.prepare, parallel=built.parallel,
                               precision=config.precision)
    float_eval, quant_eval, hq = evaluate_float_and_quantized(built.method, state, eval_step,
                                                              dataset, built.parallel)
    result = {"workdir": path_in_dir(given, workdir), "epoch": meta["epoch"],
              "method": config.describe(),
              "dataset_source": dataset.source,
              "test_error_float": float_eval["error"],
              "test_error_quantized": quant_eval["error"],
              "layers": [r.as_dict() for r in hq.report],
              "activations": activation_format_report(jax.device_get(state.act_formats))}
    if recalibrate_batches:
        fields, stats = _recalibrated_error(config, built, state, hq, eval_step, dataset,
                                            recalibrate_batches, recalibrate_augment)
        result.update(fields)
        if save_recalibrated is not None:
            # relative to this run, as the saved run names its source: no machine path
            result["saved_recalibrated"] = os.path.relpath(Path(save_recalibrated).absolute(),
                                                           workdir)
            _save_recalibrated(save_recalibrated, workdir, config, built, state, stats, meta,
                               eval_step, dataset, result)
    if DataParallel.is_primary():
        write_json_atomic(workdir / "eval.json", result)
    say = print if DataParallel.is_primary() else (lambda *a, **k: None)
    say(hq.summary())
    say(f"{workdir.name}, epoch {meta['epoch']}: "
        + describe_test_errors(built.method, float_eval["error"], quant_eval["error"])
        + (f" ({100 * result['test_error_quantized_recalibrated']:.2f}% with batch norm "
           f"recalibrated on {recalibrate_batches} batches)" if recalibrate_batches else "")
        + f" ({config.describe()}); written to {workdir / 'eval.json'}"
        + (f"; recalibrated run saved to {save_recalibrated}" if save_recalibrated else ""))
    return result


def _recalibrated_error(config, built, state, hq: HardQuantized, eval_step,
                        dataset: ImageDataset, batches: int, augment: bool) -> dict:
    """``evaluate_run``'s fields for the hard-quantized network with batch-norm statistics
    re-estimated on ``batches`` training batches."""
    if not jax.tree_util.tree_leaves(state.batch_stats):
        raise ValueError(f"model {config.model} has no batch norm: nothing to recalibrate")
    train_x, _, _ = training_split(config, dataset)
    local = state if built.parallel is None else built.parallel.local_copy(state)
    stats = recalibrated_batch_stats(
        built.model, built.prepare, hq.params, local.batch_stats, local.act_formats,
        train_x, batches=batches, batch_size=config.batch_size,
        seed=config.seed, augment=augment)
    recal_eval = evaluate(eval_step, hq.params, stats, state.act_formats,
                          dataset.test_images, dataset.test_labels, built.parallel)
    return ({"test_error_quantized_recalibrated": recal_eval["error"],
             "recalibration": {"batches": batches, "batch_size": config.batch_size,
                               "augment": augment}}, stats)


def _save_recalibrated(out, workdir: Path, config, built, state: TrainState, stats, meta: dict,
                       eval_step, dataset: ImageDataset, result: dict) -> None:
    """Writes the run with batch-norm statistics ``stats`` as the new run directory ``out``.

    Its ``report.json`` is the source's with the test errors of the recalibrated network (the
    float weights are evaluated with the new statistics too) and a ``recalibration`` record;
    a source without ``report.json`` (unfinished) gives a derived run without one.
    """
    local = state if built.parallel is None else built.parallel.local_copy(state)
    derived = local.replace(batch_stats=stats)
    float_eval = evaluate(eval_step, derived.params, stats, derived.act_formats,
                          dataset.test_images, dataset.test_labels, built.parallel)
    record = {**result["recalibration"], "seed": config.seed,
              "source": os.path.relpath(workdir, Path(out).absolute()),
              "epoch": meta["epoch"],
              "test_error_float_before": result["test_error_float"],
              "test_error_quantized_before": result["test_error_quantized"]}
    report = None
    if (workdir / "report.json").is_file():
        report = {**json.loads((workdir / "report.json").read_text()),
                  "test_error_float": float_eval["error"],
                  "test_error_quantized": result["test_error_quantized_recalibrated"],
                  "recalibration": record}
    if DataParallel.is_primary():
        write_derived_run(workdir, out, config, derived,
                          {"epoch": meta["epoch"], "recalibration": record}, report)
