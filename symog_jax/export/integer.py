"""Integer export of a finalized network: one self-describing ``.npz`` with a JSON manifest.

**What the file holds.** For every parameter leaf of the model, in tree order:

* a *quantized* leaf (a kernel that the method's ``finalize`` rounded): its integer codes in
  the smallest storage that holds the format's code range (see *packing*), and the step(s)
  ``s`` such that the rounded weight is ``float32(code) * float32(s)`` (``2**-frac_bits`` for
  the fixed-point methods ``float``/``ste``/``symog``, per tensor or per output channel; SYQ's
  learned float scales per layer, channel or kernel position; GDRQ's per-output-channel
  scales (its group scales, one per filter); any other method's ``fmt.step_for(ndim)``);
* any other leaf (biases, batch-norm ``scale``/``bias``, kernels a method keeps in float):
  float32, unchanged;

plus the batch-norm running statistics, the activation formats of the run (power-of-two
fixed-point inputs of every Conv/Dense but the first), the input normalisation, the method's
per-layer report, and -- when the model and formats allow integer-only inference (see
:mod:`symog_jax.export.integer_inference`) -- the integer program: per layer the weight codes,
the requantization multipliers/shifts/offsets that fold the weight step, the input and output
activation steps, the bias and batch norm, and the per-channel clip range.

A run of the ``float`` method is exported as what its ``finalize`` returns: the post-training
rounding of the float weights to the reported ``bits`` (codes + steps). A network in which
nothing is quantized (all formats ``None``) is exported as plain float32 parameters, the
manifest says ``"quantized_leaves": 0``, and there is no integer program.

**Packing** (``manifest["packing"]``, exact): codes are first offset to ``u = code -
code_min >= 0`` of the format. If ``code_max - code_min <= 3`` (2-bit symmetric / ternary,
binary, 2-bit unsigned), the ``u`` of the C-order flattened tensor are packed four per byte,
element ``i`` in bits ``2*(i % 4) .. 2*(i % 4) + 1`` of byte ``i // 4`` (first element in the
least significant bits), ``storage = "packed2"``; if ``code_max - code_min <= 15`` (3- and
4-bit formats), two per byte, element ``i`` in bits ``4*(i % 2) .. 4*(i % 2) + 3`` of byte
``i // 2`` (low nibble first), ``storage = "packed4"``. The last byte is padded with ``u = 0``.
Otherwise the codes themselves (no offset) are stored as the smallest of ``int8, uint8, int16,
uint16, int32`` holding ``[code_min, code_max]``. (Version 1 files, which stored 3-/4-bit codes
as int8, are still read.)

**Layout of the npz** (all keys are strings; ``P`` is a ``/``-joined parameter path):
``manifest.json`` (uint8 bytes of the UTF-8 JSON), ``params/P`` (float32 leaf), ``codes/P``
and ``step/P`` (quantized leaf), ``batch_stats/P``, ``input/lut`` and ``program/...``
(integer program). The manifest is also written beside the file as ``<out>.json``.

Reloading (:func:`load_integer`) gives back the finalized network exactly: the int32 codes and
the rounded float32 parameters equal ``finalize``'s (``-0.0`` and ``+0.0`` are not told apart:
a zero code comes back as ``+0.0``), the formats, and the report.
"""

from __future__ import annotations

import hashlib
import io
import math
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import jax
import numpy as np

from symog_jax.export import integer_inference as ii
from symog_jax.export.packing import (FORMAT_NAME, FORMAT_VERSION, PACKED_WIDTHS,  # noqa: F401
                                      PACKING_DOC, READABLE_VERSIONS, decode_codes, pack2,
                                      pack_codes, read_npz, storage_for, unpack2, unpack_codes)
from symog_jax.files import atomic_write_many, json_text
from symog_jax.numerics.formats import FixedPointFormat
from symog_jax.numerics.levels import from_record
from symog_jax.quantizers.activations import check_format_mapping
from symog_jax.quantizers.hard_quantize import HardQuantized, LayerReport
from symog_jax.quantizers.masks import path_str
from symog_jax.quantizers.scaled import ScaledFormat

__all__ = ["ExportedNetwork", "ScaledFormat", "export_integer", "load_integer",
           "decode_codes", "pack2", "pack_codes", "storage_for", "unpack2", "unpack_codes"]

# -- formats ------------------------------------------------------------------------------------

