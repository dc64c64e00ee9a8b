"""The export file's byte-level pieces: code packing and reading the ``.npz`` with its manifest.

Shared by :mod:`symog_jax.export.integer` (which writes and reloads whole networks) and
:mod:`symog_jax.export.integer_inference` (which reads only the integer program), so neither
imports the other's reader. Version 3 added the integer program's graph (``ops``, ``affines``).
"""

from __future__ import annotations

import hashlib
import json
import math
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from symog_jax.numerics.levels import from_record
from symog_jax.quantizers.scaled import ScaledFormat

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "PACKED_WIDTHS", "PACKING_DOC", "READABLE_VERSIONS",
           "decode_codes", "file_sha256", "pack2", "pack_codes", "read_npz", "storage_for",
           "unpack2", "unpack_codes", "validate_export"]

FORMAT_NAME = "symog_jax-integer-export"
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
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


def decode_codes(raw: np.ndarray, storage: str, code_min: int, shape,
                 code_max: int | None = None) -> np.ndarray:
    """Stored codes (packed or plain, as :func:`storage_for` chose) -> int32 array of ``shape``.

    Plain storage must be the integer dtype ``storage`` names (a code array stored as float is
    refused, not truncated); with ``code_max`` given, codes outside ``[code_min, code_max]``
    are refused. Errors are one-line ``ValueError``s.

    Example:
      >>> decode_codes(np.array([224, 7], np.uint8), "packed4", -7, (3,)).tolist()
      [-7, 7, 0]
      >>> decode_codes(np.array([0.0, 1.0]), "int8", -1, (2,))
      Traceback (most recent call last):
      ...
      ValueError: codes stored as float64, expected int8
    """
    shape = tuple(int(d) for d in shape)
    raw = np.asarray(raw)
    if storage in PACKED_WIDTHS:
        codes = unpack_codes(raw, code_min, shape, PACKED_WIDTHS[storage])
    else:
        if storage not in {np.dtype(dt).name for dt in _INT_DTYPES}:
            raise ValueError(f"unknown code storage {storage!r}")
        if raw.dtype != np.dtype(storage):
            raise ValueError(f"codes stored as {raw.dtype}, expected {storage}")
        if raw.shape != shape:
            raise ValueError(f"codes have shape {list(raw.shape)}, expected {list(shape)}")
        codes = raw.astype(np.int32)
    if code_max is not None and codes.size and (codes.min() < code_min
                                                or codes.max() > code_max):
        raise ValueError(f"codes in [{codes.min()}, {codes.max()}] lie outside the format's "
                         f"range [{code_min}, {code_max}]")
    return codes


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_npz(path: str | Path) -> tuple[dict, dict]:
    """``(manifest, arrays)`` of an export file, checked by :func:`validate_export`.

    A broken file (truncated, not a zip, a damaged member, a missing key, a tampered field)
    raises a one-line ``ValueError`` naming the file (and the field); a missing one
    ``FileNotFoundError``. When the manifest beside the file (``<path>.json``) records the
    file's size and SHA-256, the two must belong together.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        manifest = json.loads(arrays.pop("manifest.json").tobytes().decode())
    except (OSError, ValueError, KeyError, UnicodeDecodeError, EOFError, AttributeError,
            zipfile.BadZipFile, zlib.error) as e:
        raise ValueError(f"{path} is not a symog_jax integer export ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is not a symog_jax integer export (format "
                         f"{manifest.get('format') if isinstance(manifest, dict) else None!r})")
    if manifest.get("version") not in READABLE_VERSIONS:
        raise ValueError(f"{path} has export version {manifest.get('version')}; this code "
                         f"reads versions {', '.join(map(str, READABLE_VERSIONS))}")
    _check_sidecar(path)
    validate_export(path, manifest, arrays)
    return manifest, arrays


def _check_sidecar(path: Path) -> None:
    side = path.with_suffix(".json")
    if not side.is_file():
        return
    try:
        record = json.loads(side.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{side}: the export's manifest is not readable JSON "
                         f"({type(e).__name__})") from None
    want = record.get("npz_sha256") if isinstance(record, dict) else None
    if want is None:                  # written before manifests carried the hash
        return
    size, got = path.stat().st_size, file_sha256(path)
    if got != want or record.get("file_bytes") != size:
        raise ValueError(f"{path} and its manifest {side.name} do not belong together (size "
                         f"{size} vs {record.get('file_bytes')}, sha256 differs: "
                         f"{got != want}); export again")


class _Bad(ValueError):
    pass


def _get(rec: Any, key: str, where: str, kind: type | tuple = object):
    if not isinstance(rec, dict) or key not in rec:
        raise _Bad(f"{where}: missing field {key!r}")
    value = rec[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise _Bad(f"{where}.{key}: expected {getattr(kind, '__name__', kind)}, got "
                   f"{type(value).__name__}")
    return value


def _array(arrays: dict, key: Any, where: str) -> np.ndarray:
    if not isinstance(key, str) or key not in arrays:
        raise _Bad(f"{where}: array {key!r} is missing")
    return arrays[key]


def _shape(rec: dict, where: str) -> tuple[int, ...]:
    shape = _get(rec, "shape", where, list)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise _Bad(f"{where}.shape: {shape} is not a list of sizes")
    return tuple(shape)


def validate_export(path: str | Path, manifest: dict, arrays: dict) -> None:
    """Checks that an export's manifest and arrays are consistent; the one validation path.

    Every parameter record names arrays that exist; float leaves are finite float32 of the
    recorded shape; a quantized leaf's ``code_min``/``code_max`` are its format's, its storage
    is the one :func:`storage_for` chooses, its codes are stored as that integer type (or
    packed bytes of the right length) and lie in the format's range, its step is finite
    float32 of the recorded ``step_shape``, broadcasting against the kernel; a
    kernel's output channels agree with its bias, its report entry and its integer-program
    layer; batch statistics and program arrays exist and are finite.

    Raises:
      ValueError: one line, naming ``path`` and the field.
    """
    try:
        _validate(manifest, arrays)
    except _Bad as e:
        raise ValueError(f"{path}: {e}") from None


def _validate(manifest: dict, arrays: dict) -> None:
    records = _get(manifest, "params", "manifest", list)
    shapes: dict[str, tuple] = {}
    for i, rec in enumerate(records):
        where = f"params[{i}]"
        p = _get(rec, "path", where, str)
        where = f"params[{i}] ({p})"
        shape = _shape(rec, where)
        shapes[p] = shape
        if not _get(rec, "quantized", where, bool):
            w = _array(arrays, _get(rec, "key", where), where)
            if w.dtype != np.float32 or w.shape != shape:
                raise _Bad(f"{where}: stored as {w.dtype} {list(w.shape)}, expected float32 "
                           f"{list(shape)}")
            if not np.all(np.isfinite(w)):
                raise _Bad(f"{where}: holds NaN or inf")
            continue
        lo = _get(rec, "code_min", where, int)
        hi = _get(rec, "code_max", where, int)
        storage = _get(rec, "storage", where, str)
        step = np.asarray(_array(arrays, _get(rec, "step_key", where), where + ".step"))
        if step.dtype != np.float32 or not np.all(np.isfinite(step)):
            raise _Bad(f"{where}.step: must be finite float32, got {step.dtype} "
                       f"{step.ravel()[:4].tolist()}")
        if list(step.shape) != _get(rec, "step_shape", where, list):
            raise _Bad(f"{where}.step: shape {list(step.shape)} is not step_shape "
                       f"{rec['step_shape']}")
        try:
            np.broadcast_shapes(step.shape, shape)
        except ValueError:
            raise _Bad(f"{where}.step: shape {list(step.shape)} does not broadcast against "
                       f"the kernel {list(shape)}") from None
        fmt_rec = _get(rec, "format", where, dict)
        try:
            fmt = from_record(fmt_rec, {"step": step}, unknown_as=ScaledFormat.kind)
        except (ValueError, TypeError, KeyError) as e:
            raise _Bad(f"{where}.format: {str(e).splitlines()[0] if str(e) else e!r}") from None
        if (int(fmt.code_min), int(fmt.code_max)) != (lo, hi):
            raise _Bad(f"{where}: code range [{lo}, {hi}] is not its format's "
                       f"[{int(fmt.code_min)}, {int(fmt.code_max)}]")
        try:
            want = storage_for(lo, hi)
        except ValueError as e:
            raise _Bad(f"{where}: {e}") from None
        if storage != want and not (storage == "int8" and want == "packed4"):   # version 1
            raise _Bad(f"{where}.storage: {storage!r}, but [{lo}, {hi}] is stored as {want!r}")
        try:
            decode_codes(_array(arrays, _get(rec, "codes_key", where), where + ".codes"),
                         storage, lo, shape, hi)
        except ValueError as e:
            raise _Bad(f"{where}.codes: {e}") from None
    _check_structure(manifest, shapes)
    for i, rec in enumerate(_get(manifest, "batch_stats", "manifest", list)):
        where = f"batch_stats[{i}]"
        a = _array(arrays, _get(rec, "key", where), where)
        if a.dtype != np.float32 or a.shape != _shape(rec, where) or not np.all(np.isfinite(a)):
            raise _Bad(f"{where}: not finite float32 of shape {rec['shape']}")
    for key in ("input", "model", "activations", "report"):
        _get(manifest, key, "manifest")
    for i, a in enumerate(_get(manifest, "activations", "manifest", list)):
        for f in ("path", "bits", "frac_bits", "signed", "symmetric"):
            _get(a, f, f"activations[{i}]")
    for f in ("mean", "std"):
        v = _get(manifest["input"], f, "input", list)
        if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in v):
            raise _Bad(f"input.{f}: {v} is not a list of finite numbers")
    if any(x == 0 for x in manifest["input"]["std"]):
        raise _Bad("input.std: holds 0")
    _check_program(manifest, arrays, shapes)


def _check_structure(manifest: dict, shapes: dict) -> None:
    """Kernels' output channels against their biases and report entries."""
    for i, r in enumerate(_get(manifest, "report", "manifest", list)):
        p = _get(r, "path", f"report[{i}]", str)
        if p in shapes and tuple(_shape(r, f"report[{i}]")) != shapes[p]:
            raise _Bad(f"params ({p}).shape: {list(shapes[p])} is not the report's "
                       f"{r['shape']}")
    for p, shape in shapes.items():
        if p.endswith("/kernel"):
            bias = shapes.get(p[:-len("kernel")] + "bias")
            if bias is not None and (len(shape) < 1 or bias != (shape[-1],)):
                raise _Bad(f"params ({p}).shape: {list(shape)} does not match its bias "
                           f"{list(bias)}")


