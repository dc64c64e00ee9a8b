"""Rounding: quantize / to_codes / from_codes / quantize_ste against brute-force nearest levels."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from symog_jax import FixedPointFormat, from_codes, quantize, quantize_ste, to_codes

KINDS = {"symmetric": dict(signed=True, symmetric=True), "twos": dict(signed=True, symmetric=False),
         "unsigned": dict(signed=False, symmetric=False)}


def make_format(bits, kind, frac_bits, channel_axis=-1):
    return FixedPointFormat(bits, frac_bits, channel_axis=channel_axis, **KINDS[kind])


def random_input(rng, shape, fmt):
    """Mostly inside the range, some beyond it, a few exact ties and exact levels."""
    top = np.asarray(fmt.max_value, np.float64)
    step = np.asarray(fmt.step, np.float64)
    if fmt.per_channel:
        axis = fmt.channel_axis % len(shape)
        bshape = [1] * len(shape)
        bshape[axis] = -1
        top, step = top.reshape(bshape), step.reshape(bshape)
    x = rng.uniform(-1.4, 1.4, shape) * top
    tie = (rng.integers(-3, 3, shape) + 0.5) * step            # exactly between two levels
    on = rng.integers(-3, 4, shape) * step                     # exactly on a level
    pick = rng.integers(0, 6, shape)
    x = np.where(pick == 0, tie, np.where(pick == 1, on, x))
    return x.astype(np.float32)


# --------------------------------------------------------------------------------------------
# quantize == brute-force nearest level
# --------------------------------------------------------------------------------------------

def _quantize_and_codes(x, fmt):
    return quantize(x, fmt), to_codes(x, fmt)


_quantize_and_codes_jit = jax.jit(_quantize_and_codes)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("per_channel", [False, True])
def test_quantize_equals_brute_force(kind, per_channel, use_jit, rng, nearest_for_format):
    fn = _quantize_and_codes_jit if use_jit else _quantize_and_codes
    for bits, shape in zip([2, 3, 4, 8], [(7,), (3, 5), (3, 5), (2, 3, 4)]):
        for _ in range(2):
            if per_channel:
                axis = int(rng.integers(-len(shape), len(shape)))
                fb = tuple(int(v) for v in rng.integers(-4, 8, shape[axis]))
                fmt = make_format(bits, kind, fb, channel_axis=axis)
            else:
                fmt = make_format(bits, kind, int(rng.integers(-6, 10)))
            x = random_input(rng, shape, fmt)
            q, codes = fn(jnp.asarray(x), fmt)
            expected_q, expected_codes = nearest_for_format(x, fmt)
            assert q.dtype == jnp.float32 and q.shape == x.shape
            assert codes.dtype == jnp.int32
            np.testing.assert_array_equal(np.asarray(q, np.float64), expected_q)
            np.testing.assert_array_equal(codes, expected_codes)


def test_quantize_by_hand():
    fmt = FixedPointFormat(bits=2, frac_bits=1)                # levels -0.5, 0, 0.5
    x = jnp.array([0.3, -0.9, 7.0, 0.25, -0.25, 0.2499, 0.0, -0.0, -7.0])
    np.testing.assert_array_equal(quantize(x, fmt), [0.5, -0.5, 0.5, 0.0, -0.0, 0.0, 0, 0, -0.5])
    np.testing.assert_array_equal(to_codes(x, fmt), [1, -1, 1, 0, 0, 0, 0, 0, -1])
    # Half to even on the codes: 0.75 / 0.25 = 3 is odd, 1.25 / 0.25 = 5 -> 4, 6 (ties).
    fmt = FixedPointFormat(bits=4, frac_bits=2)
    np.testing.assert_array_equal(quantize(jnp.array([0.625, 0.875, -0.625]), fmt),
                                  [0.5, 1.0, -0.5])
    # Unsigned saturates negatives to 0, two's complement has one extra negative level.
    np.testing.assert_array_equal(
        quantize(jnp.array([-3.0, 1.4, 9.0]), FixedPointFormat(2, 0, signed=False)), [0, 1, 3])
    np.testing.assert_array_equal(
        quantize(jnp.array([-3.0, -1.6, 9.0]), FixedPointFormat(2, 0, symmetric=False)),
        [-2, -2, 1])


def test_quantize_scalar_and_empty(maybe_jit):
    fmt = FixedPointFormat(3, 2)
    q = maybe_jit(quantize)(jnp.float32(0.3), fmt)
    assert q.shape == () and float(q) == 0.25
    q = maybe_jit(quantize)(jnp.zeros((0, 3), jnp.float32), fmt)
    assert q.shape == (0, 3)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("bits", [2, 4, 8, 12])
def test_bfloat16_equals_float32_then_cast(kind, bits, use_jit, rng, nearest_for_format):
    fn = _quantize_and_codes_jit if use_jit else _quantize_and_codes
    codes_fn = jax.jit(to_codes) if use_jit else to_codes
    for fb in (-3, 0, 5):
        fmt = make_format(bits, kind, fb)
        x = jnp.asarray(random_input(rng, (4, 33), fmt)).astype(jnp.bfloat16)
        x32 = np.asarray(x.astype(jnp.float32))
        expected_q, expected_codes = nearest_for_format(x32, fmt)
        if bits > 8:
            # bf16's 8-bit significand cannot hold codes up to 2047 (it rounds 2047 to 2048):
            # quantized bf16 values would not be levels, so quantize refuses.
            with pytest.raises(ValueError, match="bfloat16 cannot hold the levels"):
                fn(x, fmt)
        else:
            q, _ = fn(x, fmt)
            assert q.dtype == jnp.bfloat16
            np.testing.assert_array_equal(np.asarray(q.astype(jnp.float32)), expected_q)
        # Codes are computed at float32 precision: always in range, even where bf16 cannot
        # represent the code.
        np.testing.assert_array_equal(codes_fn(x, fmt), expected_codes)


def test_float16_does_not_overflow():
    # x / step = 2**19 overflows float16 (max 65504); codes must still be right.
    fmt = FixedPointFormat(20, 20)
    x = jnp.array([0.5, 1e-3, -0.25], jnp.float16)
    codes = to_codes(x, fmt)
    np.testing.assert_array_equal(codes, np.round(np.asarray(x, np.float64) * 2**20)
                                  .clip(fmt.code_min, fmt.code_max))
    # float16 cannot hold the levels of a 20-bit format: quantize says so instead of rounding.
    with pytest.raises(ValueError, match="float16 cannot hold the levels"):
        quantize(x, fmt)
    q = quantize(x, FixedPointFormat(8, 20))  # codes <= 127, step 2**-20: subnormal, exact
    assert q.dtype == jnp.float16 and np.all(np.isfinite(np.asarray(q, np.float32)))


def test_vmap(rng, nearest_for_format, maybe_jit):
    for fmt in (FixedPointFormat(3, 2), FixedPointFormat(4, (0, 1, 2, -1, 3))):
        x = random_input(rng, (6, 4, 5), fmt)
        q = maybe_jit(jax.vmap(lambda v: quantize(v, fmt)))(jnp.asarray(x))
        np.testing.assert_array_equal(np.asarray(q, np.float64), nearest_for_format(x, fmt)[0])
        c = maybe_jit(jax.vmap(lambda v: to_codes(v, fmt)))(jnp.asarray(x))
        np.testing.assert_array_equal(c, nearest_for_format(x, fmt)[1])


def test_quantize_has_zero_gradient(maybe_jit):
    fmt = FixedPointFormat(3, 1)
    g = maybe_jit(jax.grad(lambda x: quantize(x, fmt).sum()))(jnp.linspace(-5.0, 5.0, 41))
    np.testing.assert_array_equal(g, np.zeros(41))


def test_integer_input_rejected():
    with pytest.raises(TypeError, match="floating-point"):
        quantize(jnp.arange(3), FixedPointFormat(3, 0))
    with pytest.raises(TypeError, match="codes must be integers"):
        from_codes(jnp.ones(3), FixedPointFormat(3, 0))


# --------------------------------------------------------------------------------------------
# Codes
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(KINDS))
def test_from_codes_to_codes_round_trip(kind, maybe_jit, rng):
    for bits in (2, 5, 12):
        fmt = make_format(bits, kind, int(rng.integers(-5, 10)))
        codes = rng.integers(fmt.code_min, fmt.code_max + 1, (40,)).astype(np.int32)
        values = maybe_jit(from_codes)(jnp.asarray(codes), fmt)
        np.testing.assert_array_equal(np.asarray(values, np.float64),
                                      codes * 2.0 ** -np.float64(fmt.frac_bits))
        np.testing.assert_array_equal(maybe_jit(to_codes)(values, fmt), codes)
    pc = make_format(3, kind, (1, -2, 4), channel_axis=0)
    codes = rng.integers(pc.code_min, pc.code_max + 1, (3, 4)).astype(np.int32)
    values = from_codes(codes, pc)
    np.testing.assert_array_equal(values, codes * np.array([0.5, 4.0, 1 / 16])[:, None])
    np.testing.assert_array_equal(to_codes(values, pc), codes)


def test_to_codes_dtype():
    c = to_codes(jnp.array([100.0, -3.0, 500.0]), FixedPointFormat(8, 0), dtype=jnp.int8)
    assert c.dtype == jnp.int8
    np.testing.assert_array_equal(c, [100, -3, 127])
    c = to_codes(jnp.array([300.0, 3.0]), FixedPointFormat(8, 0, signed=False), dtype=jnp.uint8)
    np.testing.assert_array_equal(c, [255, 3])
    # A dtype too narrow for the code range would wrap around silently: refused.
    with pytest.raises(ValueError, match=r"int8 cannot hold the codes -255..255 of a 9-bit"):
        to_codes(jnp.ones(3), FixedPointFormat(9, 0), dtype=jnp.int8)
    with pytest.raises(ValueError, match="uint8 cannot hold the codes -127..127"):
        to_codes(jnp.ones(3), FixedPointFormat(8, 0), dtype=jnp.uint8)
    with pytest.raises(TypeError, match="dtype must be an integer type, got float32"):
        to_codes(jnp.ones(3), FixedPointFormat(8, 0), dtype=jnp.float32)


# --------------------------------------------------------------------------------------------
# Hypothesis properties (fixed shape, formats as jit pytree arguments: few compilations)
# --------------------------------------------------------------------------------------------

N = 16
FINITE32 = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def format_and_x(draw):
    kind = draw(st.sampled_from(list(KINDS)))
    bits = draw(st.sampled_from([2, 3, 4, 8]))
    fb = draw(st.integers(-6, 12))
    fmt = make_format(bits, kind, fb)
    # Mix raw floats with values expressed in steps so the interesting region is well covered.
    raw = draw(hnp.arrays(np.float32, (N,), elements=FINITE32))
    in_steps = draw(hnp.arrays(np.float32, (N,), elements=st.floats(
        -1.5 * 2 ** bits, 1.5 * 2 ** bits, width=32)))
    use_raw = draw(hnp.arrays(np.bool_, (N,)))
    x = np.where(use_raw, raw, in_steps * np.float32(2.0**-fb)).astype(np.float32)
    return fmt, x


_quantize = jax.jit(quantize)
_to_codes = jax.jit(to_codes)
_from_codes = jax.jit(from_codes)


@settings(max_examples=60, deadline=None)
@given(format_and_x())
def test_property_output_in_level_set_and_nearest(case):
    fmt, x = case
    q = np.asarray(_quantize(x, fmt), np.float64)
    levels = fmt.levels.astype(np.float64)
    assert np.all(np.isin(q, levels))
    # Nearest: no level is strictly closer than the output.
    dist = np.abs(x.astype(np.float64)[:, None] - levels[None, :]).min(axis=1)
    np.testing.assert_array_equal(np.abs(x - q), dist)


@settings(max_examples=60, deadline=None)
@given(format_and_x())
def test_property_idempotent(case):
    fmt, x = case
    q = _quantize(x, fmt)
    np.testing.assert_array_equal(_quantize(q, fmt), q)


@settings(max_examples=60, deadline=None)
@given(format_and_x())
def test_property_symmetric_formats_are_odd(case):
    fmt, x = case
    fmt = FixedPointFormat(fmt.bits, fmt.frac_bits)        # force symmetric
    # Half-to-even is itself symmetric, so this holds exactly, ties included.
    np.testing.assert_array_equal(_quantize(-x, fmt), -np.asarray(_quantize(x, fmt)))


@settings(max_examples=60, deadline=None)
@given(format_and_x(), st.floats(1.0, 1e6, width=32))
def test_property_saturation(case, factor):
    fmt, _ = case
    lo, hi = float(fmt.min_value), float(fmt.max_value)
    step = fmt.step
    above = np.float32([hi + step / 2 + 1e-3 * step, hi * factor + step, np.float32(3e38)])
    below = np.float32([lo - step / 2 - 1e-3 * step, lo * factor - step, np.float32(-3e38)])
    np.testing.assert_array_equal(_quantize(above, fmt), [hi] * 3)
    np.testing.assert_array_equal(_quantize(below, fmt), [lo] * 3)
    np.testing.assert_array_equal(_to_codes(above, fmt), [fmt.code_max] * 3)
    np.testing.assert_array_equal(_to_codes(below, fmt), [fmt.code_min] * 3)


@settings(max_examples=60, deadline=None)
@given(format_and_x())
def test_property_codes_round_trip(case):
    fmt, x = case
    codes = _to_codes(x, fmt)
    assert np.all((np.asarray(codes) >= fmt.code_min) & (np.asarray(codes) <= fmt.code_max))
    np.testing.assert_array_equal(_from_codes(codes, fmt), _quantize(x, fmt))


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(list(KINDS)), st.sampled_from([2, 3, 4, 8, 16]), st.integers(-20, 20),
       st.data())
def test_property_valid_codes_round_trip(kind, bits, fb, data):
    fmt = make_format(bits, kind, fb)
    codes = data.draw(hnp.arrays(np.int32, (N,),
                                 elements=st.integers(fmt.code_min, fmt.code_max)))
    np.testing.assert_array_equal(_to_codes(_from_codes(codes, fmt), fmt), codes)


# --------------------------------------------------------------------------------------------
# Straight-through estimator
# --------------------------------------------------------------------------------------------

def _ste(x, fmt, pass_through):
    return quantize_ste(x, fmt, pass_through=pass_through)


def _ste_vjp(x, fmt, cotangent, pass_through):
    return jax.grad(lambda v: (quantize_ste(v, fmt, pass_through=pass_through)
                               * cotangent).sum())(x)


_STE = {False: (_ste, _ste_vjp),
        True: (jax.jit(_ste, static_argnames="pass_through"),
               jax.jit(_ste_vjp, static_argnames="pass_through"))}


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("per_channel", [False, True])
def test_ste_forward_and_gradient(kind, per_channel, use_jit, rng):
    fb = (1, -1, 3) if per_channel else 2
    fmt = make_format(3, kind, fb)
    x = random_input(rng, (50, 3), fmt)
    # Put some values exactly on the range bounds (where clipped weights sit).
    x[0], x[1] = np.asarray(fmt.max_value, np.float32), np.asarray(fmt.min_value, np.float32)
    lo = np.broadcast_to(np.asarray(fmt.min_value, np.float64), x.shape)
    hi = np.broadcast_to(np.asarray(fmt.max_value, np.float64), x.shape)
    inside = ((x >= lo) & (x <= hi)).astype(np.float32)
    assert 0 < inside.mean() < 1

    fwd, vjp = _STE[use_jit]
    for pass_through, expected in [("range", inside), ("all", np.ones_like(x))]:
        np.testing.assert_array_equal(fwd(jnp.asarray(x), fmt, pass_through), quantize(x, fmt))
        np.testing.assert_array_equal(vjp(jnp.asarray(x), fmt, np.ones_like(x), pass_through),
                                      expected)
        # Chain rule: upstream cotangents pass through unchanged where the gate is open.
        w = rng.standard_normal(x.shape).astype(np.float32)
        np.testing.assert_array_equal(vjp(jnp.asarray(x), fmt, w, pass_through), expected * w)


def test_ste_by_hand():
    fmt = FixedPointFormat(2, 0)                                  # range [-1, 1]
    x = jnp.array([0.4, 3.0, -1.0, 1.0, 1.0001, -1.0001, -0.5])
    g = jax.grad(lambda v: quantize_ste(v, fmt).sum())(x)
    np.testing.assert_array_equal(g, [1, 0, 1, 1, 0, 0, 1])


def test_ste_forward_exact_for_huge_inputs():
    # x + (q - x) loses q when |x| >> |q|; the forward must still be exactly quantize(x).
    fmt = FixedPointFormat(2, 0)
    x = jnp.array([1.2345e8, -3e9, 1e30, jnp.inf, -jnp.inf], jnp.float32)
    for pass_through in ("range", "all"):
        np.testing.assert_array_equal(quantize_ste(x, fmt, pass_through=pass_through),
                                      [1, -1, 1, 1, -1])
    g = jax.grad(lambda v: quantize_ste(v, fmt, pass_through="all").sum())(x)
    np.testing.assert_array_equal(g, [1, 1, 1, 0, 0])


def test_ste_bfloat16_and_vmap():
    fmt = FixedPointFormat(4, 3)
    x = jnp.linspace(-1.5, 1.5, 24, dtype=jnp.float32).reshape(4, 6).astype(jnp.bfloat16)
    y = jax.vmap(lambda v: quantize_ste(v, fmt))(x)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_array_equal(y, quantize(x, fmt))
    g = jax.grad(lambda v: quantize_ste(v, fmt).astype(jnp.float32).sum())(x)
    xf = np.asarray(x, np.float32)
    np.testing.assert_array_equal(np.asarray(g, np.float32),
                                  ((xf >= -0.875) & (xf <= 0.875)).astype(np.float32))


def test_ste_bad_pass_through():
    with pytest.raises(ValueError, match="pass_through must be 'range' or 'all'"):
        quantize_ste(jnp.zeros(3), FixedPointFormat(2, 0), pass_through="none")


def test_from_codes_rejects_out_of_range_codes():
    fmt = FixedPointFormat(bits=2, frac_bits=0)  # codes -1..1
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        from_codes(jnp.array([0, 2], jnp.int32), fmt)


def test_per_channel_step_rejects_out_of_range_axis():
    fmt = FixedPointFormat(bits=4, frac_bits=(1, 2), channel_axis=3)
    with pytest.raises(ValueError, match="channel_axis=3"):
        quantize(jnp.ones((2, 2)), fmt)
