"""The export file's byte-level pieces: code packing and reading the ``.npz`` with its manifest.

Shared by :mod:`symog_jax.export.integer` (which writes and reloads whole networks) and
:mod:`symog_jax.export.integer_inference` (which reads only the integer program), so neither
imports the other's reader. Version 3 added the integer program's graph (``ops``, ``affines``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "PACKED_WIDTHS", "PACKING_DOC", "READABLE_VERSIONS",
           "decode_codes", "pack2", "pack_codes", "read_npz", "storage_for", "unpack2",
           "unpack_codes"]

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


def decode_codes(raw: np.ndarray, storage: str, code_min: int, shape) -> np.ndarray:
    """Stored codes (packed or plain, as :func:`storage_for` chose) -> int32 array of ``shape``.

    Example:
      >>> decode_codes(np.array([224, 7], np.uint8), "packed4", -7, (3,)).tolist()
      [-7, 7, 0]
    """
    if storage in PACKED_WIDTHS:
        return unpack_codes(raw, code_min, tuple(shape), PACKED_WIDTHS[storage])
    return np.asarray(raw).astype(np.int32).reshape(tuple(shape))


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