# Through the levels interface only: a format's record is its ``to_record()`` (with a "kind"),
# its step array is the file's ``step/P``; reading looks the kind up in the registry, and a
# kind this code does not know is read as codes times the stored step (ScaledFormat).


def _format_record(fmt) -> dict:
    return fmt.to_record()


def _format_from_record(rec: dict, step: np.ndarray):
    return from_record(rec, {"step": step}, unknown_as=ScaledFormat.kind)


# -- the exported network -----------------------------------------------------------------------

class ExportedNetwork(NamedTuple):
    """What :func:`load_integer` returns (and :func:`export_integer` writes).

    Attributes:
      hq: the :class:`~symog_jax.quantizers.hard_quantize.HardQuantized` network: rounded
        float32 params, int32 codes, formats and report, as the method's ``finalize`` returned
        them.
      batch_stats: batch-norm running statistics (``{}`` for models without BN), float32.
      act_formats: ``{layer path: FixedPointFormat}`` of the quantized layer inputs.
      model: ``{"name", "num_classes", "width", "widths", "image_shape"}`` (``widths``: channels
        per prunable decision of a thin, pruned network, else ``None``).
      input_mean, input_std: float32 ``(C,)``: the network sees ``(pixel / 255 - mean) / std``.
      manifest: the whole JSON manifest (a dict).
    """
    hq: HardQuantized
    batch_stats: Any
    act_formats: dict
    model: dict
    input_mean: np.ndarray
    input_std: np.ndarray
    manifest: dict


