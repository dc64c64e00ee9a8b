"""Export of a run directory, and the check of its integer program against the Flax model.

:func:`export_run` reads a finished run (config, newest checkpoint, data set), finalizes it and
hands the data -- finalized params and formats, batch statistics, activation formats, input
normalisation -- to :func:`symog_jax.export.integer.export_integer`. :func:`check_export` runs
the integer-only reference inference (:mod:`symog_jax.export.integer_inference`) on the test
split and compares it with the fake-quantized Flax model (``python -m experiments.export
--check``).
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np

from symog_jax.data import normalize
from symog_jax.export import integer_inference as ii
from symog_jax.export.integer import export_integer
from symog_jax.quantizers.activations import fixed_point_formats, quantize_activations
from symog_jax.training.checkpoint import Checkpointer
from symog_jax.training.config import load_run_config
from symog_jax.training.evaluation import finalize
from symog_jax.training.run import (build_run, load_run_dataset, run_normalisation,
                                    training_split)

__all__ = ["check_export", "export_run", "flax_logits", "print_check"]


def export_run(workdir: str | Path, out_path: str | Path | None = None, *, dataset=None,
               data_dir: str | None = None, allow_other_data: bool = False, **kwargs):
    """Exports a finished training run's final checkpoint (see
    :func:`~symog_jax.export.integer.export_integer`).

    Args:
      workdir: the run directory (``config.json``, ``report.json``, ``checkpoints/``).
      out_path: the ``.npz`` to write (default ``<workdir>/export.npz``).
      dataset: the run's :class:`~symog_jax.data.ImageDataset` (loaded from the run's config,
        or ``data_dir``, when ``None``). The input normalisation is the one the run stored
        (``data.json``; recomputed from the training images only for runs made before it);
        data that is not what the run was trained on is refused.
      allow_other_data: use other data anyway (it says what differs), with the stored
        normalisation.
      kwargs: passed to :func:`~symog_jax.export.integer.export_integer` (``fine_frac_bits``,
        ...).

    Returns:
      ``(manifest, run)`` where ``run`` is a dict with ``config``, ``model``, ``prepare``,
      ``state``, ``hq``, ``dataset`` and ``act_formats`` (for checks against the Flax model).

    Raises:
      FileNotFoundError: not a run directory, no ``report.json`` (not finished), no checkpoint.
      ValueError: the final checkpoint is damaged, the data is not the run's (without
        ``allow_other_data``), or the export is impossible (one line).
    """
    workdir = Path(workdir).absolute()
    if not workdir.is_dir():
        raise FileNotFoundError(f"{workdir} is not a directory")
    config = load_run_config(workdir)
    if not (workdir / "report.json").is_file():
        raise FileNotFoundError(f"the run in {workdir} has not finished (no report.json); "
                                "export needs a finished run")
    config, dataset, built, state, epoch = _restore_final(workdir, config, dataset, data_dir,
                                                          allow_other_data)
    hq = finalize(built.method, state)
    act_formats = fixed_point_formats(jax.device_get(state.act_formats))
    mean, std = _input_normalisation(built.normalisation, dataset, built.prepare)
    out_path = Path(out_path) if out_path is not None else workdir / "export.npz"
    manifest = export_integer(
        hq, jax.device_get(state.batch_stats), act_formats, config.model, out_path,
        num_classes=dataset.num_classes, width=config.width, widths=config.widths,
        image_shape=dataset.image_shape,
        input_mean=mean, input_std=std,
        extra={"run": {"workdir": workdir.name, "epoch": epoch,
                       "method": config.describe(), "dataset": config.dataset}},
        **kwargs)
    run = {"config": config, "model": built.model, "prepare": built.prepare, "state": state,
           "hq": hq, "dataset": dataset, "act_formats": act_formats}
    return manifest, run


def _restore_final(workdir: Path, config, dataset, data_dir, allow_other_data: bool):
    """``(config, dataset, built, state, epoch)`` of the run's newest checkpoint (not an older
    intact one: the export is of the finished run)."""
    ckpt = Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
    try:
        epoch = ckpt.latest_epoch()
        if epoch is None:
            raise FileNotFoundError(f"no checkpoint in {ckpt.directory}: nothing to export")
        if dataset is None:
            dataset = load_run_dataset(config, data_dir)
        normalisation = run_normalisation(workdir, dataset, allow_other_data=allow_other_data)
        train_x, _, steps_per_epoch = training_split(config, dataset)
        # The checkpoint holds the state: neither the run's start nor its teacher is needed.
        built = build_run(config.replace(init_from=None, distill={"teacher": None}), dataset,
                          train_x, steps_per_epoch, normalisation=normalisation)
        try:
            state, meta = ckpt.restore(built.state, epoch)
        except Exception as e:  # noqa: BLE001 - orbax raises many types for damaged files
            raise ValueError(f"checkpoint {ckpt.path(epoch)} is damaged ({type(e).__name__}); "
                             "cannot export it") from None
    finally:
        ckpt.close()
    return config, dataset, built, state, int(meta["epoch"])


def _input_normalisation(normalisation, dataset, prepare) -> tuple[np.ndarray, np.ndarray]:
    """The run's ``(mean, std)`` (float32, per channel), checked against its ``prepare``."""
    mean = np.asarray(normalisation.mean).astype(np.float32)
    std = np.asarray(normalisation.std).astype(np.float32)
    probe = dataset.test_images[:8]
    if not np.array_equal(np.asarray(normalize(probe, mean, std)),
                          np.asarray(prepare(None, probe, False))):
        raise ValueError("the run's input normalisation is not (pixel/255 - mean)/std with the "
                         "training set's mean and std; cannot describe it in the export")
    return mean, std


