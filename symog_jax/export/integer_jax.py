"""The integer program as one jit-compiled JAX function (CPU, GPU): the numpy program's codes,
bit for bit.

:func:`integer_function` compiles an :class:`~symog_jax.export.integer_inference.
IntegerProgram` into ``f(images) -> logit codes``; :func:`run_integer_jax` runs it in batches.
The numpy interpreter (:mod:`symog_jax.export.integer_inference`) stays the independent
reference; tests/test_integer_jax.py compares the two.

* **Convolutions and matmuls** are int8 x int8 -> int32 (``lax.conv_general_dilated`` /
  ``lax.dot_general`` with ``preferred_element_type=jnp.int32``): XLA's fast integer form.
  Unsigned 8-bit codes ``0..255`` do not fit int8: they are shifted by ``-128`` (after the
  SAME padding, which pads code 0), and the shift's contribution ``128 * sum(w[..., c])`` --
  the same at every output position, since the window is always full after explicit padding
  -- is added back to the int32 accumulator, exactly. Codes already in ``[-128, 127]`` (4-bit
  activations, signed image codes) go in unshifted. A layer whose input codes do not fit 8 bits
  (fine-step inputs of a run without ``act_bits``) uses int32 operands (int64 accumulators
  where the worst case needs them).
* **Requantization** ``clip(round_half_even((acc * m + b) / 2**k))`` needs 64-bit products
  (31-bit multipliers times up to 31-bit accumulators). It runs in int64 **inside a scoped**
  ``jax.enable_x64(True)`` (the function is traced and called within it; the global setting is
  never changed). Why not a split int32 implementation: the int64 form is the numpy program's
  formula verbatim, and on CPU and GPU XLA lowers int64 elementwise ops natively; the matrix
  products, which dominate the time, stay int8/int32.
* Pools, residual adds, concatenations, the input table: the program's integer formulas
  (``lax.reduce_window`` for max and sums, round-half-to-even division, shifts).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from symog_jax.export import integer_inference as ii

__all__ = ["integer_function", "run_integer_jax"]

_DN = ("NHWC", "HWIO", "NHWC")


def _round_shift_half_even(v, k):
    """``round(v / 2**k)``, ties to even, int64 ``v``, ``0 <= k <= 62`` (broadcast)."""
    q = v >> k
    r = v - (q << k)
    half = jnp.where(k > 0, jnp.left_shift(jnp.int64(1), jnp.maximum(k - 1, 0)), 0)
    up = (k > 0) & ((r > half) | ((r == half) & ((q & 1) == 1)))
    return q + up.astype(jnp.int64)


def _div_half_even(num, den: int):
    """``round(num / den)``, ties to even, int64 ``num``, a positive Python int ``den``."""
    q = jnp.floor_divide(num, den)
    r2 = 2 * (num - q * den)
    up = (r2 > den) | ((r2 == den) & (q % 2 == 1))
    return q + up.astype(jnp.int64)


def _convert(x, frm: int, to: int):
    d = to - frm
    return x * (1 << d) if d >= 0 else _div_half_even(x, 1 << (-d))


def _pad_hw(x, pads, fill):
    if not any(p for pair in pads for p in pair):
        return x
    return jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=fill)


class _Layer:
    """One conv/dense: operand dtype, shift, and the constants, prepared once."""

    def __init__(self, L: ii.IntLayer):
        self.L = L
        if L.in_lo >= -128 and L.in_hi <= 127:
            self.shift, self.dtype = 0, jnp.int8
        elif L.in_lo >= 0 and L.in_hi <= 255:
            self.shift, self.dtype = 128, jnp.int8
        else:
            self.shift, self.dtype = 0, jnp.int32
        if self.dtype == jnp.int8 and np.abs(L.w).max(initial=0) > 127:
            self.dtype = jnp.int32                       # 9+ bit weights: int32 operands
        self.acc_dtype = jnp.int32 if L.acc_dtype == "int32" else jnp.int64
        w = np.asarray(L.w, np.int64)
        self.w = w.astype(np.int8 if self.dtype == jnp.int8 else np.int32)
        cout = w.shape[-1]
        self.correction = self.shift * w.reshape(-1, cout).sum(axis=0)   # (C,) int64
        self.m, self.k, self.b = (np.asarray(a, np.int64) for a in (L.m, L.k, L.b))

    def __call__(self, a):
        L = self.L
        if L.kind == "conv":
            kh, kw = L.w.shape[:2]
            if L.padding == "SAME":
                a = _pad_hw(a, (ii._same_pads(a.shape[1], kh, L.stride),
                                ii._same_pads(a.shape[2], kw, L.stride)), 0)
            x = (a - self.shift).astype(self.dtype)
            acc = lax.conv_general_dilated(x, jnp.asarray(self.w), (L.stride, L.stride),
                                           "VALID", dimension_numbers=_DN,
                                           preferred_element_type=self.acc_dtype)
        else:
            x = (a.reshape(a.shape[0], -1) - self.shift).astype(self.dtype)
            acc = lax.dot_general(x, jnp.asarray(self.w), (((1,), (0,)), ((), ())),
                                  preferred_element_type=self.acc_dtype)
        acc = acc.astype(jnp.int64) + self.correction
        v = acc * self.m + self.b
        return jnp.clip(_round_shift_half_even(v, jnp.asarray(self.k)), L.out_lo, L.out_hi)


def _windows_reduce(x, op: dict, init, reducer):
    kh, kw = op["window"]
    sh, sw = op["strides"]
    pads = ((0, 0), (0, 0), (0, 0), (0, 0))
    if op["padding"] == "SAME":
        pads = ((0, 0), ii._same_pads(x.shape[1], kh, sh), ii._same_pads(x.shape[2], kw, sw),
                (0, 0))
    return lax.reduce_window(x, init, reducer, (1, kh, kw, 1), (1, sh, sw, 1), pads)


def _divide(total, count: int, frm: int, to: int, lo: int, hi: int):
    d = to - frm
    num = total * (1 << d) if d >= 0 else total
    den = count * (1 << (-d)) if d < 0 else count
    return jnp.clip(_div_half_even(num, den), lo, hi)


def _program_forward(program: ii.IntegerProgram):
    """The forward pass as a traceable function of uint8 images (call under x64)."""
    layers = {name: _Layer(L) for name, L in program.layers.items()}
    lut = np.asarray(program.lut, np.int64)
    C = lut.shape[0]
    ops = program.ops

    def step(op, xs, fmts):
        kind, (f, lo, hi) = op["op"], op["out"]
        if kind == "layer":
            layer = layers[op["name"]]
            a = xs[0]
            if fmts[0][0] != layer.L.in_frac:
                a = jnp.clip(_convert(a, fmts[0][0], layer.L.in_frac), layer.L.in_lo,
                             layer.L.in_hi)
            return layer(a)
        if kind == "affine":
            A = program.affines[op["name"]]
            v = xs[0] * np.asarray(A.m, np.int64) + np.asarray(A.b, np.int64)
            return jnp.clip(_round_shift_half_even(v, jnp.asarray(A.k, jnp.int64)), A.out_lo,
                            A.out_hi)
        if kind == "relu":
            return jnp.maximum(xs[0], 0)
        if kind == "flatten":
            return xs[0].reshape(xs[0].shape[0], -1)
        if kind == "max_pool":
            return _windows_reduce(xs[0], op, jnp.iinfo(jnp.int64).min, lax.max)
        if kind == "avg_pool":
            total = _windows_reduce(xs[0], op, jnp.int64(0), lax.add)
            return _divide(total, int(np.prod(op["window"])), fmts[0][0], f, lo, hi)
        if kind == "global_avg_pool":
            a = xs[0]
            return _divide(a.sum(axis=(1, 2)), a.shape[1] * a.shape[2], fmts[0][0], f, lo, hi)
        if kind in ("add", "concat"):
            parts = [_convert(x, g[0], f) for x, g in zip(xs, fmts)]
            if kind == "add":
                return jnp.clip(parts[0] + parts[1], lo, hi)
            return jnp.concatenate(parts, axis=-1)
        if kind == "pad_channels":
            s = op["stride"]
            a = xs[0][:, ::s, ::s, :]
            return jnp.pad(a, ((0, 0), (0, 0), (0, 0), (0, op["channels"] - a.shape[-1])))
        raise ValueError(f"integer program: unknown op {kind!r}")

    def forward(images):
        values = []
        for op in ops:
            if op["op"] == "input":
                idx = images.astype(jnp.int32) + 256 * jnp.arange(C, dtype=jnp.int32)
                values.append(jnp.asarray(lut.reshape(-1))[idx])
            else:
                xs = [values[t] for t in op["inputs"]]
                values.append(step(op, xs, [ops[t]["out"] for t in op["inputs"]]))
        return values[-1]

    return forward


def integer_function(program: ii.IntegerProgram):
    """A jit-compiled ``f(images) -> logit codes`` of the program.

    Args:
      program: from :func:`~symog_jax.export.integer_inference.build_program` or
        :func:`~symog_jax.export.integer_inference.load_program`.

    Returns:
      ``f``: uint8 ``(N, H, W, C)`` images (numpy or JAX) -> int64 JAX array ``(N, classes)``
      of codes at step ``2**-fine_frac_bits``, equal to
      :func:`~symog_jax.export.integer_inference.run_integer`'s. Each call enables 64-bit
      types for its own duration only (``jax.enable_x64(True)``); one compilation per batch
      shape. ``f.jitted`` is the underlying ``jax.jit`` function (to ``.lower`` it, e.g. for
      XLA's memory analysis, inside ``jax.enable_x64(True)``).

    Raises:
      ValueError: a program whose int64 products could overflow
        (:func:`~symog_jax.export.integer_inference.int64_products_overflow`).
    """
    overflow = ii.int64_products_overflow(program)
    if overflow:
        raise ValueError(f"the JAX integer path computes in int64: {overflow}")
    jitted = jax.jit(_program_forward(program))

    def f(images):
        with jax.enable_x64(True):
            return jitted(jnp.asarray(images, jnp.uint8))
    f.jitted = jitted
    return f


def run_integer_jax(program: ii.IntegerProgram, images: np.ndarray, *,
                    batch_size: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Integer-only inference with :func:`integer_function`, in batches.

    Returns:
      ``(logit_codes, logits)``: int64 ``(N, classes)`` and float64 ``codes * 2**-F``.

    Raises:
      ValueError: images that are not uint8 NHWC with the program's channel count.

    Example (a one-layer program: dense 2 -> 1, weights [1, -1], M = 1/2, B = 1/4; the table
    maps pixel p to code p)::

      >>> L = ii.IntLayer("fc", "dense", np.array([[1], [-1]], np.int32), 1, "VALID", 0, 0,
      ...                 255, *ii.requant_params(np.array([0.5]), np.array([0.25])), 0,
      ...                 -100, 100, 510, "int32")
      >>> prog = ii.IntegerProgram("toy", 0, 31, 31, 0, np.arange(256)[None], {"fc": L}, {},
      ...     [{"op": "input", "inputs": [], "out": [0, 0, 255]},
      ...      {"op": "flatten", "inputs": [0], "out": [0, 0, 255]},
      ...      {"op": "layer", "name": "fc", "inputs": [1], "out": [0, -100, 100]}])
      >>> img = np.array([[[[9]], [[2]]], [[[2]], [[9]]]], np.uint8)   # (2, 2, 1, 1)
      >>> run_integer_jax(prog, img)[0].ravel().tolist()   # 7/2+1/4 = 3.75, -7/2+1/4 = -3.25
      [4, -3]
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != program.lut.shape[0]:
        raise ValueError(f"images must be uint8 (N, H, W, {program.lut.shape[0]}), got "
                         f"{images.dtype} {images.shape}")
    f = integer_function(program)
    outs = [np.asarray(f(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
    codes = np.concatenate(outs).astype(np.int64)
    return codes, codes * 2.0 ** (-program.fine_frac_bits)