def _flat(tree) -> list[tuple[str, Any]]:
    return [(path_str(p), v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _nest(items: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for path, value in items:
        node = out
        names = path.split("/")
        for name in names[:-1]:
            node = node.setdefault(name, {})
        node[names[-1]] = value
    return out


def _json_float(v: float):
    return v if math.isfinite(v) else None


def export_integer(hq: HardQuantized, batch_stats: Any, act_formats: Mapping[str, Any],
                   model_name: str, out_path: str | Path, *, num_classes: int,
                   width: float = 1.0, widths=None, image_shape=None, input_mean=None,
                   input_std=None,
                   fine_frac_bits: int = 20, fine_bits: int = 31, mult_bits: int = 31,
                   extra: dict | None = None) -> dict:
    """Writes a finalized network as integer codes + manifest to ``out_path`` (``.npz``).

    Args:
      hq: a method's ``finalize`` output (params a nested dict of arrays).
      batch_stats: the run's batch statistics (``{}`` if none).
      act_formats: ``{path: FixedPointFormat}``, the run's activation formats (``{}``: float).
      model_name: registered model name (``"lenet5"``, ``"vgg7"``, ``"resnet20"``, ...).
      out_path: the ``.npz`` to write (parents are created); the manifest also goes to
        ``out_path`` with suffix ``.json``.
      num_classes, width, widths, image_shape: the model's construction
        (``create_model(model_name, num_classes, width=width, widths=widths)``; ``widths`` the
        channels per prunable decision of a pruned run, ``image_shape`` ``(H, W, C)``).
      input_mean, input_std: per-channel normalisation, ``(C,)`` (default 0 and 1).
      fine_frac_bits, fine_bits, mult_bits: the integer program's settings (see
        :func:`symog_jax.export.integer_inference.build_program`; the default fine step
        ``2**-20`` is the smallest measured one at which the integer inference reproduces the
        Flax model's codes, the reason is in that module's docstring).
      extra: more JSON-able entries for the manifest (e.g. the run's workdir and epoch).

    Returns:
      The manifest (a dict). ``manifest["file_bytes"]`` is the npz size (``"npz_sha256"`` its
      hash, which the loader checks against the file when the manifest is beside it) and
      ``manifest["float32_bytes"]`` the size of the parameters (+ batch statistics) in float32.

    Both files are written atomically: a failed export leaves the previous ``out_path`` and its
    manifest as they were.

    Raises:
      ValueError: fine-grid settings out of range (see
        :func:`~symog_jax.export.integer_inference.check_program_settings`); a quantized
        leaf's params are not ``code * step`` exactly (the format cannot
        be exported losslessly), bad formats, or non-finite parameters.

    Example:
      >>> import tempfile, os
      >>> hq = symog_jax.hard_quantize(params, opt_state)
      >>> d = tempfile.mkdtemp()
      >>> m = export_integer(hq, {}, {}, "mlp", os.path.join(d, "net.npz"), num_classes=4)
      >>> m["params"][1]["storage"], m["quantized_leaves"], m["integer_program"]
      ('packed2', 1, None)
      >>> net = load_integer(os.path.join(d, "net.npz"))
      >>> bool(np.array_equal(net.hq.codes["dense"]["kernel"], hq.codes["dense"]["kernel"]))
      True
    """
    act_formats = check_format_mapping(act_formats, "act_formats")
    # refused here, rather than writing a file without an integer program
    ii.check_program_settings(fine_frac_bits, fine_bits, mult_bits)
    out_path = Path(out_path)
    arrays: dict[str, np.ndarray] = {}
    params_flat = _flat(hq.params)
    try:
        codes_flat = jax.tree_util.tree_structure(hq.params).flatten_up_to(hq.codes)
        fmts_flat = jax.tree_util.tree_structure(hq.params).flatten_up_to(hq.formats)
    except (ValueError, TypeError) as e:
        raise ValueError(f"hq.codes/formats do not match hq.params: {e}") from None
    records, float_bytes, quantized = [], 0, 0
    for (path, leaf), code, fmt in zip(params_flat, codes_flat, fmts_flat):
        w = np.asarray(leaf)
        if w.dtype != np.float32:
            raise ValueError(f"parameter {path} is {w.dtype}; the export expects float32")
        if not np.all(np.isfinite(w)):
            raise ValueError(f"parameter {path} holds NaN or inf")
        float_bytes += 4 * w.size
        rec: dict = {"path": path, "shape": list(w.shape)}
        if fmt is None:
            arrays[f"params/{path}"] = w
            rec.update(quantized=False, key=f"params/{path}", dtype="float32")
        else:
            c = np.asarray(code)
            step = np.asarray(fmt.step_for(w.ndim), np.float32)
            lo, hi = int(fmt.code_min), int(fmt.code_max)
            if c.shape != w.shape or c.size and (c.min() < lo or c.max() > hi):
                raise ValueError(f"codes of {path} do not fit its format [{lo}, {hi}]")
            rebuilt = (c.astype(np.float32) * step).astype(np.float32)
            if not np.array_equal(rebuilt, w):
                raise ValueError(f"parameter {path}: the rounded weights are not code * step "
                                 f"exactly ({type(fmt).__name__}); cannot export losslessly")
            storage = storage_for(lo, hi)
            arrays[f"codes/{path}"] = (pack_codes(c, lo, PACKED_WIDTHS[storage])
                                       if storage in PACKED_WIDTHS else c.astype(storage))
            arrays[f"step/{path}"] = step
            quantized += 1
            rec.update(quantized=True, codes_key=f"codes/{path}", step_key=f"step/{path}",
                       step_shape=list(step.shape), storage=storage, code_min=lo, code_max=hi,
                       format=_format_record(fmt))
        records.append(rec)
    stats = []
    for path, leaf in _flat(batch_stats or {}):
        arr = np.asarray(leaf, np.float32)
        arrays[f"batch_stats/{path}"] = arr
        float_bytes += 4 * arr.size
        stats.append({"path": path, "shape": list(arr.shape), "key": f"batch_stats/{path}"})
    channels = int(image_shape[-1]) if image_shape is not None else None
    mean = np.zeros(channels or 1, np.float32) if input_mean is None else \
        np.asarray(input_mean, np.float32).reshape(-1)
    std = np.ones(channels or 1, np.float32) if input_std is None else \
        np.asarray(input_std, np.float32).reshape(-1)
    manifest = {
        "format": FORMAT_NAME, "version": FORMAT_VERSION,
        "model": {"name": str(model_name).lower(), "num_classes": int(num_classes),
                  "width": float(width),
                  "widths": None if widths is None else [int(v) for v in widths],
                  "image_shape": None if image_shape is None else [int(d) for d in image_shape]},
        "input": {"formula": "x = (pixel / 255 - mean) / std, per channel, in float32",
                  "mean": [float(v) for v in mean], "std": [float(v) for v in std]},
        "activations": [{"path": p, "bits": int(f.bits), "signed": bool(f.signed),
                         "symmetric": bool(f.symmetric),
                         "frac_bits": int(np.asarray(f.frac_bits)),
                         "code_min": int(f.code_min), "code_max": int(f.code_max)}
                        for p, f in act_formats.items()],
        "packing": PACKING_DOC,
        "weight_value": "float32(code) * float32(step), step broadcast against the kernel",
        "quantized_leaves": quantized,
        "params": records, "batch_stats": stats,
        "report": [{**r.as_dict(), "format": _format_record(r.format),
                    "max_abs_error_in_steps": _json_float(r.max_abs_error_in_steps)}
                   for r in hq.report],
        "integer_program": None, "integer_program_error": None,
        **(extra or {}),
    }
    if quantized == 0:
        manifest["integer_program_error"] = ("nothing is quantized: the file holds the float32 "
                                             "parameters only")
    else:
        net = ExportedNetwork(hq, batch_stats or {}, act_formats, manifest["model"], mean, std,
                              manifest)
        try:
            program = ii.build_program(net, fine_frac_bits=fine_frac_bits, fine_bits=fine_bits,
                                       mult_bits=mult_bits)
        except ValueError as e:
            manifest["integer_program_error"] = str(e)
        else:
            meta, prog_arrays = program.to_arrays()
            manifest["integer_program"] = meta
            arrays.update(prog_arrays)
    manifest["float32_bytes"] = float_bytes
    out_path.parent.mkdir(parents=True, exist_ok=True)
    arrays["manifest.json"] = np.frombuffer(json_text(manifest, indent=1).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    data = buf.getvalue()
    manifest["file_bytes"] = len(data)
    manifest["npz_sha256"] = hashlib.sha256(data).hexdigest()
    side = json_text(manifest, indent=1).encode()
    # Both files go to temporaries first; then the npz, then the manifest that vouches for it,
    # replace the old pair. A failure before the renames leaves the previous export intact; one
    # between them leaves a pair whose hash does not match, which the loader refuses.
    atomic_write_many([(out_path, lambda f: f.write(data)),
                       (out_path.with_suffix(".json"), lambda f: f.write(side))])
    return manifest


def load_integer(path: str | Path) -> ExportedNetwork:
    """Reads an export file back into the finalized network (see :class:`ExportedNetwork`).

    Returns:
      codes as int32 arrays, params as float32 arrays (quantized leaves rebuilt as
      ``float32(code) * step``), formats (each record's kind of levels, e.g.
      :class:`FixedPointFormat`, ``SYQFormat``, ``GDRQFormat``; a kind this code does not
      know as :class:`~symog_jax.quantizers.scaled.ScaledFormat`), the report as
      :class:`LayerReport` objects, batch statistics, activation formats and the input
      normalisation.

    Raises:
      FileNotFoundError / ValueError: a missing file, or one that is not an export (one line).
    """
    manifest, arrays = read_npz(path)
    try:
        return _network(manifest, arrays)
    except (KeyError, TypeError, IndexError, AttributeError) as e:
        raise ValueError(f"{path}: malformed export manifest ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None


def _network(manifest: dict, arrays: dict) -> ExportedNetwork:
    params, codes, formats, by_path = [], [], [], {}
    for rec in manifest["params"]:
        p, shape = rec["path"], tuple(rec["shape"])
        if not rec["quantized"]:
            params.append((p, arrays[rec["key"]]))
            codes.append((p, None))
            formats.append((p, None))
            continue
        raw = arrays[rec["codes_key"]]
        c = decode_codes(raw, rec["storage"], rec["code_min"], shape, rec["code_max"])
        step = arrays[rec["step_key"]]
        fmt = _format_from_record(rec["format"], step)
        by_path[p] = fmt
        params.append((p, (c.astype(np.float32) * step).astype(np.float32)))
        codes.append((p, c))
        formats.append((p, fmt))
    report = [LayerReport(path=r["path"], shape=tuple(r["shape"]), format=by_path[r["path"]],
                          near_level_fraction=r["near_level_fraction"],
                          sqnr_db=math.inf if r["sqnr_db"] is None else r["sqnr_db"],
                          max_abs_error_in_steps=(math.inf if r["max_abs_error_in_steps"] is None
                                                  else r["max_abs_error_in_steps"]))
              for r in manifest["report"]]
    hq = HardQuantized(_nest(params), _nest(codes), _nest(formats), report)
    stats = _nest([(s["path"], arrays[s["key"]]) for s in manifest["batch_stats"]])
    acts = {a["path"]: FixedPointFormat(a["bits"], a["frac_bits"], signed=a["signed"],
                                        symmetric=a["symmetric"])
            for a in manifest["activations"]}
    return ExportedNetwork(hq, stats, acts, manifest["model"],
                           np.asarray(manifest["input"]["mean"], np.float32),
                           np.asarray(manifest["input"]["std"], np.float32), manifest)