def flax_logits(run: dict, images: np.ndarray, batch: int = 500, *,
                float64: bool = False) -> np.ndarray:
    """Logits of the fake-quantized Flax model (finalized params, the run's activation formats).

    Args:
      run: the dict :func:`export_run` returns.
      images: uint8 ``(N, H, W, C)``.
      batch: images per jitted call.
      float64: evaluate the same model in float64 (params, batch statistics and every
        activation cast up after the run's own float32 input normalisation). The integer
        program computes exact products and 31-bit requantization multipliers, so this is the
        arithmetic it implements; in float32 a code can flip where a value lies within float32
        rounding of a code boundary (batch norm's ``(y - mean) / sqrt(var + eps)`` alone
        rounds several times).

    Returns:
      ``(N, num_classes)``, float32 or float64.
    """
    model, prepare, hq = run["model"], run["prepare"], run["hq"]
    stats = run["state"].batch_stats
    variables = {"params": hq.params, **({"batch_stats": stats} if stats else {})}
    dtype = np.float64 if float64 else np.float32

    def apply(variables, x):
        x = prepare(None, x, False).astype(dtype)
        with quantize_activations(run["act_formats"]):
            return model.apply(variables, x, train=False)

    with jax.enable_x64(float64):
        variables = jax.tree.map(
            lambda a: np.asarray(a, dtype) if np.issubdtype(np.asarray(a).dtype, np.floating)
            else a, jax.device_get(variables))
        jitted = jax.jit(apply)
        return np.concatenate([np.asarray(jitted(variables, images[i:i + batch]))
                               for i in range(0, len(images), batch)])


def check_export(run: dict, out: str | Path, limit: int | None = None,
                 batch_size: int = 100) -> dict:
    """Integer inference of the exported file ``out`` vs the Flax model on the test split.

    The Flax model runs twice: in float64 (the arithmetic the integer program implements, so
    every class and code should agree) and in float32 (what training and evaluation run).

    Returns the summary: ``agreement`` (fraction of test images with the same class as the
    float64 Flax model), ``disagreeing``, ``max_abs_logit_diff``; the same against float32
    (``agreement_float32``, ``disagreeing_float32``, ``max_abs_logit_diff_float32``); both
    test errors, timings, and per layer the accumulator bits (``accumulators``: worst case from
    the formats and largest seen).
    """
    program = ii.load_program(out)
    ds = run["dataset"]
    images, labels = ds.test_images[:limit], ds.test_labels[:limit]
    t0 = time.time()
    ref32 = flax_logits(run, images)
    t1 = time.time()
    ref64 = flax_logits(run, images, float64=True)
    t2 = time.time()
    _, logits, max_acc = ii.run_integer(program, images, batch_size=batch_size)
    t3 = time.time()
    cls = logits.argmax(1)
    agree, agree32 = ref64.argmax(1) == cls, ref32.argmax(1) == cls
    diff = np.abs(ref64 - logits).max(1)
    return {"test_images": int(len(labels)),
            "agreement": float(agree.mean()), "disagreeing": int((~agree).sum()),
            "max_abs_logit_diff": float(diff.max()),
            "agreement_float32": float(agree32.mean()),
            "disagreeing_float32": int((~agree32).sum()),
            "max_abs_logit_diff_float32": float(np.abs(ref32 - logits).max()),
            "max_abs_logit": float(np.abs(ref64).max()),
            # images whose logits differ by more than the fine step explains (some activation
            # code differs there)
            "images_logit_diff_over_1e-4": int((diff > 1e-4).sum()),
            "error_flax": float(np.mean(ref32.argmax(1) != labels)),
            "error_integer": float(np.mean(cls != labels)),
            "seconds_flax": round(t1 - t0, 1), "seconds_flax_float64": round(t2 - t1, 1),
            "seconds_integer": round(t3 - t2, 1),
            "fine_frac_bits": program.fine_frac_bits,
            "accumulators": ii.accumulator_table(program, max_acc)}


def print_check(result: dict) -> None:
    """Prints :func:`check_export`'s accumulator table and its one-line verdict."""
    print(f"{'layer':<24} {'fan-in':>7} {'worst case':>14} {'bits':>5} {'max seen':>12} "
          f"{'bits':>5} {'acc':>6}")
    for r in result["accumulators"]:
        print(f"{r['layer']:<24} {r['fan_in']:>7} {r['worst_case']:>14} "
              f"{r['worst_case_bits']:>5} {r['max_seen']:>12} {r['max_seen_bits']:>5} "
              f"{r['acc_dtype']:>6}")
    print(f"integer vs Flax on {result['test_images']} test images: same class as Flax float64 "
          f"for {100 * result['agreement']:.2f}% ({result['disagreeing']} differ), max |logit "
          f"diff| {result['max_abs_logit_diff']:.3g} (|logits| up to "
          f"{result['max_abs_logit']:.3g}; "
          f"{result['images_logit_diff_over_1e-4']} images differ by more than 1e-4); as Flax "
          f"float32 for {100 * result['agreement_float32']:.2f}% "
          f"({result['disagreeing_float32']} differ, max |logit diff| "
          f"{result['max_abs_logit_diff_float32']:.3g}); "
          f"test error Flax {100 * result['error_flax']:.2f}%, integer "
          f"{100 * result['error_integer']:.2f}%; {result['seconds_integer']} s integer")
