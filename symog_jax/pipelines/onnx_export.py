"""ONNX export of a finished run, and its check in onnxruntime (``python -m experiments.export
--format onnx [--check]``).

:func:`write_onnx` turns the integer program of an exported ``.npz`` (written by
:func:`symog_jax.pipelines.export.export_run`) into ``model.onnx``
(:func:`symog_jax.export.onnx.program_to_onnx`), atomically. :func:`check_onnx` runs it in
onnxruntime on the run's test split and compares it with the numpy integer program and with
the fake-quantized Flax model.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from symog_jax.export import integer_inference as ii
from symog_jax.export.onnx import onnx_op_counts, program_to_onnx, save_onnx
from symog_jax.export.packing import read_npz
from symog_jax.pipelines.export import flax_logits

__all__ = ["check_onnx", "print_onnx_check", "run_onnx", "write_onnx"]


def write_onnx(npz_path: str | Path, out_path: str | Path, *, qlinear: bool | str = True) -> dict:
    """Writes the ONNX model of the integer program in ``npz_path`` to ``out_path``.

    Returns:
      ``{"path", "bytes", "ops", "qlinear_layers", "inexact_channels"}``: ``ops``
      ``{op_type: count}``; ``qlinear_layers`` how many layers run on ``QLinearConv``;
      ``inexact_channels`` ``{layer: n}`` for the layers where ``n > 0`` output channels have
      no ``QLinearConv`` requantization proven equal to the program's (their codes can differ
      near a rounding boundary; :mod:`symog_jax.export.qlinear_fit`); ``integer_kernel_channels``
      ``{layer: n}``: with ``qlinear="exact"``, layers whose ``n`` channels without an exact fit
      run on ``ConvInteger`` beside the others' ``QLinearConv``.

    Raises:
      ValueError (one line): the file has no integer program, or the program cannot be
        expressed with 8-bit activation codes (see :mod:`symog_jax.export.onnx`).
    """
    manifest, _ = read_npz(npz_path)
    shape = (manifest.get("model") or {}).get("image_shape")
    if not shape:
        raise ValueError(f"{npz_path} does not record the image shape; export the run again")
    model = program_to_onnx(ii.load_program(npz_path), shape, qlinear=qlinear)
    size = save_onnx(model, out_path)
    props = {p.key: p.value for p in model.metadata_props}
    inexact = json.loads(props.get("qlinear_inexact_channels", "{}"))
    split = json.loads(props.get("integer_kernel_channels", "{}"))
    return {"path": str(out_path), "bytes": int(size), "ops": onnx_op_counts(model),
            "qlinear_layers": len(inexact),
            "inexact_channels": {k: v for k, v in inexact.items() if v},
            "integer_kernel_channels": split}


def run_onnx(path: str | Path, images: np.ndarray, batch_size: int = 100):
    """``(logit_codes, logits)`` of an exported ONNX model in onnxruntime (CPU)."""
    import onnxruntime as ort     # optional dependency (the ``onnx`` extra)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = [sess.run(["logit_codes", "logits"], {"images": images[i:i + batch_size]})
            for i in range(0, len(images), batch_size)]
    return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


def check_onnx(run: dict, npz_path: str | Path, onnx_path: str | Path,
               limit: int | None = None, batch_size: int = 100) -> dict:
    """The ONNX model in onnxruntime vs the numpy integer program and vs Flax, on the test split.

    Args:
      run: the dict :func:`symog_jax.pipelines.export.export_run` returns.
      npz_path, onnx_path: the integer export and the ONNX model written from it.
      limit: check only the first ``limit`` test images.

    Returns:
      ``test_images``; vs the numpy program: ``agreement_program`` (same class),
      ``codes_differing`` (logit codes), ``images_codes_differing``,
      ``max_abs_logit_diff_program``; vs Flax: ``agreement_flax``,
      ``max_abs_logit_diff_flax``; test errors of all three; seconds of each.
    """
    ds = run["dataset"]
    images, labels = ds.test_images[:limit], ds.test_labels[:limit]
    t0 = time.time()
    codes, logits = run_onnx(onnx_path, images, batch_size)
    t1 = time.time()
    ref_codes, ref_logits, _ = ii.run_integer(ii.load_program(npz_path), images,
                                              batch_size=batch_size)
    t2 = time.time()
    flax = flax_logits(run, images)
    t3 = time.time()
    cls, cls_ref, cls_flax = logits.argmax(1), ref_codes.argmax(1), flax.argmax(1)
    return {"test_images": int(len(labels)),
            "agreement_program": float(np.mean(cls == cls_ref)),
            "classes_differing_program": int(np.sum(cls != cls_ref)),
            "codes_differing": int(np.sum(codes != ref_codes)),
            "images_codes_differing": int(np.any(codes != ref_codes, axis=1).sum()),
            "max_abs_logit_diff_program": float(np.abs(logits - ref_logits).max(initial=0)),
            "agreement_flax": float(np.mean(cls == cls_flax)),
            "classes_differing_flax": int(np.sum(cls != cls_flax)),
            "max_abs_logit_diff_flax": float(np.abs(logits - flax).max(initial=0)),
            "error_onnx": float(np.mean(cls != labels)),
            "error_program": float(np.mean(cls_ref != labels)),
            "error_flax": float(np.mean(cls_flax != labels)),
            "seconds_onnx": round(t1 - t0, 2), "seconds_program": round(t2 - t1, 2),
            "seconds_flax": round(t3 - t2, 2)}


def print_onnx_check(result: dict) -> None:
    """Prints :func:`check_onnx`'s summary in two lines."""
    r = result
    print(f"onnxruntime vs numpy integer program on {r['test_images']} test images: same class "
          f"{100 * r['agreement_program']:.2f}% ({r['classes_differing_program']} differ), "
          f"{r['codes_differing']} logit codes differ ({r['images_codes_differing']} images), "
          f"max |logit diff| {r['max_abs_logit_diff_program']:.3g}")
    print(f"onnxruntime vs Flax: same class {100 * r['agreement_flax']:.2f}% "
          f"({r['classes_differing_flax']} differ), max |logit diff| "
          f"{r['max_abs_logit_diff_flax']:.3g}; test error onnx {100 * r['error_onnx']:.2f}%, "
          f"program {100 * r['error_program']:.2f}%, Flax {100 * r['error_flax']:.2f}%; "
          f"{r['seconds_onnx']} s onnxruntime, {r['seconds_program']} s numpy")
