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

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import jax
import numpy as np

from symog_jax.export.report import HardQuantized, LayerReport
from symog_jax.numerics.formats import FixedPointFormat
from symog_jax.quantizers.activations import check_format_mapping
from symog_jax.quantizers.masks import path_str

__all__ = ["ExportedNetwork", "ScaledFormat", "export_integer", "load_integer",
           "decode_codes", "pack2", "pack_codes", "storage_for", "unpack2", "unpack_codes"]

FORMAT_NAME = "symog_jax-integer-export"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
PACKING_DOC = ("u = code - code_min; storage 'packed2' (when code_max - code_min <= 3): u of the "
               "C-order flattened tensor, 4 per byte, element i in bits 2*(i%4)..2*(i%4)+1 of "
               "byte i//4 (first element least significant); storage 'packed4' (when code_max - "
               "code_min <= 15): 2 per byte, element i in bits 4*(i%2)..4*(i%2)+3 of byte i//2 "
               "(low nibble first); last byte padded with u=0; otherwise the codes as the "
               "smallest of int8, uint8, int16, uint16, int32 holding [code_min, code_max]")
# storage name -> bits per packed code
PACKED_WIDTHS = {"packed2": 2, "packed4": 4}
_INT_DTYPES = (np.int8, np.uint8, np.int16, np.uint16, np.int32)


# -- packing ------------------------------------------------------------------------------------

def storage_for(code_min: int, code_max: int) -> str:
    """How codes in ``[code_min, code_max]`` are stored: ``'packed2'``, ``'packed4'`` or a numpy
    dtype name.

    Example:
      >>> storage_for(-1, 1), storage_for(0, 15), storage_for(-7, 7), storage_for(-300, 300)
      ('packed2', 'packed4', 'packed4', 'int16')
      >>> storage_for(-15, 15)
      'int8'
    """
    code_min, code_max = int(code_min), int(code_max)
    if code_max < code_min:
        raise ValueError(f"code range [{code_min}, {code_max}] is empty")
    for name, width in PACKED_WIDTHS.items():
        if code_max - code_min < 2 ** width:
            return name
    for dt in _INT_DTYPES:
        info = np.iinfo(dt)
        if info.min <= code_min and code_max <= info.max:
            return np.dtype(dt).name
    raise ValueError(f"codes in [{code_min}, {code_max}] do not fit in int32")


def pack_codes(codes: np.ndarray, code_min: int, width: int) -> np.ndarray:
    """Packs codes with ``0 <= code - code_min < 2**width`` into bytes, ``8 // width`` per byte.

    Element ``i`` of the C-order flattened array occupies bits ``width * (i % n) ..
    width * (i % n) + width - 1`` of byte ``i // n`` (``n = 8 // width``; first element in the
    least significant bits); the last byte is padded with ``u = 0``.

    Args:
      codes: integer array, any shape.
      code_min: the format's smallest code (the offset).
      width: bits per code, 2 or 4.

    Returns:
      uint8 array of shape ``(ceil(codes.size / n),)``.

    Example:
      >>> pack_codes(np.array([-7, 7, 0]), -7, 4).tolist()   # u = 0, 14 | 7
      [224, 7]
    """
    if width not in (2, 4):
        raise ValueError(f"pack_codes: width must be 2 or 4, got {width!r}")
    n = 8 // width
    u = np.asarray(codes).astype(np.int64).ravel() - int(code_min)
    if u.size and (u.min() < 0 or u.max() >= 2 ** width):
        raise ValueError(f"pack{width}: codes must lie in [{code_min}, "
                         f"{code_min + 2 ** width - 1}], got [{u.min() + code_min}, "
                         f"{u.max() + code_min}]")
    u = np.concatenate([u, np.zeros((-u.size) % n, np.int64)]).reshape(-1, n)
    return (u << (width * np.arange(n))).sum(axis=1).astype(np.uint8)


