"""Fixed-point number formats with power-of-two steps.

A format stores values ``code * step`` with an integer ``code`` of ``bits`` bits and
``step = 2**-frac_bits``. Three code ranges are supported:

* signed, symmetric (default, the SYMOG convention): ``2**bits - 1`` levels,
  codes ``-(2**(bits-1) - 1) .. 2**(bits-1) - 1``; 2 bits give ``{-step, 0, +step}``.
* signed, two's complement: ``2**bits`` levels, codes ``-2**(bits-1) .. 2**(bits-1) - 1``.
* unsigned (non-negative activations): codes ``0 .. 2**bits - 1``.

:class:`FixedPointFormat` is frozen. With an integer (or tuple, per channel) ``frac_bits`` it is
hashable and can be a static argument under ``jit``. It is also a pytree whose single leaf is
``frac_bits`` and whose static part is everything else, so formats can live inside
jit-traced optimizer state (``frac_bits`` then becomes an int32 array) while the bit-width and
code range stay static.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

#: Largest supported bit-width: codes must be exactly representable in float32 (24-bit mantissa).
MAX_BITS = 24
#: Fractional bits are limited so that ``2**-frac_bits`` is a normal float32.
MAX_ABS_FRAC_BITS = 100
#: What :func:`~symog_jax.numerics.calibration.best_frac_bits` returns under ``jit`` for a tensor
#: (or channel) holding NaN or inf: far outside ``[-MAX_ABS_FRAC_BITS, MAX_ABS_FRAC_BITS]``, and
#: refused with a message saying so when it reaches a :class:`FixedPointFormat`.
NONFINITE_FRAC_BITS = int(np.iinfo(np.int32).min)


def check_bits(bits: Any, *, signed: bool = True, symmetric: bool = True) -> int:
    """Validates a bit-width and returns it as ``int``.

    Raises:
      TypeError: ``bits`` is not an integer (``2.0`` and ``True`` are rejected too).
      ValueError: ``bits`` is below the minimum for the code range (2 for signed symmetric,
        whose 1-bit variant would only hold 0; 1 otherwise) or above :data:`MAX_BITS`.
    """
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise TypeError(f"bits must be an integer, got {bits!r} of type {type(bits).__name__}")
    bits = int(bits)
    lowest = 2 if (signed and symmetric) else 1
    if bits < lowest:
        kind = "signed symmetric" if (signed and symmetric) else "this"
        raise ValueError(
            f"bits={bits} is too small: a {kind} format needs at least {lowest} bit(s)"
            + (" (1 bit symmetric holds only the level 0)" if lowest == 2 else "")
        )
    if bits > MAX_BITS:
        raise ValueError(
            f"bits={bits} is too large: at most {MAX_BITS} bits are supported so that every "
            "code is exact in float32"
        )
    return bits


def code_range(bits: int, *, signed: bool = True, symmetric: bool = True) -> tuple[int, int]:
    """Smallest and largest integer code of an N-bit format.

    >>> code_range(2)
    (-1, 1)
    >>> code_range(2, symmetric=False)
    (-2, 1)
    >>> code_range(2, signed=False)
    (0, 3)
    """
    bits = check_bits(bits, signed=signed, symmetric=symmetric)
    if not signed:
        return 0, 2**bits - 1
    top = 2 ** (bits - 1) - 1
    return (-top if symmetric else -top - 1), top


def _normalize_frac_bits(frac_bits: Any) -> Any:
    """Concrete values become ``int`` or a tuple of ints (hashable); traced arrays pass as is."""
    if isinstance(frac_bits, jax.core.Tracer):
        return frac_bits
    if isinstance(frac_bits, bool):
        raise TypeError(f"frac_bits must be an integer or integer array, got {frac_bits!r}")
    arr = np.asarray(frac_bits)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise TypeError(f"frac_bits must hold integers, got {frac_bits!r}")
    elif arr.dtype.kind not in "iu":
        raise TypeError(f"frac_bits must be an integer or integer array, got {frac_bits!r}")
    if arr.dtype.kind in "iu" and np.any(arr == NONFINITE_FRAC_BITS):
        raise ValueError(
            f"frac_bits holds NONFINITE_FRAC_BITS ({NONFINITE_FRAC_BITS}), best_frac_bits' flag "
            f"for a tensor or channel with NaN or inf values: got {frac_bits!r}"
        )
    if np.any(np.abs(arr) > MAX_ABS_FRAC_BITS):
        raise ValueError(f"|frac_bits| must be <= {MAX_ABS_FRAC_BITS}, got {frac_bits!r}")
    if arr.ndim == 0:
        return int(arr)
    if arr.ndim == 1:
        return tuple(int(v) for v in arr)
    raise ValueError(
        f"frac_bits must be a scalar or a 1-D per-channel vector, got shape {arr.shape}")


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True, eq=False)
class FixedPointFormat:
    """An N-bit fixed-point format with step ``2**-frac_bits``.

    Attributes:
      bits: total bits of the integer code, sign included.
      frac_bits: fractional bits ``f`` (may be negative: step > 1). An ``int`` for one step per
        tensor, or a tuple / 1-D int array with one entry per channel along ``channel_axis``.
      signed: whether codes may be negative.
      symmetric: for signed formats, drop the most negative two's-complement code so levels are
        symmetric around zero (the SYMOG convention).
      channel_axis: the axis that per-channel ``frac_bits`` index (default ``-1``, the output
        channel of Flax ``Dense``/``Conv`` kernels). Ignored for scalar ``frac_bits``.

    Example:
      >>> fmt = FixedPointFormat(bits=2, frac_bits=1)
      >>> fmt.levels
      array([-0.5,  0. ,  0.5], dtype=float32)
      >>> fmt.int_bits, fmt.num_levels, fmt.max_value
      (0, 3, 0.5)
    """

    bits: int
    frac_bits: Any = 0
    signed: bool = True
    symmetric: bool = True
    channel_axis: int = -1

    def __post_init__(self):
        signed, symmetric = bool(self.signed), bool(self.symmetric)
        object.__setattr__(self, "signed", signed)
        object.__setattr__(self, "symmetric", symmetric)
        object.__setattr__(self, "bits", check_bits(self.bits, signed=signed, symmetric=symmetric))
        object.__setattr__(self, "frac_bits", _normalize_frac_bits(self.frac_bits))
        object.__setattr__(self, "channel_axis", int(self.channel_axis))

    # -- pytree protocol: frac_bits is the only (dynamic) leaf --------------------------------
    def tree_flatten(self):
        fb = self.frac_bits
        if isinstance(fb, (int, tuple)):
            # One int32 array leaf, never a Python int (weakly typed under jit) or a tuple (a
            # pytree node whose entries would each become a separate scalar leaf).
            fb = np.asarray(fb, np.int32)
        return (fb,), (self.bits, self.signed, self.symmetric, self.channel_axis)

    @classmethod
    def tree_unflatten(cls, aux, children):
        # Bypass __post_init__: leaves may be tracers, ShapeDtypeStructs or sentinels.
        obj = object.__new__(cls)
        for name, value in zip(("bits", "signed", "symmetric", "channel_axis"), aux):
            object.__setattr__(obj, name, value)
        object.__setattr__(obj, "frac_bits", children[0])
        return obj

    # -- identity -----------------------------------------------------------------------------
    def _key(self):
        fb = self.frac_bits
        if not isinstance(fb, (int, tuple)):
            fb = _normalize_frac_bits(np.asarray(fb))
        return (self.bits, fb, self.signed, self.symmetric, self.channel_axis)

    def __eq__(self, other):
        return isinstance(other, FixedPointFormat) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        kind = "unsigned" if not self.signed else ("symmetric" if self.symmetric else "twos")
        return f"FixedPointFormat(bits={self.bits}, frac_bits={self.frac_bits!r}, {kind})"

    # -- derived properties -------------------------------------------------------------------
    @property
    def per_channel(self) -> bool:
        """True when ``frac_bits`` holds one value per channel."""
        return np.ndim(self.frac_bits) == 1

    @property
    def code_min(self) -> int:
        """Smallest integer code."""
        return code_range(self.bits, signed=self.signed, symmetric=self.symmetric)[0]

    @property
    def code_max(self) -> int:
        """Largest integer code."""
        return code_range(self.bits, signed=self.signed, symmetric=self.symmetric)[1]

    @property
    def num_levels(self) -> int:
        """Number of representable values (``2**bits - 1`` for signed symmetric)."""
        return self.code_max - self.code_min + 1

    @property
    def step(self):
        """Quantization step ``2**-frac_bits``: a float, or a float32 array per channel."""
        fb = self.frac_bits
        if isinstance(fb, int):
            return float(2.0**-fb)
        if isinstance(fb, jax.core.Tracer):
            return jnp.ldexp(jnp.float32(1.0), -fb.astype(jnp.int32))
        return np.ldexp(np.float32(1.0), -np.asarray(fb, np.int32))

    @property
    def min_value(self):
        """Most negative representable value (0 for unsigned)."""
        return self.code_min * self.step

    @property
    def max_value(self):
        """Largest representable value."""
        return self.code_max * self.step

    @property
    def range(self):
        """``(min_value, max_value)``."""
        return self.min_value, self.max_value

    @property
    def int_bits(self):
        """Integer bits, i.e. bits left of the binary point excluding the sign bit.

        ``bits = sign + int_bits + frac_bits``; negative when the step is below the top bit.
        """
        fb = self.frac_bits if isinstance(self.frac_bits, int) else np.asarray(self.frac_bits)
        return self.bits - int(self.signed) - fb

    @property
    def bits_used(self) -> int:
        """Storage bits per value (the bit-width ``N``)."""
        return self.bits

    @property
    def levels(self) -> np.ndarray:
        """All representable values in increasing order, float32, shape ``(num_levels,)``.

        Only for a per-tensor format; a per-channel one has ``(num_levels, C)``.
        """
        codes = np.arange(self.code_min, self.code_max + 1, dtype=np.float32)
        step = np.asarray(self.step, np.float32)
        return codes * step if step.ndim == 0 else codes[:, None] * step[None, :]

    def codes(self) -> np.ndarray:
        """All integer codes, int32, shape ``(num_levels,)``."""
        return np.arange(self.code_min, self.code_max + 1, dtype=np.int32)

    def step_for(self, x_ndim: int, dtype=jnp.float32) -> jax.Array:
        """The step as an array broadcastable against a tensor of rank ``x_ndim``."""
        step = jnp.asarray(self.step, jnp.float32)
        if step.ndim == 1:
            if not -x_ndim <= self.channel_axis < x_ndim:
                raise ValueError(f"channel_axis={self.channel_axis} is out of range for a "
                                 f"rank-{x_ndim} array")
            shape = [1] * x_ndim
            shape[self.channel_axis % x_ndim] = step.shape[0]
            step = step.reshape(shape)
        return step.astype(dtype)

    def replace_frac_bits(self, frac_bits) -> "FixedPointFormat":
        """The same format with new ``frac_bits``, unvalidated so traced values work."""
        return type(self).tree_unflatten(self.tree_flatten()[1], (frac_bits,))

    def replace(self, **changes) -> "FixedPointFormat":
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)


def check_dtype_holds_levels(fmt: FixedPointFormat, dtype, *, who: str = "quantize") -> None:
    """Raises unless the floating ``dtype`` represents every level of ``fmt`` exactly.

    Three conditions: every integer code fits the significand (``max |code| <= 2**(nmant+1)``:
    bfloat16 holds 8-bit formats, not 9-bit ones; float8_e4m3fn holds 5-bit ones), the step
    ``2**-frac_bits`` is at least the dtype's smallest positive (subnormal) value, and the
    largest level is at most its largest finite value. The last two depend on ``frac_bits``
    and are skipped while it is traced (a format inside jit-traced state); for float32,
    bfloat16 and float64 they always hold (``|frac_bits| <= MAX_ABS_FRAC_BITS``).

    Raises:
      TypeError: ``dtype`` is not a floating type.
      ValueError: a level is not exactly representable; one line naming the dtype, the
        format and the reason.

    Example:
      >>> check_dtype_holds_levels(FixedPointFormat(8, 7), jnp.bfloat16)   # codes <= 127: fine
      >>> check_dtype_holds_levels(FixedPointFormat(8, 30), np.float16)  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ValueError: quantize: float16 cannot hold the levels of ...: the step 2**-30 is below ...
    """
    dt = jnp.dtype(dtype)
    if not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(f"{who}: expected a floating dtype, got {dt}")
    info = jnp.finfo(dt)
    head = f"{who}: {dt.name} cannot hold the levels of {fmt!r}"
    max_code = max(-fmt.code_min, fmt.code_max)
    significand = int(info.nmant) + 1
    if max_code > 2**significand:
        raise ValueError(
            f"{head}: its {significand}-bit significand holds integer codes exactly only up to "
            f"{2**significand}, the format has codes up to {max_code} (use float32, or fewer "
            "bits)"
        )
    smallest, largest = float(info.smallest_subnormal), float(info.max)
    if smallest <= 2.0**-MAX_ABS_FRAC_BITS and 2**MAX_BITS * 2.0**MAX_ABS_FRAC_BITS <= largest:
        return  # no format can leave this dtype's range
    fb = fmt.frac_bits
    if isinstance(fb, jax.core.Tracer):
        return
    fb = np.asarray(fb)
    finest, coarsest = int(fb.max()), int(fb.min())
    if 2.0**-finest < smallest:
        raise ValueError(
            f"{head}: the step 2**-{finest} is below {dt.name}'s smallest positive value "
            f"{smallest:.3g} = 2**{int(np.log2(smallest))} (use float32, or fewer fractional "
            "bits)"
        )
    top = max_code * 2.0**-coarsest
    if top > largest:
        raise ValueError(
            f"{head}: the largest level {max_code} * 2**{-coarsest} = {top:.6g} is above "
            f"{dt.name}'s largest value {largest:.6g} (use float32, or more fractional bits)"
        )


def symmetric_format(bits: int, frac_bits=0, **kw) -> FixedPointFormat:
    """Signed format with ``2**bits - 1`` symmetric levels (SYMOG).

    >>> symmetric_format(3, 2).levels.tolist()
    [-0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75]
    """
    return FixedPointFormat(bits, frac_bits, signed=True, symmetric=True, **kw)


def twos_complement_format(bits: int, frac_bits=0, **kw) -> FixedPointFormat:
    """Signed two's-complement format with ``2**bits`` levels.

    >>> twos_complement_format(2, 0).levels.tolist()
    [-2.0, -1.0, 0.0, 1.0]
    """
    return FixedPointFormat(bits, frac_bits, signed=True, symmetric=False, **kw)


def unsigned_format(bits: int, frac_bits=0, **kw) -> FixedPointFormat:
    """Unsigned format for non-negative values (e.g. ReLU activations).

    >>> unsigned_format(2, 1).levels.tolist()
    [0.0, 0.5, 1.0, 1.5]
    """
    return FixedPointFormat(bits, frac_bits, signed=False, symmetric=False, **kw)
