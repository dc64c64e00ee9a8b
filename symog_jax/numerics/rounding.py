"""Rounding to fixed-point formats: plain, straight-through, and integer codes.

All functions take any shape, keep the input's floating dtype (float32, bfloat16, ...), and work
under ``jit``, ``vmap`` and ``grad``. The step is a power of two, so ``x / step`` and
``code * step`` are exact in floating point and rounding is the only error.

:func:`quantize` and :func:`to_codes` are the function forms of
:meth:`FixedPointFormat.quantize` and :meth:`FixedPointFormat.to_codes` (the levels interface),
which hold the rounding.
"""

from __future__ import annotations

import numbers
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from symog_jax.numerics.formats import NAN_CODE  # noqa: F401 (a public name here too)
from symog_jax.numerics.formats import FixedPointFormat, check_dtype_holds_levels

PassThrough = Literal["range", "all"]


def _check_format(fmt) -> FixedPointFormat:
    if not isinstance(fmt, FixedPointFormat):
        raise TypeError(f"fmt must be a FixedPointFormat, got {type(fmt).__name__}")
    return fmt


def _check_fits(shape: tuple[int, ...], fmt: FixedPointFormat) -> None:
    _check_format(fmt).check_fits(shape)


def _check_operand(x, fmt: FixedPointFormat) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"expected a floating-point array, got dtype {x.dtype}")
    _check_fits(x.shape, fmt)
    return x


def quantize(x, fmt: FixedPointFormat) -> jax.Array:
    """Rounds to the nearest level of ``fmt``, saturating outside its range.

    Ties round half to even (``jnp.round``); ``+-inf`` saturate and NaN stays NaN. The gradient
    is zero almost everywhere; use :func:`quantize_ste` for training.

    Args:
      x: floating array, any shape.
      fmt: the format (per-tensor, or per-channel along ``fmt.channel_axis``).

    Returns:
      Array of ``x``'s shape and dtype whose entries are levels of ``fmt``.

    Raises:
      ValueError: ``x``'s dtype cannot hold every level of ``fmt`` exactly (float16 with many
        fractional bits, bfloat16 beyond 8 bits, float8; see
        :func:`~symog_jax.numerics.formats.check_dtype_holds_levels`).

    Example:
      >>> quantize(jnp.array([0.3, -0.9, 7.0]), FixedPointFormat(bits=2, frac_bits=1)).tolist()
      [0.5, -0.5, 0.5]
    """
    return _check_format(fmt).quantize(x)


def quantize_ste(x, fmt: FixedPointFormat, *, pass_through: PassThrough = "range") -> jax.Array:
    """Straight-through rounding: forward as :func:`quantize`, backward (near) identity.

    Args:
      x: floating array, any shape.
      fmt: the format.
      pass_through: ``"range"`` (default): the gradient is 1 for ``x`` inside
        ``[fmt.min_value, fmt.max_value]`` and 0 outside, where saturation makes the output
        constant; ``"all"``: the gradient is 1 at every finite ``x``.

    Returns:
      Array of ``x``'s shape and dtype.

    Example:
      >>> f = FixedPointFormat(bits=2, frac_bits=0)
      >>> jax.grad(lambda x: quantize_ste(x, f).sum())(jnp.array([0.4, 3.0])).tolist()
      [1.0, 0.0]
    """
    x = _check_operand(x, fmt)
    q = quantize(x, fmt)
    if pass_through == "all":
        gate = jnp.where(jnp.isfinite(x), x, 0)
    elif pass_through == "range":
        step = fmt.step_for(x.ndim, x.dtype)
        # Not clip(): its derivative is 1/2 at the bounds, where clipped weights end up.
        inside = (x >= fmt.code_min * step) & (x <= fmt.code_max * step)
        gate = jnp.where(inside, x, 0)
    else:
        raise ValueError(f"pass_through must be 'range' or 'all', got {pass_through!r}")
    # q + (gate - gate) is exactly q in the forward pass (x + (q - x) is not, for large |x|);
    # the derivative is that of gate: 1 where it passes x, 0 elsewhere.
    return q + (gate - jax.lax.stop_gradient(gate))


