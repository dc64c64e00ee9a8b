"""Choosing a fixed-point format for a tensor, and measuring quantization quality.

The step is a power of two, so the only free choice for a given bit-width is the number of
fractional bits ``f``. :func:`best_frac_bits` finds the ``f`` that minimises the squared
quantization error by exact search: every candidate in a window is evaluated and the best kept
(Lin, Talathi & Annapureddy, 2016 choose the step the same way, analytically for Gaussians).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from symog_jax.numerics.formats import (
    MAX_ABS_FRAC_BITS,
    NONFINITE_FRAC_BITS,
    FixedPointFormat,
    code_range,
)
from symog_jax.numerics.rounding import quantize

#: Candidates tried below the smallest exponent that avoids clipping. Larger steps than that
#: only add rounding error unless the data already lie on a coarse grid; 2 covers that case.
CANDIDATES_BELOW_NO_CLIP = 2
#: Default number of candidate exponents (the window reaches 21 exponents into clipping).
DEFAULT_NUM_CANDIDATES = 24


def _reduce_axes(ndim: int, channel_axis: int | None) -> tuple[int, ...]:
    if channel_axis is None:
        return tuple(range(ndim))
    axis = channel_axis % ndim
    return tuple(a for a in range(ndim) if a != axis)


def candidate_frac_bits(x, bits: int, *, signed: bool = True, symmetric: bool = True,
                        channel_axis: int | None = None,
                        num_candidates: int = DEFAULT_NUM_CANDIDATES) -> jax.Array:
    """The exponents :func:`best_frac_bits` searches, int32 ``(num_candidates,)`` or ``(K, C)``.

    The window starts :data:`CANDIDATES_BELOW_NO_CLIP` below ``floor(log2(code_max / max|x|))``,
    the finest step whose range still holds ``max|x|``, and goes up (finer steps, more clipping).
    An all-zero tensor (or channel) gets the window starting at 0.
    """
    x = jnp.asarray(x)
    _, code_max = code_range(bits, signed=signed, symmetric=symmetric)
    axes = _reduce_axes(x.ndim, channel_axis)
    xf = x.astype(jnp.float32)
    amax = jnp.max(xf if not signed else jnp.abs(xf), axis=axes) if x.ndim else jnp.abs(xf)
    amax = jnp.maximum(amax, 0.0)
    no_clip = jnp.where(amax > 0, jnp.floor(jnp.log2(code_max / jnp.where(amax > 0, amax, 1.0))),
                        CANDIDATES_BELOW_NO_CLIP)
    start = no_clip.astype(jnp.int32) - CANDIDATES_BELOW_NO_CLIP
    offsets = jnp.arange(num_candidates, dtype=jnp.int32).reshape((-1,) + (1,) * start.ndim)
    lo = -MAX_ABS_FRAC_BITS
    return jnp.clip(start[None] + offsets, lo, MAX_ABS_FRAC_BITS)


def best_frac_bits(x, bits: int, *, signed: bool = True, symmetric: bool = True,
                   channel_axis: int | None = None,
                   num_candidates: int = DEFAULT_NUM_CANDIDATES) -> jax.Array:
    """Fractional bits minimising ``sum((x - quantize(x))**2)``, by exact search.

    Args:
      x: floating array, any shape (e.g. a conv kernel ``(kh, kw, cin, cout)``).
      bits: bit-width of the format.
      signed, symmetric: the code range (see :class:`FixedPointFormat`).
      channel_axis: ``None`` for one exponent for the whole tensor; an axis for one exponent per
        entry along that axis (per output channel: ``-1`` for Flax kernels).
      num_candidates: how many consecutive exponents to try.

    Returns:
      int32 scalar, or int32 ``(x.shape[channel_axis],)``. Ties go to the smaller exponent
      (the larger range). Traceable under ``jit`` (shapes are static); there a tensor (or
      channel) holding NaN or inf gets :data:`NONFINITE_FRAC_BITS`, a flag that no
      :class:`FixedPointFormat` accepts.

    Raises:
      ValueError: concrete ``x`` holds NaN or inf (as :func:`choose_format`); the message
        names the channels when ``channel_axis`` is given.

    Example:
      >>> int(best_frac_bits(jnp.array([0.1, -0.26, 0.24, 0.0]), bits=2))
      2
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"best_frac_bits expects a floating array, got dtype {x.dtype}")
    if num_candidates < 1:
        raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
    if channel_axis is not None and not -x.ndim <= channel_axis < x.ndim:
        raise ValueError(f"channel_axis={channel_axis} is out of range for an array of shape "
                         f"{x.shape}")
    code_range(bits, signed=signed, symmetric=symmetric)  # validates bits before jit hashes it
    fb = _best_frac_bits(x.astype(jnp.float32), int(bits), signed=bool(signed),
                         symmetric=bool(symmetric), channel_axis=channel_axis,
                         num_candidates=int(num_candidates))
    if not isinstance(fb, jax.core.Tracer):
        flagged = np.asarray(fb) == NONFINITE_FRAC_BITS
        if flagged.any():
            where = ("" if channel_axis is None else
                     f" in channel(s) {np.flatnonzero(flagged).tolist()[:10]} along axis "
                     f"{channel_axis}")
            raise ValueError(f"best_frac_bits: the tensor of shape {x.shape} contains NaN or "
                             f"inf{where}")
    return fb


