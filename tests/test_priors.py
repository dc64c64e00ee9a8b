"""The SYMOG mixture prior against a float64 numpy evaluation and finite differences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from symog_jax import FixedPointFormat, mixture_prior_grad, mixture_prior_nll

SQRT_2PI = np.sqrt(2.0 * np.pi)


def levels_np(bits, frac_bits, symmetric=True, signed=True):
    top = 2 ** (bits - 1) - 1
    lo = 0 if not signed else (-top if symmetric else -top - 1)
    hi = 2**bits - 1 if not signed else top
    return np.arange(lo, hi + 1, dtype=np.float64) * 2.0 ** -frac_bits


def nll_exact_np(w, mu, sigma, pi=None):
    """-log sum_k pi_k N(w; mu_k, sigma^2), written directly with np.exp (float64)."""
    w = np.asarray(w, np.float64)[..., None]
    pi = np.full(len(mu), 1.0 / len(mu)) if pi is None else np.asarray(pi, np.float64)
    dens = pi * np.exp(-((w - mu) ** 2) / (2 * sigma**2)) / (sigma * SQRT_2PI)
    return -np.log(dens.sum(axis=-1))


def nll_nearest_np(w, mu, sigma, pi=None):
    """(w - mu_*)^2 / (2 sigma^2) - log pi_* + log sigma + log(2 pi) / 2 with mu_* the nearest."""
    w = np.asarray(w, np.float64)
    pi = np.full(len(mu), 1.0 / len(mu)) if pi is None else np.asarray(pi, np.float64)
    k = np.abs(w[..., None] - mu).argmin(axis=-1)
    return (w - mu[k]) ** 2 / (2 * sigma**2) - np.log(pi[k]) + np.log(sigma * SQRT_2PI)


def central_difference(f, w, h):
    """Elementwise derivative of an elementwise float64 function."""
    return (f(w + h) - f(w - h)) / (2 * h)


def away_from_midpoints(rng, n, mu, margin):
    """Weights at least ``margin`` (in steps) from every midpoint between levels."""
    step = mu[1] - mu[0]
    k = rng.integers(0, len(mu), n)
    return mu[k] + rng.uniform(-(0.5 - margin), 0.5 - margin, n) * step


def _nll(w, fmt, sigma, mixing=None, form="exact"):
    return mixture_prior_nll(w, fmt, sigma, mixing=mixing, form=form)


def _grad(w, fmt, sigma, mixing=None, form="nearest"):
    return mixture_prior_grad(w, fmt, sigma, mixing=mixing, form=form)


# Module-level jitted versions: the format (frac_bits traced), sigma and mixing are arguments,
# so every test with the same bit-width and shape reuses one compilation.
_NLL = {False: _nll, True: jax.jit(_nll, static_argnames="form")}
_GRAD = {False: _grad, True: jax.jit(_grad, static_argnames="form")}


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits,fb", [(2, 0), (3, 2), (4, -1)])
@pytest.mark.parametrize("sigma_in_steps", [0.2, 1.5])
def test_exact_nll_matches_numpy(bits, fb, sigma_in_steps, use_jit, rng):
    fmt = FixedPointFormat(bits, fb)
    mu = levels_np(bits, fb)
    sigma = sigma_in_steps * 2.0**-fb
    w = rng.uniform(1.3 * mu[0], 1.3 * mu[-1], 64).astype(np.float32)
    nll = _NLL[use_jit](w, fmt, sigma, form="exact")
    assert nll.dtype == jnp.float32 and nll.shape == w.shape
    np.testing.assert_allclose(nll, nll_exact_np(w, mu, sigma), rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("bits,fb", [(2, 0), (3, 2), (4, -1)])
@pytest.mark.parametrize("sigma_in_steps", [0.05, 3.0])
def test_nearest_nll_matches_hand_formula(bits, fb, sigma_in_steps, use_jit, rng):
    fmt = FixedPointFormat(bits, fb)
    mu = levels_np(bits, fb)
    sigma = sigma_in_steps * 2.0**-fb
    w = rng.uniform(1.3 * mu[0], 1.3 * mu[-1], 64).astype(np.float32)
    nll = _NLL[use_jit](w, fmt, sigma, form="nearest")
    np.testing.assert_allclose(nll, nll_nearest_np(w, mu, sigma), rtol=2e-6, atol=2e-6)


def test_nll_by_hand():
    fmt = FixedPointFormat(bits=2, frac_bits=0)              # levels -1, 0, 1
    # At w = 0 with sigma = 1: -log((N(0;-1,1) + N(0;0,1) + N(0;1,1)) / 3).
    expected = -np.log((2 * np.exp(-0.5) + 1) / (3 * SQRT_2PI))
    np.testing.assert_allclose(mixture_prior_nll(jnp.array(0.0), fmt, 1.0), expected, rtol=1e-6)
    # Nearest form at w = 0.4, sigma = 0.1: 0.16 / 0.02 + log 3 + log(0.1 sqrt(2 pi)).
    np.testing.assert_allclose(
        mixture_prior_nll(jnp.array(0.4), fmt, 0.1, form="nearest"),
        8.0 + np.log(3) + np.log(0.1 * SQRT_2PI), rtol=1e-6)
    # Saturation: the nearest mode of w = 5 is the top level 1.
    np.testing.assert_allclose(
        mixture_prior_nll(jnp.array(5.0), fmt, 1.0, form="nearest"),
        8.0 + np.log(3) + np.log(SQRT_2PI), rtol=1e-6)


def test_per_channel_format_and_sigma(rng):
    fmt = FixedPointFormat(3, (0, 2, -1))                    # channels along the last axis
    w = rng.uniform(-4, 4, (5, 3)).astype(np.float32)
    sigma = np.array([0.3, 0.1, 1.0])                        # per channel, broadcast to w
    nll = mixture_prior_nll(w, fmt, sigma)
    for c, fb in enumerate((0, 2, -1)):
        np.testing.assert_allclose(nll[:, c], nll_exact_np(w[:, c], levels_np(3, fb), sigma[c]),
                                   rtol=2e-6, atol=2e-6)
    nll = mixture_prior_nll(w, fmt, sigma, form="nearest")
    for c, fb in enumerate((0, 2, -1)):
        np.testing.assert_allclose(nll[:, c], nll_nearest_np(w[:, c], levels_np(3, fb), sigma[c]),
                                   rtol=2e-6, atol=2e-6)


def test_twos_complement_and_unsigned_modes(rng):
    for kw in (dict(symmetric=False), dict(signed=False)):
        fmt = FixedPointFormat(3, 1, **kw)
        mu = levels_np(3, 1, **kw)
        assert len(mu) == fmt.num_levels
        w = rng.uniform(-5, 5, 64).astype(np.float32)
        np.testing.assert_allclose(mixture_prior_nll(w, fmt, 0.3), nll_exact_np(w, mu, 0.3),
                                   rtol=2e-6, atol=2e-6)
        np.testing.assert_allclose(mixture_prior_nll(w, fmt, 0.3, form="nearest"),
                                   nll_nearest_np(w, mu, 0.3), rtol=2e-6, atol=2e-6)


def test_mixing_weights_match_numpy(rng, use_jit):
    fmt = FixedPointFormat(3, 1)
    mu = levels_np(3, 1)
    pi = rng.dirichlet(np.ones(7))
    w = rng.uniform(-2, 2, 64).astype(np.float32)

    def fn(v, p, form):
        return _NLL[use_jit](v, fmt, 0.4, mixing=p, form=form)
    np.testing.assert_allclose(fn(w, pi, "exact"), nll_exact_np(w, mu, 0.4, pi),
                               rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(fn(w, pi, "nearest"), nll_nearest_np(w, mu, 0.4, pi),
                               rtol=2e-6, atol=2e-6)
    # Uniform mixing weights are the default.
    np.testing.assert_allclose(fn(w, np.full(7, 1 / 7), "exact"), mixture_prior_nll(w, fmt, 0.4),
                               rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Gradients against float64 finite differences
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["exact", "nearest"])
@pytest.mark.parametrize("sigma_in_steps", [0.15, 0.6, 2.0])
def test_gradient_matches_finite_differences(form, sigma_in_steps, use_jit, rng):
    bits, fb = 3, 1
    fmt = FixedPointFormat(bits, fb)
    mu = levels_np(bits, fb)
    step = 2.0**-fb
    sigma = sigma_in_steps * step
    pi = rng.dirichlet(np.ones(fmt.num_levels) * 3)
    # Keep clear of the midpoints, where the nearest form's nearest level switches.
    w = away_from_midpoints(rng, 64, mu, margin=0.02).astype(np.float32)
    ref = nll_exact_np if form == "exact" else nll_nearest_np
    for mixing in (None, pi):
        expected = central_difference(lambda v: ref(v, mu, sigma, mixing),
                                      w.astype(np.float64), 1e-6 * step)
        grad = _GRAD[use_jit](w, fmt, sigma, mixing=mixing, form=form)
        np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
        auto = jax.grad(lambda v: mixture_prior_nll(v, fmt, sigma, mixing=mixing,
                                                    form=form).sum())(jnp.asarray(w))
        np.testing.assert_allclose(auto, grad, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_nearest_gradient_hand_formula(rng):
    fmt = FixedPointFormat(4, 3)
    w = rng.uniform(-1.2, 1.2, 64).astype(np.float32)
    nearest = np.clip(np.round(w.astype(np.float64) * 8), -7, 7) / 8
    np.testing.assert_allclose(mixture_prior_grad(w, fmt, 0.05),
                               (w - nearest) / 0.05**2, rtol=1e-5, atol=1e-3)


def test_gradient_against_x64_jax_finite_differences():
    # The reference NLL written in float64 JAX (x64 enabled only inside the context), then
    # differentiated by central differences; the library gradient is float32.
    fmt = FixedPointFormat(3, 0)
    mu = levels_np(3, 0)
    w = np.linspace(-3.7, 3.7, 31)
    with jax.enable_x64(True):
        def ref(v):
            dens = jnp.exp(-((v[:, None] - mu) ** 2) / (2 * 0.7**2)) / (0.7 * SQRT_2PI * len(mu))
            return -jnp.log(dens.sum(-1))
        v = jnp.asarray(w, jnp.float64)
        assert v.dtype == jnp.float64
        expected = np.asarray(jax.jit(lambda u: (ref(u + 1e-6) - ref(u - 1e-6)) / 2e-6)(v))
        expected_ad = np.asarray(jax.jit(jax.grad(lambda u: ref(u).sum()))(v))
    assert not jax.config.jax_enable_x64
    np.testing.assert_allclose(expected, expected_ad, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(mixture_prior_grad(w.astype(np.float32), fmt, 0.7, form="exact"),
                               expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Limits and stability
# --------------------------------------------------------------------------------------------

def test_exact_tends_to_nearest_as_sigma_shrinks(rng):
    fmt = FixedPointFormat(3, 2)
    mu = levels_np(3, 2)
    step = 0.25
    w = away_from_midpoints(rng, 64, mu, margin=0.1).astype(np.float32)
    gaps = []
    for s in (1.0, 0.5, 0.25, 0.1):
        gap_np = np.abs(nll_exact_np(w, mu, s * step) - nll_nearest_np(w, mu, s * step)).max()
        gaps.append(gap_np)
    assert all(a > b for a, b in zip(gaps, gaps[1:]))           # the reference gap shrinks
    sigma = 0.05 * step
    exact = np.asarray(mixture_prior_nll(w, fmt, sigma, form="exact"), np.float64)
    nearest = np.asarray(mixture_prior_nll(w, fmt, sigma, form="nearest"), np.float64)
    # The true gap is ~exp(-32); what is left is float32 rounding of values of size |nll|.
    np.testing.assert_array_less(np.abs(exact - nearest), 1e-6 * np.maximum(1.0, np.abs(exact)))
    g_exact = mixture_prior_grad(w, fmt, sigma, form="exact")
    g_nearest = mixture_prior_grad(w, fmt, sigma, form="nearest")
    np.testing.assert_allclose(g_exact, g_nearest, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("form", ["exact", "nearest"])
def test_stable_for_tiny_sigma_and_large_weights(form, use_jit):
    fmt = FixedPointFormat(4, 3)
    step = 0.125
    sigma = 1e-6 * step
    w = jnp.array([0.0, 0.3, -0.43, 0.06, 0.875, 1e3, -1e4, 3.0e5], jnp.float32)
    nll = _NLL[use_jit](w, fmt, sigma, form=form)
    grad = _GRAD[use_jit](w, fmt, sigma, form=form)
    assert np.all(np.isfinite(nll)) and np.all(np.isfinite(grad))
    # Far beyond the range everything is pulled toward the extreme level, with the right sign.
    assert grad[5] > 0 and grad[6] < 0 and grad[7] > 0
    # Values: (w - nearest)^2 / (2 sigma^2) dominates; check it in float64 (relative).
    mu = levels_np(4, 3)
    np.testing.assert_allclose(nll, nll_nearest_np(np.asarray(w), mu, sigma), rtol=1e-5)
    np.testing.assert_allclose(
        grad, (np.asarray(w, np.float64) - mu[np.abs(np.asarray(w)[:, None] - mu).argmin(1)])
        / sigma**2, rtol=1e-4, atol=1.0)


def test_exact_stable_where_every_mode_underflows():
    # exp(-(w - mu)^2 / 2 sigma^2) underflows to 0 for all modes; logsumexp must not give inf.
    fmt = FixedPointFormat(2, 0)
    nll = mixture_prior_nll(jnp.array([0.5, 0.37, 40.0]), fmt, 1e-3, form="exact")
    assert np.all(np.isfinite(nll))
    # At the midpoint 0.5 two modes tie: nll = nearest - log 2.
    np.testing.assert_allclose(nll[0], 0.125 / 1e-6 + np.log(3) + np.log(1e-3 * SQRT_2PI)
                               - np.log(2), rtol=1e-6)


@settings(max_examples=60, deadline=None)
@given(st.floats(-10, 10, width=32), st.floats(0.05, 3.0), st.sampled_from([(2, 0), (3, 1),
                                                                           (4, 2)]))
def test_property_exact_nll_matches_numpy(w, sigma_in_steps, fmt_args):
    fmt = FixedPointFormat(*fmt_args)
    mu = levels_np(*fmt_args)
    sigma = sigma_in_steps * fmt.step
    got = float(_NLL[True](jnp.float32(w), fmt, jnp.float32(sigma), form="exact"))
    # Reference in float64 through logsumexp, to stay valid where np.exp would underflow.
    logits = -((np.float64(w) - mu) ** 2) / (2 * np.float32(sigma) ** 2) - np.log(len(mu))
    m = logits.max()
    expected = -(m + np.log(np.exp(logits - m).sum())) + np.log(np.float32(sigma) * SQRT_2PI)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sigma", [0.0, -1.0, float("nan"), float("inf"), [0.1, -0.1]])
def test_bad_sigma(sigma):
    fmt = FixedPointFormat(2, 0)
    with pytest.raises(ValueError, match="sigma must be finite and > 0"):
        mixture_prior_nll(jnp.zeros(2), fmt, sigma)
    with pytest.raises(ValueError, match="sigma must be finite and > 0"):
        mixture_prior_grad(jnp.zeros(2), fmt, sigma)


@pytest.mark.parametrize("mixing,match", [
    ([0.5, 0.5], r"mixing must have shape \(3,\)"),
    ([0.2, 0.2, 0.2, 0.4], r"mixing must have shape \(3,\)"),
    ([[0.3, 0.3, 0.4]], r"mixing must have shape \(3,\)"),
    ([-0.2, 0.6, 0.6], "must be >= 0 and sum to 1"),
    ([0.2, 0.2, 0.2], "must be >= 0 and sum to 1"),
    ([0.5, float("nan"), 0.5], "must be >= 0 and sum to 1"),
])
@pytest.mark.parametrize("form", ["exact", "nearest"])
def test_bad_mixing(mixing, match, form):
    with pytest.raises(ValueError, match=match):
        mixture_prior_nll(jnp.zeros(2), FixedPointFormat(2, 0), 0.5, mixing=mixing, form=form)


def test_bad_form_and_dtype():
    fmt = FixedPointFormat(2, 0)
    with pytest.raises(ValueError, match="form must be 'exact' or 'nearest'"):
        mixture_prior_nll(jnp.zeros(2), fmt, 0.5, form="closest")
    with pytest.raises(TypeError, match="floating point"):
        mixture_prior_nll(jnp.arange(2), fmt, 0.5)
