"""Step search and SQNR against exhaustive numpy brute force and closed forms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from symog_jax import (
    FixedPointFormat,
    best_frac_bits,
    choose_format,
    quantization_sqnr_db,
    sqnr_db,
)

KINDS = {"symmetric": dict(signed=True, symmetric=True), "twos": dict(signed=True, symmetric=False),
         "unsigned": dict(signed=False, symmetric=False)}
#: The exhaustive search range of the reference: far wider than any sensible step.
EXPONENTS = np.arange(-40, 61)

DISTRIBUTIONS = {
    "gaussian": lambda rng, n: rng.standard_normal(n),
    "uniform": lambda rng, n: rng.uniform(-2.0, 3.0, n),
    "laplace": lambda rng, n: rng.laplace(0.0, 0.3, n),
    "cauchy": lambda rng, n: rng.standard_cauchy(n),
    "pareto": lambda rng, n: rng.pareto(0.7, n) * rng.choice([-1.0, 1.0], n),
    "tiny": lambda rng, n: rng.standard_normal(n) * 1e-6,
    "large": lambda rng, n: rng.standard_normal(n) * 1e3,
    "positive": lambda rng, n: rng.exponential(0.1, n),
    "outlier": lambda rng, n: np.concatenate([rng.standard_normal(n - 1) * 1e-2, [40.0]]),
    "zeros": lambda rng, n: np.zeros(n),
    "constant": lambda rng, n: np.full(n, -0.3),
}


def sq_error_np(x, bits, kind, frac_bits, axes=None):
    """Squared error of nearest-level rounding with saturation, float64, by the definition."""
    lo, hi = {"symmetric": (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1),
              "twos": (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1),
              "unsigned": (0, 2**bits - 1)}[kind]
    x = np.asarray(x, np.float64)
    step = 2.0 ** -np.asarray(frac_bits, np.float64)
    q = np.clip(np.round(x / step), lo, hi) * step
    return ((x - q) ** 2).sum(axis=axes)


def brute_force_min_error(x, bits, kind, axes=None):
    """min over EXPONENTS of the squared error (per channel when ``axes`` leaves one axis)."""
    return np.min([sq_error_np(x, bits, kind, f, axes) for f in EXPONENTS], axis=0)


def assert_optimal(err, best_err):
    # float32 accumulation inside the library: allow a relative slack of 1e-5.
    np.testing.assert_array_less(err, best_err * (1 + 1e-5) + 1e-30)


def _best(x, bits, kind, channel_axis=None):
    return best_frac_bits(x, bits, channel_axis=channel_axis, **KINDS[kind])


_best_jit = jax.jit(_best, static_argnums=(1, 2, 3))


def test_hand_case():
    x = jnp.array([0.1, -0.26, 0.24, 0.0])
    # step 0.25: errors 0.1^2 + 0.01^2 + 0.01^2 = 0.0102; step 0.5: 0.1252; step 0.125: 0.03205.
    assert int(best_frac_bits(x, bits=2)) == 2
    assert choose_format(x, bits=2) == FixedPointFormat(2, 2)
    assert choose_format(x, bits=2).step == 0.25
    np.testing.assert_allclose(sq_error_np(x, 2, "symmetric", 2), 0.0102, rtol=1e-6)
    # 3 bits (levels up to 3 * step): step 0.125 gives 0.1->0.125, 0.26->0.25, 0.24->0.25.
    assert int(best_frac_bits(x, bits=3)) == 3


@pytest.mark.parametrize("dist", list(DISTRIBUTIONS))
@pytest.mark.parametrize("kind", list(KINDS))
def test_per_tensor_error_is_brute_force_minimum(dist, kind, use_jit, rng):
    fn = _best_jit if use_jit else _best
    for bits, n in [(2, 257), (3, 64), (4, 1000), (8, 300)]:
        x = DISTRIBUTIONS[dist](rng, n).astype(np.float32)
        fb = fn(jnp.asarray(x), bits, kind)
        assert fb.dtype == jnp.int32 and fb.shape == ()
        assert_optimal(sq_error_np(x, bits, kind, int(fb)), brute_force_min_error(x, bits, kind))


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("channel_axis", [-1, 0])
def test_per_channel_error_is_brute_force_minimum(kind, channel_axis, use_jit, rng):
    fn = _best_jit if use_jit else _best
    dists = list(DISTRIBUTIONS)
    shape = [3, 4, len(dists)]
    shape[channel_axis], shape[-1] = shape[-1], shape[channel_axis]
    shape = tuple(shape)
    axis = channel_axis % 3
    axes = tuple(a for a in range(3) if a != axis)
    for bits in (2, 5):
        # One distribution per channel: scales differ by up to 1e9 between channels.
        cols = [DISTRIBUTIONS[d](rng, int(np.prod(shape)) // shape[axis]) for d in dists]
        x = np.moveaxis(np.stack(cols).reshape((shape[axis],) + tuple(
            s for a, s in enumerate(shape) if a != axis)), 0, axis).astype(np.float32)
        fb = fn(jnp.asarray(x), bits, kind, channel_axis)
        assert fb.shape == (shape[axis],) and fb.dtype == jnp.int32
        err = sq_error_np(x, bits, kind, np.expand_dims(np.asarray(fb), axes), axes)
        assert_optimal(err, brute_force_min_error(x, bits, kind, axes))


def test_ties_go_to_the_larger_range():
    # All-zero data: every step is exact, the smallest exponent tried wins; 0 here.
    assert int(best_frac_bits(jnp.zeros(5), 4)) == 0
    # x on the coarse grid 4 * k: every finer step is exact too; the coarsest exact one wins.
    x = jnp.array([4.0, -4.0, 0.0])
    fb = int(best_frac_bits(x, 2))
    assert fb == -2
    assert sq_error_np(x, 2, "symmetric", fb) == 0.0


def test_scalar_input_and_bfloat16():
    # 0.3 at 2 bits: step 0.5 -> error 0.04, 0.25 -> 0.0025, 0.125 (clipped) -> 0.030625.
    assert int(best_frac_bits(jnp.float32(0.3), 2)) == 2
    x = jnp.asarray(np.random.default_rng(0).standard_normal(200), jnp.bfloat16)
    fb = int(best_frac_bits(x, 4))
    xf = np.asarray(x.astype(jnp.float32))
    assert_optimal(sq_error_np(xf, 4, "symmetric", fb), brute_force_min_error(xf, 4, "symmetric"))


def test_choose_format(rng):
    w = (rng.standard_normal((5, 3)) * np.array([1e-3, 1.0, 30.0])).astype(np.float32)
    fmt = choose_format(w, bits=4, per_channel=True)
    assert isinstance(fmt.frac_bits, tuple) and len(fmt.frac_bits) == 3
    assert fmt.bits == 4 and fmt.signed and fmt.symmetric and fmt.channel_axis == -1
    err = sq_error_np(w, 4, "symmetric", np.asarray(fmt.frac_bits)[None, :], axes=0)
    assert_optimal(err, brute_force_min_error(w, 4, "symmetric", axes=0))
    fmt = choose_format(np.abs(w), bits=3, signed=False)
    assert isinstance(fmt.frac_bits, int) and not fmt.signed
    assert_optimal(sq_error_np(np.abs(w), 3, "unsigned", fmt.frac_bits),
                   brute_force_min_error(np.abs(w), 3, "unsigned"))


def test_bad_input():
    with pytest.raises(TypeError, match="floating"):
        best_frac_bits(jnp.arange(4), 2)
    with pytest.raises(ValueError, match="num_candidates must be >= 1"):
        best_frac_bits(jnp.ones(4), 2, num_candidates=0)
    with pytest.raises(ValueError, match="too small"):
        best_frac_bits(jnp.ones(4), 1)
    with pytest.raises(ValueError, match=r"channel_axis=2 is out of range.*\(3, 4\)"):
        best_frac_bits(jnp.ones((3, 4)), 2, channel_axis=2)
    with pytest.raises(ValueError, match="channel_axis=-1 is out of range"):
        choose_format(np.float32(1.0), bits=2, per_channel=True)
    with pytest.raises(TypeError, match="bits must be an integer"):
        best_frac_bits(jnp.ones(4), 2.5)
    with pytest.raises(ValueError, match="NaN or inf"):
        choose_format(np.array([1.0, np.nan]), bits=2)
    with pytest.raises(ValueError, match="NaN or inf"):
        choose_format(np.array([1.0, np.inf]), bits=2)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, (24,), elements=st.floats(-1e3, 1e3, width=32).map(
           lambda v: v if abs(v) >= 1e-30 else 0.0)),
       st.integers(-20, 20), st.sampled_from([2, 3, 5]))
def test_property_power_of_two_scale_equivariance(x, k, bits):
    # Scaling by 2**k is exact, so every candidate's error scales by 4**k: f shifts by -k.
    # (Only while x * 2**k stays a normal float: XLA on CPU flushes subnormals to zero.)
    fb = int(_best_jit(jnp.asarray(x), bits, "symmetric"))
    fb_scaled = int(_best_jit(jnp.asarray(x * np.float32(2.0**k)), bits, "symmetric"))
    if np.any(x != 0):
        assert fb_scaled == fb - k
    assert_optimal(sq_error_np(x, bits, "symmetric", fb),
                   brute_force_min_error(x, bits, "symmetric"))


# --------------------------------------------------------------------------------------------
# SQNR
# --------------------------------------------------------------------------------------------

def sqnr_np(x, xq, axis=None):
    x, xq = np.asarray(x, np.float64), np.asarray(xq, np.float64)
    return 10.0 * np.log10((x**2).sum(axis=axis) / ((x - xq) ** 2).sum(axis=axis))


def test_sqnr_closed_form(rng, maybe_jit):
    fn = maybe_jit(sqnr_db, static_argnames="axis")
    x = rng.standard_normal((6, 5)).astype(np.float32)
    xq = (x + rng.standard_normal((6, 5)) * 0.05).astype(np.float32)
    np.testing.assert_allclose(fn(x, xq), sqnr_np(x, xq), rtol=1e-5)
    np.testing.assert_allclose(fn(x, xq, axis=0), sqnr_np(x, xq, axis=0), rtol=1e-5)
    np.testing.assert_allclose(fn(x, xq, axis=(0, 1)), sqnr_np(x, xq), rtol=1e-5)
    # By hand: 10 log10(2 / 0.01) = 23.0103 dB.
    np.testing.assert_allclose(fn(jnp.array([1.0, 1.0]), jnp.array([1.0, 0.9])),
                               10 * np.log10(2 / 0.01), rtol=1e-5)
    assert fn(x, x) == np.inf
    xq2 = xq.copy()
    xq2[:, 2] = x[:, 2]
    per_col = np.asarray(fn(x, xq2, axis=0))
    assert per_col[2] == np.inf and np.all(np.isfinite(np.delete(per_col, 2)))


def test_sqnr_shape_mismatch():
    with pytest.raises(ValueError, match=r"shapes differ, \(3,\) vs \(4,\)"):
        sqnr_db(jnp.ones(3), jnp.ones(4))


def test_quantization_sqnr(rng, nearest_for_format):
    x = rng.standard_normal(500).astype(np.float32)
    for fmt in (FixedPointFormat(2, 0), FixedPointFormat(4, 2), FixedPointFormat(8, 5)):
        np.testing.assert_allclose(quantization_sqnr_db(x, fmt),
                                   sqnr_np(x, nearest_for_format(x, fmt)[0]), rtol=1e-5)
    # Roughly 6 dB per bit for a well-scaled Gaussian.
    s4 = float(quantization_sqnr_db(x, choose_format(x, 4)))
    s8 = float(quantization_sqnr_db(x, choose_format(x, 8)))
    assert 20 < s8 - s4 < 28
    assert quantization_sqnr_db(jnp.array([0.5, -0.25]), FixedPointFormat(4, 2)) == np.inf