def _check_program(manifest: dict, arrays: dict, shapes: dict) -> None:
    meta = manifest.get("integer_program")
    if meta is None or "ops" not in meta:
        return
    _array(arrays, _get(meta, "lut_key", "integer_program"), "integer_program.lut")
    by_key = {r.get("codes_key"): r for r in manifest["params"] if r.get("quantized")}
    for group in ("layers", "affines"):
        for i, rec in enumerate(_get(meta, group, "integer_program", list)):
            where = f"integer_program.{group}[{i}]"
            n = None
            for a in ("m", "k", "b"):
                arr = _array(arrays, _get(rec, a + "_key", where), f"{where}.{a}")
                if arr.dtype.kind not in "iu" or arr.ndim != 1:
                    raise _Bad(f"{where}.{a}: expected a 1-D integer array, got {arr.dtype} "
                               f"{list(arr.shape)}")
                if n is not None and arr.shape[0] != n:
                    raise _Bad(f"{where}.{a}: {arr.shape[0]} channels, not {n}")
                n = arr.shape[0]
            if group == "layers":
                w_key = _get(rec, "w_key", where, str)
                if w_key not in by_key:
                    raise _Bad(f"{where}.w_key: {w_key!r} is not a quantized parameter")
                shape = shapes[by_key[w_key]["path"]]
                if not shape or shape[-1] != n:
                    raise _Bad(f"params ({by_key[w_key]['path']}).shape: {list(shape)} does "
                               f"not match the program's {n} output channels")
