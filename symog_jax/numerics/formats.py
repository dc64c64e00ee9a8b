"""Fixed-point number formats with power-of-two steps (the ``"fixed_point"`` kind of levels).

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

It implements the levels interface :class:`~symog_jax.numerics.levels.Levels`. Two names of
that interface have a fixed-point-specific older meaning here and keep it: :meth:`codes` (all
integer codes) and :attr:`levels` (all values, ``(K, C)`` per channel); the interface's
:meth:`~FixedPointFormat.to_codes` and :meth:`~FixedPointFormat.value_levels` are the general
ones. The rounding itself lives here (:meth:`FixedPointFormat.quantize`,
:meth:`FixedPointFormat.to_codes`); :mod:`symog_jax.numerics.rounding` calls it.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from symog_jax.numerics.levels import Levels

#: Largest supported bit-width: codes must be exactly representable in float32 (24-bit mantissa).
MAX_BITS = 24
#: Fractional bits are limited so that ``2**-frac_bits`` is a normal float32.
MAX_ABS_FRAC_BITS = 100
#: What :func:`~symog_jax.numerics.calibration.best_frac_bits` returns under ``jit`` for a tensor
#: (or channel) holding NaN or inf: far outside ``[-MAX_ABS_FRAC_BITS, MAX_ABS_FRAC_BITS]``, and
#: refused with a message saying so when it reaches a :class:`FixedPointFormat`.
NONFINITE_FRAC_BITS = int(np.iinfo(np.int32).min)
#: The code :meth:`FixedPointFormat.to_codes` gives NaN under ``jit`` with the default
#: ``int32`` codes (concrete NaN raises instead): ``-2**31``, outside the code range of every
#: format, so :func:`~symog_jax.numerics.rounding.from_codes` refuses it. Other integer dtypes
#: use their smallest value (their largest for unsigned dtypes).
NAN_CODE = int(np.iinfo(np.int32).min)


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
class FixedPointFormat(Levels):
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

    kind = "fixed_point"

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

    # -- rounding (the levels interface) -------------------------------------------------------

    def check_fits(self, shape: tuple[int, ...]) -> None:
        """Raises ``ValueError`` unless a per-channel format matches ``shape``'s channel axis."""
        if not self.per_channel:
            return
        if not shape:
            raise ValueError("a per-channel format needs an array with a channel axis, got a "
                             "scalar")
        fb = self.frac_bits
        n = len(fb) if isinstance(fb, tuple) else fb.shape[0]
        if shape[self.channel_axis % len(shape)] != n:
            raise ValueError(f"per-channel format has {n} channels but the array has shape "
                             f"{shape} (channel_axis={self.channel_axis})")

    def _operand(self, x) -> jax.Array:
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"expected a floating-point array, got dtype {x.dtype}")
        self.check_fits(x.shape)
        return x

    def _float_codes(self, x: jax.Array) -> jax.Array:
        """Saturated rounded codes as floats of at least float32 precision.

        Narrow inputs (bfloat16, float16) are upcast first: their mantissa cannot hold every
        code (bf16 rounds 2047 to 2048, outside a 12-bit range) and float16 overflows on
        ``x / step``.
        """
        # Explicitly: float8 types refuse implicit promotion.
        x = x.astype(x.dtype if jnp.finfo(x.dtype).bits >= 32 else jnp.float32)
        step = self.step_for(x.ndim, x.dtype)
        return jnp.clip(jnp.round(x / step), self.code_min, self.code_max)

    def quantize(self, x) -> jax.Array:
        """Rounds to the nearest level, saturating outside the range (ties to even; ``+-inf``
        saturate, NaN stays NaN); ``x``'s shape and floating dtype.

        Raises:
          TypeError: ``x`` is not floating.
          ValueError: ``x``'s dtype cannot hold every level exactly
            (:func:`check_dtype_holds_levels`), or a per-channel format does not fit ``x``.

        Example:
          >>> FixedPointFormat(bits=2, frac_bits=1).quantize(jnp.array([0.3, -0.9, 7.0]))
          Array([ 0.5, -0.5,  0.5], dtype=float32)
        """
        x = self._operand(x)
        check_dtype_holds_levels(self, x.dtype, who="quantize")
        codes = self._float_codes(x)
        return (codes * self.step_for(x.ndim, codes.dtype)).astype(x.dtype)

    def to_codes(self, x, dtype=jnp.int32) -> jax.Array:
        """Integer codes of the nearest levels (``quantize(x) == codes * step``).

        ``+-inf`` saturate. Concrete NaN raises; under ``jit`` NaN becomes :data:`NAN_CODE`
        for ``int32`` (``dtype``'s smallest value, its largest for unsigned dtypes).

        Raises:
          TypeError: ``dtype`` is not an integer type, or ``x`` is not floating.
          ValueError: ``dtype`` cannot hold every code; concrete ``x`` holds NaN; traced ``x``
            and ``dtype`` has no value outside the codes to mark NaN with.

        Example:
          >>> FixedPointFormat(bits=2, frac_bits=1).to_codes(jnp.array([0.3, -0.9, 7.0]))
          Array([ 1, -1,  1], dtype=int32)
        """
        traced = isinstance(x, jax.core.Tracer)
        x = self._operand(x)
        if not jnp.issubdtype(dtype, jnp.integer):
            raise TypeError(f"to_codes: dtype must be an integer type, got {jnp.dtype(dtype)}")
        info = jnp.iinfo(dtype)
        if self.code_min < info.min or self.code_max > info.max:
            raise ValueError(f"to_codes: {jnp.dtype(dtype)} cannot hold the codes "
                             f"{self.code_min}..{self.code_max} of a {self.bits}-bit format")
        codes = self._float_codes(x).astype(dtype)
        if not traced:
            nan = jnp.isnan(x)
            if bool(nan.any()):  # one scalar to the host; the details only when raising
                nan = np.asarray(nan)
                first = tuple(int(i) for i in np.argwhere(nan)[0])
                raise ValueError(f"to_codes: x holds {int(nan.sum())} NaN value(s) (the first "
                                 f"at index {first} of shape {x.shape}); NaN has no code in "
                                 f"{self!r}")
            return codes
        if info.min < self.code_min:
            sentinel = int(info.min)
        elif info.max > self.code_max:
            sentinel = int(info.max)
        else:
            raise ValueError(f"to_codes: {jnp.dtype(dtype)} has no value outside the codes "
                             f"{self.code_min}..{self.code_max} of {self!r} to mark NaN with "
                             "under jit; use a wider dtype (int16, int32)")
        return jnp.where(jnp.isnan(x), jnp.asarray(sentinel, dtype), codes)

    # -- the rest of the levels interface ------------------------------------------------------
    def value_levels(self) -> np.ndarray | None:
        """The values :meth:`quantize` produces, float64 ``(K,)``; ``None`` per channel.

        >>> FixedPointFormat(3, 2).value_levels().tolist()
        [-0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75]
        """
        if self.per_channel:
            return None
        return self.code_levels().astype(np.float64) * np.float64(self.step)

    @property
    def overhead_bits(self) -> int:
        """0: the power-of-two exponents (a few bits per tensor or channel) are not counted,
        as in every weight-memory figure of this project."""
        return 0

    def label(self) -> str:
        """``frac_bits``, or its range per channel: ``'3'``, ``'-1..4'``."""
        fb = self.concrete().frac_bits
        return str(fb) if isinstance(fb, int) else f"{min(fb)}..{max(fb)}"

    def concrete(self) -> "FixedPointFormat":
        """The format with ``frac_bits`` as a Python int or tuple (e.g. after ``device_get`` of
        an optimizer state, where it is an int32 array)."""
        return FixedPointFormat(self.bits, np.asarray(self.frac_bits), signed=self.signed,
                                symmetric=self.symmetric, channel_axis=self.channel_axis)

    def to_record(self) -> dict:
        """``{"kind": "fixed_point", "bits", "frac_bits" (int or list), "signed", "symmetric",
        "channel_axis"}``."""
        fb = self.concrete().frac_bits
        return {"kind": self.kind, "bits": self.bits,
                "frac_bits": list(fb) if isinstance(fb, tuple) else int(fb),
                "signed": self.signed, "symmetric": self.symmetric,
                "channel_axis": self.channel_axis}

    @classmethod
    def from_record(cls, record, arrays=None) -> "FixedPointFormat":
        """The format of a record; ``signed``, ``symmetric`` and ``channel_axis`` default to
        ``True``, ``True``, ``-1`` (older report records lack the last)."""
        fb = record["frac_bits"]
        fb = tuple(int(v) for v in fb) if isinstance(fb, (list, tuple)) else int(fb)
        return cls(int(record["bits"]), fb, signed=bool(record.get("signed", True)),
                   symmetric=bool(record.get("symmetric", True)),
                   channel_axis=int(record.get("channel_axis", -1)))

    @classmethod
    def examples(cls):
        return [(cls(2, 1), (6, 3)), (cls(4, 3), (5, 4)),
                (cls(3, 2, symmetric=False), (6, 2)), (cls(3, 1, signed=False), (4, 3)),
                (cls(3, (1, 2, 0)), (4, 3)), (cls(2, (0, 3), channel_axis=0), (2, 3, 2))]


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