def to_codes(x, fmt: FixedPointFormat, dtype=jnp.int32) -> jax.Array:
    """Integer codes of the nearest levels: ``quantize(x, fmt) == from_codes(to_codes(x))``.

    ``+-inf`` saturate to the extreme codes. NaN has no code: concrete input holding NaN
    raises; under ``jit`` (where nothing can be raised) NaN becomes :data:`NAN_CODE` for
    ``int32`` (``dtype``'s smallest value; its largest for unsigned dtypes), which is outside
    ``[fmt.code_min, fmt.code_max]`` so :func:`from_codes` refuses it.

    Returns:
      Integer array (``int32`` by default) of ``x``'s shape with values in
      ``[fmt.code_min, fmt.code_max]`` (and the NaN sentinel, traced input only).

    Raises:
      TypeError: ``dtype`` is not an integer type.
      ValueError: ``dtype`` cannot hold every code of ``fmt`` (e.g. ``int8`` for 9 bits);
        concrete ``x`` contains NaN; traced ``x`` and ``dtype`` has no value outside the
        format's codes to mark NaN with (e.g. ``int8`` for an 8-bit two's-complement format).

    Example:
      >>> to_codes(jnp.array([0.3, -0.9, 7.0]), FixedPointFormat(bits=2, frac_bits=1)).tolist()
      [1, -1, 1]
      >>> jax.jit(to_codes, static_argnums=1)(jnp.array([jnp.nan]), FixedPointFormat(2, 1))
      Array([-2147483648], dtype=int32)
    """
    return _check_format(fmt).to_codes(x, dtype)


def from_codes(codes, fmt: FixedPointFormat, dtype=jnp.float32) -> jax.Array:
    """Values of integer codes: ``codes * step`` in ``dtype``.

    Raises:
      TypeError: ``codes`` are not integers, or ``dtype`` is not a floating type.
      ValueError: concrete ``codes`` fall outside ``[fmt.code_min, fmt.code_max]`` (checked in
        their own dtype, before any cast: int64 codes cannot wrap into range); ``dtype``
        cannot hold every level of ``fmt`` exactly.

    Example:
      >>> from_codes(jnp.array([1, -1]), FixedPointFormat(bits=2, frac_bits=1)).tolist()
      [0.5, -0.5]
    """
    if not isinstance(codes, jax.core.Tracer):
        codes = _checked_codes(codes, fmt)
    codes = jnp.asarray(codes)
    if not jnp.issubdtype(codes.dtype, jnp.integer):
        raise TypeError(f"codes must be integers, got dtype {codes.dtype}")
    _check_fits(codes.shape, fmt)
    check_dtype_holds_levels(fmt, dtype, who="from_codes")
    return codes.astype(dtype) * fmt.step_for(codes.ndim, dtype)


def _checked_codes(codes, fmt: FixedPointFormat) -> np.ndarray:
    """Concrete codes as a numpy integer array, range-checked before any narrowing cast
    (``jnp.asarray`` turns int64 into int32 when x64 is off, wrapping 2**32 + 1 to 1)."""
    _check_format(fmt)
    arr = np.asarray(codes)
    if arr.dtype == object:  # Python ints beyond int64
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                   for v in arr.flat):
            raise TypeError(f"codes must be integers, got {codes!r}")
        lo, hi = (min(arr.flat), max(arr.flat)) if arr.size else (0, 0)
    elif arr.dtype.kind in "iu":
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    else:
        raise TypeError(f"codes must be integers, got dtype {arr.dtype}")
    if lo < fmt.code_min or hi > fmt.code_max:
        raise ValueError(f"codes must lie in [{fmt.code_min}, {fmt.code_max}] for {fmt}, got "
                         f"range [{lo}, {hi}]")
    return arr.astype(np.int64) if arr.dtype == object else arr