# Compiled once per shape and static arguments: called eagerly (e.g. by FormatPolicy.init, once
# per leaf), the lax.map below would otherwise be re-traced and re-compiled on every call.
@functools.partial(jax.jit, static_argnames=("bits", "signed", "symmetric", "channel_axis",
                                             "num_candidates"))
def _best_frac_bits(xf, bits, *, signed, symmetric, channel_axis, num_candidates):
    cands = candidate_frac_bits(xf, bits, signed=signed, symmetric=symmetric,
                                channel_axis=channel_axis, num_candidates=num_candidates)
    axes = _reduce_axes(xf.ndim, channel_axis)
    code_min, code_max = code_range(bits, signed=signed, symmetric=symmetric)

    def error(frac_bits):
        step = jnp.ldexp(jnp.float32(1.0), -frac_bits)
        if channel_axis is not None:
            shape = [1] * xf.ndim
            shape[channel_axis % xf.ndim] = -1
            step = step.reshape(shape)
        q = jnp.clip(jnp.round(xf / step), code_min, code_max) * step
        return jnp.sum((xf - q) ** 2, axis=axes)

    # One candidate at a time keeps memory at one copy of x, not num_candidates copies.
    errors = jax.lax.map(error, cands)
    best = jnp.argmin(errors, axis=0)
    fb = jnp.take_along_axis(cands, best[None], axis=0)[0]
    finite = jnp.all(jnp.isfinite(xf), axis=axes)
    return jnp.where(finite, fb, jnp.int32(NONFINITE_FRAC_BITS))


def choose_format(x, bits: int, *, per_channel: bool = False, channel_axis: int = -1,
                  signed: bool = True, symmetric: bool = True,
                  num_candidates: int = DEFAULT_NUM_CANDIDATES) -> FixedPointFormat:
    """The MSE-optimal power-of-two format for ``x`` (concrete values, outside ``jit``).

    Example:
      >>> choose_format(jnp.array([0.1, -0.26, 0.24, 0.0]), bits=2)
      FixedPointFormat(bits=2, frac_bits=2, symmetric)
    """
    x = np.asarray(x)
    if not np.all(np.isfinite(x)):
        raise ValueError("choose_format: the tensor contains NaN or inf")
    fb = best_frac_bits(x, bits, signed=signed, symmetric=symmetric,
                        channel_axis=channel_axis if per_channel else None,
                        num_candidates=num_candidates)
    return FixedPointFormat(bits, np.asarray(fb), signed=signed, symmetric=symmetric,
                            channel_axis=channel_axis)


def sqnr_db(x, x_quantized, *, axis=None) -> jax.Array:
    """Signal-to-quantization-noise ratio ``10 log10(sum x^2 / sum (x - x_q)^2)`` in dB.

    Args:
      x, x_quantized: arrays of equal shape.
      axis: axes to reduce over (all by default).

    Returns:
      float32 array (scalar by default); ``inf`` where the noise is zero; NaN (never ``inf``)
      where traced inputs hold NaN or inf.

    Raises:
      ValueError: concrete ``x`` or ``x_quantized`` hold NaN or inf (as :func:`choose_format`).

    Example:
      >>> float(sqnr_db(jnp.array([1.0, 1.0]), jnp.array([1.0, 0.9])))  # 10*log10(2/0.01)
      23.01...
    """
    traced = isinstance(x, jax.core.Tracer) or isinstance(x_quantized, jax.core.Tracer)
    x = jnp.asarray(x, jnp.float32)
    xq = jnp.asarray(x_quantized, jnp.float32)
    if x.shape != xq.shape:
        raise ValueError(f"sqnr_db: shapes differ, {x.shape} vs {xq.shape}")
    if not traced:
        for name, a in (("x", x), ("x_quantized", xq)):
            if not bool(jnp.all(jnp.isfinite(a))):
                raise ValueError(f"sqnr_db: {name} of shape {a.shape} contains NaN or inf")
    signal = jnp.sum(x**2, axis=axis)
    noise = jnp.sum((x - xq) ** 2, axis=axis)
    db = jnp.where(noise > 0, 10.0 * jnp.log10(signal / jnp.where(noise > 0, noise, 1.0)),
                   jnp.inf)
    finite = jnp.all(jnp.isfinite(x) & jnp.isfinite(xq), axis=axis)
    return jnp.where(finite, db, jnp.nan)


def quantization_sqnr_db(x, fmt: FixedPointFormat) -> jax.Array:
    """SQNR of ``x`` against ``quantize(x, fmt)`` in dB (float32 scalar)."""
    return sqnr_db(x, quantize(jnp.asarray(x), fmt))
