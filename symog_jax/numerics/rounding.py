"""Rounding to fixed-point formats: plain, straight-through, and integer codes.

All functions take any shape, keep the input's floating dtype (float32, bfloat16, ...), and work
under ``jit``, ``vmap`` and ``grad``. The step is a power of two, so ``x / step`` and
``code * step`` are exact in floating point and rounding is the only error.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from symog_jax.numerics.formats import FixedPointFormat

PassThrough = Literal["range", "all"]


def _check_fits(shape: tuple[int, ...], fmt: FixedPointFormat) -> None:
    if not isinstance(fmt, FixedPointFormat):
        raise TypeError(f"fmt must be a FixedPointFormat, got {type(fmt).__name__}")
    if fmt.per_channel:
        if not shape:
            raise ValueError("a per-channel format needs an array with a channel axis, got a scalar")
        n = len(fmt.frac_bits) if isinstance(fmt.frac_bits, tuple) else fmt.frac_bits.shape[0]
        if shape[fmt.channel_axis % len(shape)] != n:
            raise ValueError(
                f"per-channel format has {n} channels but the array has shape {shape} "
                f"(channel_axis={fmt.channel_axis})"
            )


def _check_operand(x, fmt: FixedPointFormat) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"expected a floating-point array, got dtype {x.dtype}")
    _check_fits(x.shape, fmt)
    return x


def _codes_float(x: jax.Array, fmt: FixedPointFormat) -> jax.Array:
    """Saturated rounded codes as floats of at least float32 precision.

    Narrow inputs (bfloat16, float16) are upcast first: their mantissa cannot hold every code
    (bf16 rounds 2047 to 2048, outside a 12-bit range) and float16 overflows on ``x / step``.
    """
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    step = fmt.step_for(x.ndim, x.dtype)
    return jnp.clip(jnp.round(x / step), fmt.code_min, fmt.code_max)


def quantize(x, fmt: FixedPointFormat) -> jax.Array:
    """Rounds to the nearest level of ``fmt``, saturating outside its range.

    Ties round half to even (``jnp.round``). The gradient is zero almost everywhere; use
    :func:`quantize_ste` for training.

    Args:
      x: floating array, any shape.
      fmt: the format (per-tensor, or per-channel along ``fmt.channel_axis``).

    Returns:
      Array of ``x``'s shape and dtype whose entries are levels of ``fmt``.

    Example:
      >>> quantize(jnp.array([0.3, -0.9, 7.0]), FixedPointFormat(bits=2, frac_bits=1)).tolist()
      [0.5, -0.5, 0.5]
    """
    x = _check_operand(x, fmt)
    codes = _codes_float(x, fmt)
    return (codes * fmt.step_for(x.ndim, codes.dtype)).astype(x.dtype)


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

    Returns:
      Integer array (``int32`` by default) of ``x``'s shape with values in
      ``[fmt.code_min, fmt.code_max]``.

    Raises:
      TypeError: ``dtype`` is not an integer type.
      ValueError: ``dtype`` cannot hold every code of ``fmt`` (e.g. ``int8`` for 9 bits).

    Example:
      >>> to_codes(jnp.array([0.3, -0.9, 7.0]), FixedPointFormat(bits=2, frac_bits=1)).tolist()
      [1, -1, 1]
    """
    x = _check_operand(x, fmt)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"to_codes: dtype must be an integer type, got {jnp.dtype(dtype)}")
    info = jnp.iinfo(dtype)
    if fmt.code_min < info.min or fmt.code_max > info.max:
        raise ValueError(f"to_codes: {jnp.dtype(dtype)} cannot hold the codes "
                         f"{fmt.code_min}..{fmt.code_max} of a {fmt.bits}-bit format")
    return _codes_float(x, fmt).astype(dtype)


def from_codes(codes, fmt: FixedPointFormat, dtype=jnp.float32) -> jax.Array:
    """Values of integer codes: ``codes * step`` in ``dtype``.

    Raises:
      TypeError: ``codes`` are not integers.
      ValueError: concrete ``codes`` fall outside ``[fmt.code_min, fmt.code_max]``.

    Example:
      >>> from_codes(jnp.array([1, -1]), FixedPointFormat(bits=2, frac_bits=1)).tolist()
      [0.5, -0.5]
    """
    codes = jnp.asarray(codes)
    if not jnp.issubdtype(codes.dtype, jnp.integer):
        raise TypeError(f"codes must be integers, got dtype {codes.dtype}")
    _check_fits(codes.shape, fmt)
    if not isinstance(codes, jax.core.Tracer) and codes.size and (
            int(codes.min()) < fmt.code_min or int(codes.max()) > fmt.code_max):
        raise ValueError(f"codes must lie in [{fmt.code_min}, {fmt.code_max}] for {fmt}, got "
                         f"range [{int(codes.min())}, {int(codes.max())}]")
    return codes.astype(dtype) * fmt.step_for(codes.ndim, dtype)
