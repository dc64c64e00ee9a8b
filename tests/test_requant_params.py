"""``requant_params``' documented contract, on random sweeps and on the rounding edge (issue 32).

Contract: ``|m| < 2**mult_bits``, ``|acc_bound * m| < 2**62``, ``|b| < 2**62`` and
``|m / 2**k - M| <= 2**-k / 2`` (likewise for ``b``), checked in exact integers / fractions.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from symog_jax.export import integer_inference as ii
from symog_jax.export.integer_inference import requant_params


def _check(M, B, mult_bits, acc_bound):
    m, k, b = requant_params(M, B, mult_bits=mult_bits, acc_bound=acc_bound)
    for mc, bc, mi, ki, bi in zip(np.asarray(M, np.float64).reshape(-1),
                                  np.broadcast_to(np.asarray(B, np.float64).reshape(-1),
                                                  np.shape(M)), m, k, b):
        mi, ki, bi = int(mi), int(ki), int(bi)
        assert 0 <= ki <= 62
        assert abs(mi) < 2 ** mult_bits, (mc, mi, ki)
        assert abs(acc_bound * mi) < 2 ** 62, (mc, mi, ki)
        assert abs(bi) < 2 ** 62
        assert abs(Fraction(mi, 2 ** ki) - Fraction(float(mc))) <= Fraction(1, 2 ** (ki + 1))
        assert abs(Fraction(bi, 2 ** ki) - Fraction(float(bc))) <= Fraction(1, 2 ** (ki + 1))
    return m, k, b


def test_multiplier_that_rounds_up_to_the_limit_keeps_the_contract():
    M = (2 ** 31 - 0.25) / 2 ** 40        # m * 2**k rounds to exactly 2**31 at the largest k
    m, k, b = _check(np.array([M, -M]), np.array([0.0, 0.0]), 31, 2 ** 31 - 1)
    assert abs(int(m[0])) < 2 ** 31 and int(m[0]) == -int(m[1])
    for bits in (8, 15, 16, 24, 31):      # the same edge at other widths
        edge = (2 ** bits - 0.25) / 2 ** 50
        _check(np.array([edge]), np.array([0.0]), bits, 1)


def test_offset_that_rounds_up_to_the_limit_keeps_the_contract():
    B = (2 ** 62 - 2 ** 8) / 2 ** 62 * 0.999999999999    # b rounds towards 2**62
    _check(np.array([1e-30]), np.array([B]), 31, 1)


@pytest.mark.parametrize("mult_bits", [8, 16, 31])
def test_random_sweep_keeps_the_contract(mult_bits):
    rng = np.random.default_rng(mult_bits)
    for acc_bound in (1, 255, 2 ** 20 + 3, 2 ** 31 - 1):
        # multipliers spread over many octaves, and ones just below a power of two
        M = rng.choice([-1, 1], 400) * 2.0 ** rng.uniform(-40, -1, 400)
        near = 2.0 ** rng.integers(-40, -1, 200) * (1 - 2.0 ** -rng.integers(20, 53, 200))
        B = rng.normal(0, 1e3, 600)
        _check(np.concatenate([M, near]), B, mult_bits, acc_bound)


def test_unchanged_away_from_the_edge():
    # Values the rounding does not push onto a bound: the largest k, as before.
    m, k, b = requant_params(np.array([0.375]), np.array([0.25]))
    assert (int(m[0]), int(k[0]), int(b[0])) == (1610612736, 32, 1073741824)
    with pytest.raises(ValueError, match="too large"):
        requant_params(np.array([2.0 ** 31]), np.array([0.0]))


def _round_half_even_exact(num: int, k: int) -> int:
    q, r = divmod(num, 2 ** k)              # Python ints: exact, floor division
    twice = 2 * r
    return q + (twice > 2 ** k or (twice == 2 ** k and q % 2 == 1))


def test_requantize_wide_equals_exact_integer_arithmetic():
    """``requantize_wide`` against Python's unbounded integers, over random operands whose
    product overflows int64, and over exact ties ``x m + b = (2q + 1) 2**(k-1)``."""
    rng = np.random.default_rng(0)
    xs, ms, ks, bs = [], [], [], []
    for _ in range(4000):
        xb, bb = int(rng.integers(1, 56)), int(rng.integers(1, 62))
        xs.append(int(rng.integers(-2 ** xb + 1, 2 ** xb)))
        ms.append(int(rng.integers(-2 ** 31 + 1, 2 ** 31)))
        ks.append(int(rng.integers(0, 63)))
        bs.append(int(rng.integers(-2 ** bb + 1, 2 ** bb)))
    for _ in range(1000):                   # ties: choose b so the value is an odd half
        k, m = int(rng.integers(1, 63)), int(rng.integers(-2 ** 31 + 1, 2 ** 31))
        x = int(rng.integers(-2 ** 40, 2 ** 40))
        target = (2 * int(rng.integers(-2 ** 20, 2 ** 20)) + 1) * 2 ** (k - 1)
        b = target - x * m
        if abs(b) < 2 ** 62:
            xs.append(x), ms.append(m), ks.append(k), bs.append(b)
    got = [int(ii.requantize_wide(np.array([[x]]), np.array([m]), np.array([k]),
                                  np.array([b]), -2 ** 62, 2 ** 62)[0, 0])
           for x, m, k, b in zip(xs, ms, ks, bs)]
    want = [max(-2 ** 62, min(2 ** 62, _round_half_even_exact(x * m + b, k)))
            for x, m, k, b in zip(xs, ms, ks, bs)]
    assert got == want


def test_requantize_wide_equals_requantize_where_int64_holds():
    rng = np.random.default_rng(1)
    acc = rng.integers(-2 ** 30, 2 ** 30, (64, 5))
    m, k, b = ii.requant_params(rng.uniform(-1e-3, 1e-3, 5), rng.uniform(-50, 50, 5))
    np.testing.assert_array_equal(ii.requantize_wide(acc, m, k, b, -127, 127),
                                  ii.requantize(acc, m, k, b, -127, 127))