def unpack_codes(packed: np.ndarray, code_min: int, shape, width: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: int32 codes of ``shape``.

    Example:
      >>> unpack_codes(np.array([224, 7], np.uint8), -7, (3,), 4).tolist()
      [-7, 7, 0]
    """
    if width not in (2, 4):
        raise ValueError(f"unpack_codes: width must be 2 or 4, got {width!r}")
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 1:
        raise ValueError(f"unpack{width}: expected a 1-D uint8 array, got {packed.dtype} "
                         f"{packed.shape}")
    n_per = 8 // width
    n = int(np.prod(shape, dtype=np.int64))
    if packed.size != -(-n // n_per):
        raise ValueError(f"unpack{width}: {packed.size} bytes cannot hold {n} {width}-bit codes")
    b = packed.astype(np.int32)[:, None] >> (width * np.arange(n_per, dtype=np.int32))
    return ((b & (2 ** width - 1)).ravel()[:n] + int(code_min)).astype(np.int32).reshape(shape)


def pack2(codes: np.ndarray, code_min: int) -> np.ndarray:
    """:func:`pack_codes` with 2-bit fields (four codes per byte).

    Example:
      >>> pack2(np.array([-1, 0, 1, 1, -1]), -1).tolist()   # u = 0,1,2,2 | 0
      [164, 0]
    """
    return pack_codes(codes, code_min, 2)


def unpack2(packed: np.ndarray, code_min: int, shape) -> np.ndarray:
    """Inverse of :func:`pack2`: int32 codes of ``shape``.

    Example:
      >>> unpack2(np.array([164, 0], np.uint8), -1, (5,)).tolist()
      [-1, 0, 1, 1, -1]
    """
    return unpack_codes(packed, code_min, shape, 2)


def decode_codes(raw: np.ndarray, storage: str, code_min: int, shape) -> np.ndarray:
    """Stored codes (packed or plain, as :func:`storage_for` chose) -> int32 array of ``shape``.

    Example:
      >>> decode_codes(np.array([224, 7], np.uint8), "packed4", -7, (3,)).tolist()
      [-7, 7, 0]
    """
    if storage in PACKED_WIDTHS:
        return unpack_codes(raw, code_min, tuple(shape), PACKED_WIDTHS[storage])
    return np.asarray(raw).astype(np.int32).reshape(tuple(shape))


# -- formats ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class ScaledFormat:
    """A reloaded format of a method other than the fixed-point ones, SYQ and GDRQ.

    Attributes:
      bits, code_min, code_max: the code range.
      scale: float32 array broadcastable to the kernel (``weight = code * scale``).
      info: the format's own ``as_dict()`` from the manifest.
    """
    bits: int
    code_min: int
    code_max: int
    scale: np.ndarray
    info: dict

    def step_for(self, x_ndim: int, dtype=np.float32):
        """The scale, broadcastable against the kernel."""
        return np.asarray(self.scale, dtype)

    def as_dict(self) -> dict:
        return dict(self.info)

    @property
    def overhead_bits(self) -> int:
        return 32 * int(self.scale.size)

    def label(self) -> str:
        return f"{self.info.get('kind', 'scale')}x{self.scale.size}"


def _format_record(fmt) -> dict:
    if isinstance(fmt, FixedPointFormat):
        fb = fmt.frac_bits
        return {"kind": "fixed_point", "bits": fmt.bits,
                "frac_bits": list(fb) if isinstance(fb, tuple) else int(fb),
                "signed": fmt.signed, "symmetric": fmt.symmetric,
                "channel_axis": fmt.channel_axis}
    rec = dict(fmt.as_dict())
    rec.setdefault("bits", int(fmt.bits))
    rec.setdefault("code_min", int(fmt.code_min))
    rec.setdefault("code_max", int(fmt.code_max))
    return rec


def _format_from_record(rec: dict, step: np.ndarray):
    kind = rec.get("kind")
    if kind == "fixed_point":
        return FixedPointFormat(rec["bits"], rec["frac_bits"], signed=rec["signed"],
                                symmetric=rec["symmetric"], channel_axis=rec["channel_axis"])
    if kind == "syq":
        from symog_jax.methods.syq import SYQFormat
        return SYQFormat(int(rec["bits"]), np.asarray(step, np.float32),
                         float(rec["threshold"]), rec["granularity"])
    if kind == "gdrq":
        from symog_jax.methods.gdrq import GDRQFormat
        return GDRQFormat(int(rec["bits"]), np.asarray(step, np.float32).reshape(-1),
                          np.asarray(rec["group_of"], np.int64), int(rec["groups"]),
                          rec["grouping"], np.asarray(rec["clip"], np.float32))
    return ScaledFormat(int(rec["bits"]), int(rec["code_min"]), int(rec["code_max"]),
                        np.asarray(step, np.float32), rec)


# -- the exported network -----------------------------------------------------------------------

class ExportedNetwork(NamedTuple):
    """What :func:`load_integer` returns (and :func:`export_integer` writes).

    Attributes:
      hq: the :class:`~symog_jax.export.report.HardQuantized` network: rounded float32 params,
        int32 codes, formats and report, as the method's ``finalize`` returned them.
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
      The manifest (a dict). ``manifest["file_bytes"]`` is the npz size and
      ``manifest["float32_bytes"]`` the size of the parameters (+ batch statistics) in float32.

    Raises:
      ValueError: a quantized leaf's params are not ``code * step`` exactly (the format cannot
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
        from symog_jax.export import integer_inference as ii
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
    text = json.dumps(manifest, indent=1, allow_nan=False)
    arrays["manifest.json"] = np.frombuffer(text.encode(), np.uint8)
    with open(out_path, "wb") as f:
        np.savez_compressed(f, **arrays)
    manifest["file_bytes"] = out_path.stat().st_size
    out_path.with_suffix(".json").write_text(json.dumps(manifest, indent=1, allow_nan=False))
    return manifest


def read_npz(path: str | Path) -> tuple[dict, dict]:
    """``(manifest, arrays)`` of an export file; one-line ``ValueError`` if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        manifest = json.loads(arrays.pop("manifest.json").tobytes().decode())
    except (OSError, ValueError, KeyError, UnicodeDecodeError, EOFError) as e:
        raise ValueError(f"{path} is not a symog_jax integer export ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if manifest.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is not a symog_jax integer export (format "
                         f"{manifest.get('format')!r})")
    if manifest.get("version") not in READABLE_VERSIONS:
        raise ValueError(f"{path} has export version {manifest.get('version')}; this code "
                         f"reads versions {', '.join(map(str, READABLE_VERSIONS))}")
    return manifest, arrays


def load_integer(path: str | Path) -> ExportedNetwork:
    """Reads an export file back into the finalized network (see :class:`ExportedNetwork`).

    Returns:
      codes as int32 arrays, params as float32 arrays (quantized leaves rebuilt as
      ``float32(code) * step``), formats (:class:`FixedPointFormat`, ``SYQFormat``,
      ``GDRQFormat`` or, for any other method, :class:`ScaledFormat`), the report as
      :class:`LayerReport` objects, batch statistics, activation formats and the input
      normalisation.

    Raises:
      FileNotFoundError / ValueError: a missing file, or one that is not an export (one line).
    """
    manifest, arrays = read_npz(path)
    params, codes, formats, by_path = [], [], [], {}
    for rec in manifest["params"]:
        p, shape = rec["path"], tuple(rec["shape"])
        if not rec["quantized"]:
            params.append((p, arrays[rec["key"]]))
            codes.append((p, None))
            formats.append((p, None))
            continue
        raw = arrays[rec["codes_key"]]
        c = decode_codes(raw, rec["storage"], rec["code_min"], shape)
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
