"""MSE-optimal uniform steps against independent truth: closed forms, literature values, Monte
Carlo, generic numerical integration and brute-force step grids; formats derived from them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from symog_jax.numerics.calibration import best_frac_bits
from symog_jax.numerics.formats import FixedPointFormat
from symog_jax.numerics.optimal_step import (
    DB_PER_BIT,
    DISTRIBUTIONS,
    QUANTIZERS,
    fixed_point_format_for,
    optimal_uniform_step,
    quantizer_mse,
)

SQRT3 = math.sqrt(3.0)
LAMBDA = math.sqrt(2.0)


def gaussian_pdf(x):
    return np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def laplace_pdf(x):
    return 0.5 * LAMBDA * np.exp(-LAMBDA * np.abs(x))


def uniform_pdf(x):
    return np.where(np.abs(x) <= SQRT3, 1.0 / (2.0 * SQRT3), 0.0)


PDFS = {"gaussian": (gaussian_pdf, 14.0), "laplacian": (laplace_pdf, 45.0),
        "uniform": (uniform_pdf, SQRT3)}
SAMPLERS = {"gaussian": lambda rng, n: rng.standard_normal(n),
            "laplacian": lambda rng, n: rng.laplace(0.0, 1.0 / LAMBDA, n),
            "uniform": lambda rng, n: rng.uniform(-SQRT3, SQRT3, n)}


def levels_and_thresholds(step, bits, quantizer):
    """Levels and decision thresholds of a quantizer, written out independently."""
    if quantizer == "midrise":
        k = np.arange(-(2 ** (bits - 1)), 2 ** (bits - 1))
        levels = (k + 0.5) * step
    else:
        lo, hi = {"symmetric": (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1),
                  "twos": (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1),
                  "unsigned": (0, 2**bits - 1)}[quantizer]
        levels = np.arange(lo, hi + 1) * step
    return levels, 0.5 * (levels[1:] + levels[:-1])


def integrate_mse(step, bits, distribution, quantizer):
    """E[(x - Q(x))^2] by composite Simpson on every decision cell (generic numerics, no erf)."""
    pdf, reach = PDFS[distribution]
    levels, thresholds = levels_and_thresholds(step, bits, quantizer)
    lo_x = 0.0 if quantizer == "unsigned" else -reach
    # 0 (the Laplace kink) and a uniform mesh are breakpoints as well as the thresholds
    edges = np.unique(np.concatenate([np.linspace(lo_x, reach, 201), [0.0], thresholds]))
    edges = edges[(edges >= lo_x) & (edges <= reach)]
    weight = 2.0 if quantizer == "unsigned" else 1.0     # density of |X| on x >= 0
    total = 0.0
    for a, b in zip(edges[:-1], edges[1:]):
        level = levels[np.searchsorted(thresholds, 0.5 * (a + b))]
        x = np.linspace(a, b, 2001)
        y = weight * (x - level) ** 2 * pdf(x)
        total += (b - a) / 6000 * (y[0] + y[-1] + 4 * y[1:-1:2].sum() + 2 * y[2:-1:2].sum())
    return total


def uniform_symmetric_mse_closed_form(step, bits):
    """E[(x - Q(x))^2] for U(-a, a), a = sqrt 3, symmetric quantizer with M = 2^(N-1) - 1.

    Overload (t = (M + 1/2) step <= a): (2M + 1) step^3 / (24 a) + ((a - M step)^3 - step^3/8)/(3a).
    No overload: (step^2 / a) * step * g(a / step), g(T) = int_0^T (v - round v)^2 dv.
    """
    a, m = SQRT3, 2 ** (bits - 1) - 1
    if (m + 0.5) * step <= a:
        return (2 * m + 1) * step**3 / (24 * a) + ((a - m * step) ** 3 - step**3 / 8) / (3 * a)
    t = a / step
    n = math.floor(t + 0.5)                    # cells 0..n-1 full, cell n partial
    g = n / 12.0 - 1.0 / 24.0 if n else 0.0    # g(n - 1/2) = (n - 1/2) / 12
    g += ((t - n) ** 3 + 0.125) / 3.0 if n else t**3 / 3.0
    return step**3 * g / a


# -- 1. closed forms ------------------------------------------------------------------------

@pytest.mark.parametrize("bits", range(1, 17))
def test_uniform_distribution_closed_form(bits):
    """U(-sqrt3, sqrt3): the levels tile the support. Step 2 sqrt3 / L, MSE step^2 / 12, so
    SQNR = 20 log10(L) with L = 2^N (mid-rise, and unsigned on the half-distribution) or
    2^N - 1 (symmetric)."""
    mid = optimal_uniform_step(bits, "uniform", "midrise")
    assert mid.step == pytest.approx(2 * SQRT3 / 2**bits, rel=1e-8)
    assert mid.mse == pytest.approx(mid.step**2 / 12, rel=1e-8)
    assert mid.sqnr_db == pytest.approx(bits * DB_PER_BIT, abs=1e-7)
    if bits >= 2:
        sym = optimal_uniform_step(bits, "uniform", "symmetric")
        assert sym.step == pytest.approx(2 * SQRT3 / (2**bits - 1), rel=1e-8)
        assert sym.sqnr_db == pytest.approx(20 * math.log10(2**bits - 1), abs=1e-7)
        assert sym.num_levels == 2**bits - 1
    uns = optimal_uniform_step(bits, "uniform", "unsigned")
    assert uns.step == pytest.approx(2 * SQRT3 / (2 ** (bits + 1) - 1), rel=1e-8)


@pytest.mark.parametrize("bits", [2, 3, 5])
def test_uniform_mse_formula_at_any_step(bits):
    best = 2 * SQRT3 / (2**bits - 1)
    for step in best * np.array([0.3, 0.7, 0.95, 1.0, 1.05, 1.4, 2.5, 7.0]):
        assert quantizer_mse(step, bits, "uniform") == pytest.approx(
            uniform_symmetric_mse_closed_form(step, bits), rel=1e-12)


def test_one_bit_midrise_is_the_conditional_mean():
    """The 1-bit quantizer +-d has its optimum at d = E|X| and error 1 - (E|X|)^2."""
    g = optimal_uniform_step(1, "gaussian", "midrise")
    assert g.step / 2 == pytest.approx(math.sqrt(2 / math.pi), rel=1e-8)
    assert g.mse == pytest.approx(1 - 2 / math.pi, rel=1e-12)
    lap = optimal_uniform_step(1, "laplacian", "midrise")
    assert lap.step / 2 == pytest.approx(1 / math.sqrt(2), rel=1e-8)
    assert lap.mse == pytest.approx(0.5, rel=1e-12)


# Max (1960), Table II; reprinted as Table 1 of Lin, Talathi & Annapureddy (2016).
MAX_1960 = {"gaussian": [(1.596, 0.3634), (0.9957, 0.1188), (0.5860, 0.03744), (0.3352, 0.01154)],
            "laplacian": [(1.414, 0.5), (1.087, 0.1963), (0.7309, 0.07175), (0.4610, 0.02535)]}


@pytest.mark.parametrize("distribution", sorted(MAX_1960))
def test_midrise_matches_published_tables(distribution):
    for bits, (step, mse) in enumerate(MAX_1960[distribution], start=1):
        r = optimal_uniform_step(bits, distribution, "midrise")
        assert r.step == pytest.approx(step, abs=6e-4), bits
        assert r.mse == pytest.approx(mse, rel=2e-3), bits


def test_unsigned_is_the_positive_half_of_symmetric_with_one_more_bit():
    for d in DISTRIBUTIONS:
        for bits in (1, 3, 7):
            u = optimal_uniform_step(bits, d, "unsigned")
            s = optimal_uniform_step(bits + 1, d, "symmetric")
            assert (u.step, u.mse) == pytest.approx((s.step, s.mse), rel=1e-12)


# -- 2. independent numerics ----------------------------------------------------------------

@pytest.mark.parametrize("quantizer", QUANTIZERS)
@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_mse_matches_numerical_integration(distribution, quantizer):
    for bits in (1, 2, 4, 6):
        if quantizer == "symmetric" and bits == 1:
            continue
        best = optimal_uniform_step(bits, distribution, quantizer).step
        for step in best * np.array([0.5, 1.0, 1.7]):
            ref = integrate_mse(step, bits, distribution, quantizer)
            assert quantizer_mse(step, bits, distribution, quantizer) == pytest.approx(
                ref, rel=1e-9, abs=1e-15), (bits, step)


@pytest.mark.parametrize("quantizer", ["symmetric", "midrise"])
@pytest.mark.parametrize("distribution", ["gaussian", "laplacian"])
def test_monte_carlo(distribution, quantizer):
    """1e6 samples: the sample MSE at the optimal step agrees within 5 standard errors."""
    rng = np.random.default_rng(123)
    x = SAMPLERS[distribution](rng, 1_000_000)
    for bits in range(2, 9):
        r = optimal_uniform_step(bits, distribution, quantizer)
        levels, thresholds = levels_and_thresholds(r.step, bits, quantizer)
        err2 = (x - levels[np.searchsorted(thresholds, x)]) ** 2
        se = err2.std() / math.sqrt(x.size)
        assert abs(err2.mean() - r.mse) < 5 * se, (bits, err2.mean(), r.mse, se)


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_optimizer_agrees_with_brute_force_grid(distribution, quantizer):
    for bits in (1, 2, 3, 5, 8, 12):
        if quantizer == "symmetric" and bits == 1:
            continue
        r = optimal_uniform_step(bits, distribution, quantizer)
        grid = r.step * np.exp(np.linspace(-0.4, 0.4, 801))
        mses = np.array([quantizer_mse(s, bits, distribution, quantizer) for s in grid])
        assert mses.min() >= r.mse * (1 - 1e-12)
        spacing = 0.8 / 800
        assert abs(math.log(grid[np.argmin(mses)] / r.step)) <= spacing + 1e-9


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_mse_is_unimodal_in_the_step(distribution):
    """Over clipping points from 0.05 to 80 standard deviations the error falls, then rises."""
    for quantizer in QUANTIZERS:
        for bits in (1, 2, 3, 4, 6, 9, 13):
            if quantizer == "symmetric" and bits == 1:
                continue
            r = optimal_uniform_step(bits, distribution, quantizer)
            steps = r.step * np.exp(np.linspace(-4.0, 4.0, 120))
            v = np.array([quantizer_mse(s, bits, distribution, quantizer) for s in steps])
            dv = np.diff(v)
            signs = np.sign(np.where(np.abs(dv) > 1e-12 * v[1:], dv, 0.0))
            signs = signs[signs != 0]
            assert signs[0] == -1 and signs[-1] == 1
            assert np.count_nonzero(signs[1:] != signs[:-1]) == 1, (quantizer, bits)


def test_high_resolution_slope():
    """6.02 dB per bit: exactly approached for the uniform density; from below, and growing
    toward it, for Gaussian and Laplacian (whose optimal clipping range grows with N)."""
    sq = {d: [optimal_uniform_step(b, d).sqnr_db for b in range(2, 17)] for d in DISTRIBUTIONS}
    slopes = {d: np.diff(v) for d, v in sq.items()}
    assert np.all(np.abs(slopes["uniform"][6:] - DB_PER_BIT) < 0.03)
    for d in ("gaussian", "laplacian"):
        high = slopes[d][6:]                         # 8 -> 9 .. 15 -> 16 bits
        assert np.all(high < DB_PER_BIT) and np.all(high > 5.0), (d, high)
        assert np.all(np.diff(high) > 0), (d, high)
    print({d: np.round(s, 3).tolist() for d, s in slopes.items()})


def test_empirical_sample():
    rng = np.random.default_rng(0)
    x = rng.uniform(-SQRT3, SQRT3, 200_000)
    r = optimal_uniform_step(4, x)
    assert r.distribution == "empirical"
    assert r.step == pytest.approx(2 * SQRT3 / 15, rel=0.01)
    assert r.signal_power == pytest.approx(float(np.mean(x * x)))
    # brute force on the sample itself
    g = rng.standard_normal(50_000) * 3.0
    r = optimal_uniform_step(3, g)
    grid = r.step * np.exp(np.linspace(-0.5, 0.5, 1001))
    mses = [quantizer_mse(s, 3, g) for s in grid]
    assert min(mses) >= r.mse * (1 - 1e-9)
    assert r.step / 3.0 == pytest.approx(optimal_uniform_step(3, "gaussian").step, rel=0.02)
    # unsigned on non-negative values; a sample on the grid is reproduced exactly
    assert optimal_uniform_step(2, np.abs(g), "unsigned").step > 0
    exact = optimal_uniform_step(3, np.array([-0.75, -0.25, 0.0, 0.5, 0.75]))
    assert exact.step == pytest.approx(0.25, rel=1e-10) and exact.mse < 1e-20


@pytest.mark.parametrize("call, match", [
    (lambda: optimal_uniform_step(1), "midrise"),
    (lambda: optimal_uniform_step(0, "gaussian", "midrise"), "bits must be in 1..16"),
    (lambda: optimal_uniform_step(17), "bits must be in"),
    (lambda: optimal_uniform_step(4, "cauchy"), "distribution must be one of"),
    (lambda: optimal_uniform_step(4, "gaussian", "floor"), "quantizer must be one of"),
    (lambda: optimal_uniform_step(4, np.array([])), "empty"),
    (lambda: optimal_uniform_step(4, np.zeros(5)), "all zeros"),
    (lambda: optimal_uniform_step(4, np.array([1.0, np.nan])), "NaN"),
    (lambda: optimal_uniform_step(4, np.array([1.0, -1.0]), "unsigned"), "non-negative"),
    (lambda: quantizer_mse(0.0, 4), "positive"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_bits_must_be_int():
    with pytest.raises(TypeError, match="integer"):
        optimal_uniform_step(4.0)
    with pytest.raises(TypeError, match="integer"):
        optimal_uniform_step(True, "gaussian", "midrise")


# -- 3. formats ----------------------------------------------------------------------------

@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_format_from_scale(distribution):
    for bits in (2, 4, 8):
        for sigma in (1e-3, 0.05, 0.3, 7.0):
            step = optimal_uniform_step(bits, distribution).step * sigma
            fmt = fixed_point_format_for(sigma, bits, distribution)
            assert fmt == FixedPointFormat(bits, math.floor(-math.log2(step) + 0.5))
            assert abs(math.log2(fmt.step / step)) <= 0.5


def test_format_of_weights_and_relu_activations():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 32)) * 0.02 + 0.001
    rms = math.sqrt(float(np.mean(w * w)))
    assert fixed_point_format_for(w, 6) == fixed_point_format_for(rms, 6)
    relu = np.maximum(rng.standard_normal(10_000) * 1.5, 0.0)
    fmt = fixed_point_format_for(relu, 4)
    pos = relu[relu > 0]
    step = optimal_uniform_step(4, "gaussian", "unsigned").step * math.sqrt(np.mean(pos**2))
    assert not fmt.signed and fmt.frac_bits == math.floor(-math.log2(step) + 0.5)
    assert fixed_point_format_for(relu, 4, signed=True).symmetric
    one = fixed_point_format_for(relu, 1)        # 1-bit unsigned: levels 0 and step
    assert (one.bits, one.signed) == (1, False)
    # scaling a tensor by 2^k shifts frac_bits by -k
    for k in (-5, 3):
        assert fixed_point_format_for(w * 2.0**k, 6).frac_bits == \
            fixed_point_format_for(w, 6).frac_bits - k


def test_mse_rounding_picks_the_better_neighbour():
    for bits in range(2, 9):
        for sigma in (0.013, 0.1, 0.77):
            log_fmt = fixed_point_format_for(sigma, bits, rounding="log")
            mse_fmt = fixed_point_format_for(sigma, bits, rounding="mse")
            assert abs(mse_fmt.frac_bits - log_fmt.frac_bits) <= 1

            def err(f):
                return quantizer_mse(f.step / sigma, bits)
            assert err(mse_fmt) <= err(log_fmt) * (1 + 1e-12)
            for other in (mse_fmt.frac_bits - 1, mse_fmt.frac_bits + 1):
                assert err(mse_fmt) <= quantizer_mse(2.0**-other / sigma, bits) + 1e-18


def test_empirical_mse_rounding_matches_exhaustive_power_of_two_search():
    rng = np.random.default_rng(2)
    for bits in (2, 3, 5, 8):
        x = rng.standard_normal(20_000).astype(np.float32) * 0.1
        fmt = fixed_point_format_for(x, bits, "empirical", rounding="mse")
        assert fmt.frac_bits == int(best_frac_bits(x, bits))


@pytest.mark.parametrize("x, kwargs, match", [
    (np.array([]), {}, "empty"),
    (np.zeros(4), {"signed": True}, "all zeros"),
    (np.zeros(4), {}, "no positive"),
    (np.zeros(4), {"signed": False}, "no positive"),
    (np.array([1.0, np.inf]), {}, "NaN or inf"),
    (np.array([1.0, -1.0]), {"signed": False}, "negative"),
    (0.1, {"distribution": "empirical"}, "empirical"),
    (-0.1, {}, "positive"),
    (np.ones(3), {"rounding": "up"}, "rounding"),
    (np.ones(3), {"distribution": "cauchy"}, "distribution"),
    (np.ones(3), {"bits": 1, "signed": True}, "at least 2 bits"),
    (np.ones(3), {"bits": 17}, "bits must be in"),
])
def test_format_bad_input(x, kwargs, match):
    kwargs = {"bits": 4, **kwargs}
    with pytest.raises(ValueError, match=match) as info:
        fixed_point_format_for(x, **kwargs)
    assert "\n" not in str(info.value)
