"""SYQ weight quantization (Faraone et al., CVPR 2018) against hand-computed values and a
numpy loop that applies the forward / gradient formulas entry by entry.

Conventions under test (see ``symog_jax.quantizers.syq``): ``t = eta * max|W|`` per kernel;
ternary ``Q = sign(W) * 1[|W| > t] * alpha`` (``|W| == t`` -> 0); binary (``eta == 0``)
``Q = sign(W) * alpha`` with ``sign(0) = +1``; ``dL/dW = A * dL/dQ`` with ``A = alpha`` where
``|W| > t`` and 1 elsewhere; ``dL/dalpha_g`` = sum over the group's kept entries of
``sign(W) * dL/dQ``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from symog_jax.quantizers.syq import (
    GRANULARITIES,
    check_syq_args,
    init_syq_scales,
    syq_codes,
    syq_quantize,
    syq_scale_shape,
    syq_threshold,
)


def conv(rows):
    """A (2, 2, 1, 2) conv kernel from rows listed per position (0,0), (0,1), (1,0), (1,1),
    each row ``[cout 0, cout 1]``."""
    return np.asarray(rows, np.float32).reshape(2, 2, 1, 2)


# --------------------------------------------------------------------------------------------
# Hand-computed cases.
#
# Conv kernel, max|W| = 1.0. Ternary with eta = 0.3 -> t = 0.3 (exact in float32, so the 0.3
# entry is a tie and is quantized to 0). Kept (|W| > t): (0,0,c0)=+0.8, (0,1,c0)=-0.4,
# (1,0,c1)=-1.0, (1,1,c1)=-0.6. Binary signs: (1,0,c0)=0.0 counts as +1.
W_CONV = conv([[0.8, -0.1], [-0.4, 0.05], [0.0, -1.0], [0.3, -0.6]])
G_CONV = conv([[1, -2], [3, 4], [-5, 6], [8, 9]])          # upstream dL/dQ
ETA_CONV = 0.3
ALPHA_CONV = {
    "layer": np.full((1, 1, 1, 1), 2.0, np.float32),
    "channel": np.asarray([2.0, 3.0], np.float32).reshape(1, 1, 1, 2),
    "pixel": np.asarray([2.0, 3.0, 4.0, 5.0], np.float32).reshape(2, 2, 1, 1),
    # The reference's row-wise: one scale per kernel row (positions (0,*) and (1,*)).
    "row": np.asarray([2.0, 3.0], np.float32).reshape(2, 1, 1, 1),
}
# (eta, granularity) -> (Q, dL/dW, dL/dalpha), worked out by hand from the formulas above.
EXPECTED_CONV = {
    ("ternary", "layer"): (
        conv([[2, 0], [-2, 0], [0, -2], [0, -2]]),
        conv([[2, -2], [6, 4], [-5, 12], [8, 18]]),
        np.full((1, 1, 1, 1), -17.0)),                       # +1 - 3 - 6 - 9
    ("ternary", "channel"): (
        conv([[2, 0], [-2, 0], [0, -3], [0, -3]]),
        conv([[2, -2], [6, 4], [-5, 18], [8, 27]]),
        np.asarray([-2.0, -15.0]).reshape(1, 1, 1, 2)),     # c0: 1 - 3; c1: -6 - 9
    ("ternary", "pixel"): (
        conv([[2, 0], [-3, 0], [0, -4], [0, -5]]),
        conv([[2, -2], [9, 4], [-5, 24], [8, 45]]),
        np.asarray([1.0, -3.0, -6.0, -9.0]).reshape(2, 2, 1, 1)),
    ("ternary", "row"): (
        conv([[2, 0], [-2, 0], [0, -3], [0, -3]]),
        conv([[2, -2], [6, 4], [-5, 18], [8, 27]]),
        np.asarray([-2.0, -15.0]).reshape(2, 1, 1, 1)),     # row 0: 1 - 3; row 1: -6 - 9
    ("binary", "layer"): (
        conv([[2, -2], [-2, 2], [2, -2], [2, -2]]),
        conv([[2, -4], [6, 8], [-10, 12], [16, 18]]),
        np.full((1, 1, 1, 1), -8.0)),                        # 1+2-3+4-5-6+8-9
    ("binary", "channel"): (
        conv([[2, -3], [-2, 3], [2, -3], [2, -3]]),
        conv([[2, -6], [6, 12], [-10, 18], [16, 27]]),
        np.asarray([1.0, -9.0]).reshape(1, 1, 1, 2)),       # c0: 1-3-5+8; c1: 2+4-6-9
    ("binary", "pixel"): (
        conv([[2, -2], [-3, 3], [4, -4], [5, -5]]),
        conv([[2, -4], [9, 12], [-20, 24], [40, 45]]),
        np.asarray([3.0, 1.0, -11.0, -1.0]).reshape(2, 2, 1, 1)),
    ("binary", "row"): (
        conv([[2, -2], [-2, 2], [3, -3], [3, -3]]),
        conv([[2, -4], [6, 8], [-15, 18], [24, 27]]),
        np.asarray([4.0, -12.0]).reshape(2, 1, 1, 1)),      # 1+2-3+4; -5-6+8-9
}

# Dense kernel (in=3, out=2), max|W| = 2.0. Ternary with eta = 0.2 -> t = 0.4 (exact in
# float32: 2 * float32(0.2) == float32(0.4)), so the 0.4 entry is a tie -> 0. Kept: +0.5,
# -2.0, -1.2. Binary: the 0.0 entry counts as +1. Pixel == layer for dense kernels.
W_DENSE = np.asarray([[0.5, -0.05], [-2.0, 0.4], [0.0, -1.2]], np.float32)
G_DENSE = np.asarray([[1, 2], [3, -4], [5, 6]], np.float32)
ETA_DENSE = 0.2
ALPHA_DENSE = {
    "layer": np.full((1, 1), 1.5, np.float32),
    "channel": np.asarray([[1.5, 0.5]], np.float32),
    "pixel": np.full((1, 1), 1.5, np.float32),
    "row": np.full((1, 1), 1.5, np.float32),
}
_DENSE_TERNARY_LAYER = (
    np.asarray([[1.5, 0], [-1.5, 0], [0, -1.5]]),
    np.asarray([[1.5, 2], [4.5, -4], [5, 9]]),
    np.full((1, 1), -8.0))                                   # +1 - 3 - 6
_DENSE_BINARY_LAYER = (
    np.asarray([[1.5, -1.5], [-1.5, 1.5], [1.5, -1.5]]),
    np.asarray([[1.5, 3], [4.5, -6], [7.5, 9]]),
    np.full((1, 1), -9.0))                                   # 1-2-3-4+5-6
EXPECTED_DENSE = {
    ("ternary", "layer"): _DENSE_TERNARY_LAYER,
    ("ternary", "pixel"): _DENSE_TERNARY_LAYER,
    ("ternary", "row"): _DENSE_TERNARY_LAYER,
    ("ternary", "channel"): (
        np.asarray([[1.5, 0], [-1.5, 0], [0, -0.5]]),
        np.asarray([[1.5, 2], [4.5, -4], [5, 3]]),
        np.asarray([[-2.0, -6.0]])),                         # c0: 1 - 3; c1: -6
    ("binary", "layer"): _DENSE_BINARY_LAYER,
    ("binary", "pixel"): _DENSE_BINARY_LAYER,
    ("binary", "row"): _DENSE_BINARY_LAYER,
    ("binary", "channel"): (
        np.asarray([[1.5, -0.5], [-1.5, 0.5], [1.5, -0.5]]),
        np.asarray([[1.5, 1], [4.5, -2], [7.5, 3]]),
        np.asarray([[3.0, -12.0]])),                         # c0: 1-3+5; c1: -2-4-6
}

CASES = {"conv": (W_CONV, G_CONV, ETA_CONV, ALPHA_CONV, EXPECTED_CONV),
         "dense": (W_DENSE, G_DENSE, ETA_DENSE, ALPHA_DENSE, EXPECTED_DENSE)}


def value_and_grads(w, alpha, g, eta, maybe_jit):
    """``(Q, dL/dW, dL/dalpha)`` for ``L = sum(Q * g)``, so ``dL/dQ = g``."""
    def loss(w, alpha):
        q = syq_quantize(w, alpha, eta)
        return jnp.sum(q * g), q

    (_, q), (dw, dalpha) = maybe_jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
        jnp.asarray(w), jnp.asarray(alpha))
    return q, dw, dalpha


@pytest.mark.parametrize("kind", ["conv", "dense"])
@pytest.mark.parametrize("mode", ["ternary", "binary"])
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_hand_computed_forward_and_gradients(kind, mode, granularity, maybe_jit):
    w, g, eta, alphas, expected = CASES[kind]
    eta = eta if mode == "ternary" else 0.0
    alpha = alphas[granularity]
    assert alpha.shape == syq_scale_shape(w.shape, granularity)
    q_ref, dw_ref, dalpha_ref = expected[(mode, granularity)]

    q, dw, dalpha = value_and_grads(w, alpha, g, eta, maybe_jit)
    np.testing.assert_array_equal(np.asarray(q), q_ref)
    np.testing.assert_array_equal(np.asarray(dw), dw_ref)
    np.testing.assert_array_equal(np.asarray(dalpha), dalpha_ref)
    assert q.dtype == jnp.float32 and dw.dtype == jnp.float32 and dalpha.dtype == jnp.float32
    assert dalpha.shape == alpha.shape

    # Forward alone (no grad) and the codes agree with the same hand values.
    q_only = maybe_jit(lambda w, a: syq_quantize(w, a, eta))(w, alpha)
    np.testing.assert_array_equal(np.asarray(q_only), q_ref)
    codes = maybe_jit(lambda w: syq_codes(w, eta))(w)
    assert codes.dtype == jnp.int8
    np.testing.assert_array_equal(np.asarray(codes), np.sign(q_ref))


def test_hand_computed_codes_and_threshold():
    # sign(0) = +1 in binary mode; 0.0 and the tie |W| == t are 0 in ternary mode.
    np.testing.assert_array_equal(
        np.asarray(syq_codes(W_CONV, 0.0)), conv([[1, -1], [-1, 1], [1, -1], [1, -1]]))
    np.testing.assert_array_equal(
        np.asarray(syq_codes(W_CONV, ETA_CONV)), conv([[1, 0], [-1, 0], [0, -1], [0, -1]]))
    np.testing.assert_array_equal(
        np.asarray(syq_codes(W_DENSE, ETA_DENSE)), [[1, 0], [-1, 0], [0, -1]])
    np.testing.assert_array_equal(
        np.asarray(syq_codes(W_DENSE, 0.0)), [[1, -1], [-1, 1], [1, -1]])
    assert syq_codes(W_DENSE, 0.0, dtype=jnp.int32).dtype == jnp.int32
    # -0.0 is also +1 in binary mode.
    np.testing.assert_array_equal(
        np.asarray(syq_codes(np.asarray([[-0.0, -1.0]], np.float32), 0.0)), [[1, -1]])

    assert float(syq_threshold(W_CONV, ETA_CONV)) == np.float32(0.3)
    assert float(syq_threshold(W_DENSE, ETA_DENSE)) == np.float32(0.4)
    assert float(syq_threshold(W_DENSE, 0.0)) == 0.0
    assert syq_threshold(W_CONV, 0.5).shape == ()
    # The threshold is a constant for differentiation.
    np.testing.assert_array_equal(
        np.asarray(jax.grad(lambda w: syq_threshold(w, 0.5))(jnp.asarray(W_CONV))), 0.0)


def test_scale_shapes():
    assert syq_scale_shape((2, 2, 1, 2), "layer") == (1, 1, 1, 1)
    assert syq_scale_shape((2, 2, 1, 2), "channel") == (1, 1, 1, 2)
    assert syq_scale_shape((2, 2, 1, 2), "pixel") == (2, 2, 1, 1)
    assert syq_scale_shape((3, 5, 7, 11), "pixel") == (3, 5, 1, 1)
    assert syq_scale_shape((3, 2), "layer") == (1, 1)
    assert syq_scale_shape((3, 2), "channel") == (1, 2)
    assert syq_scale_shape((3, 2), "pixel") == (1, 1)          # FC layers: one scale
    assert syq_scale_shape((5, 4, 6), "pixel") == (5, 1, 1)    # 1-D conv kernel
    assert syq_scale_shape((3, 5, 7, 11), "row") == (3, 1, 1, 1)
    assert syq_scale_shape((3, 2), "row") == (1, 1)


def test_init_scales_hand_computed():
    # |W_CONV| per position: (0,0) [.8 .1], (0,1) [.4 .05], (1,0) [0 1], (1,1) [.3 .6].
    expected = {
        "layer": np.full((1, 1, 1, 1), 3.25 / 8),
        "channel": np.asarray([1.5 / 4, 1.75 / 4]).reshape(1, 1, 1, 2),
        "pixel": np.asarray([0.45, 0.225, 0.5, 0.45]).reshape(2, 2, 1, 1),
        "row": np.asarray([1.35 / 4, 1.9 / 4]).reshape(2, 1, 1, 1),
    }
    for granularity, ref in expected.items():
        got = init_syq_scales(W_CONV, granularity)
        assert got.dtype == jnp.float32 and got.shape == ref.shape
        np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-6)
    # |W_DENSE| = [[.5 .05] [2 .4] [0 1.2]].
    np.testing.assert_allclose(np.asarray(init_syq_scales(W_DENSE, "layer")),
                               [[4.15 / 6]], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(init_syq_scales(W_DENSE, "pixel")),
                               [[4.15 / 6]], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(init_syq_scales(W_DENSE, "channel")),
                               [[2.5 / 3, 1.65 / 3]], rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Random tensors against an entry-by-entry numpy loop of the formulas.

def group_index(idx, granularity, ndim):
    """Index into the scale array of the scale that governs kernel entry ``idx`` (by hand)."""
    if granularity == "layer":
        return (0,) * ndim
    if granularity == "channel":
        return (0,) * (ndim - 1) + (idx[-1],)
    if granularity == "row":                                   # kernel row; dense: one
        return (idx[0],) + (0,) * (ndim - 1) if ndim > 2 else (0, 0)
    return tuple(idx[:-2]) + (0, 0)                            # pixel: spatial position


def loop_reference(w, alpha, g, eta, granularity):
    """Q, dL/dW, dL/dalpha in float64, one kernel entry at a time."""
    t = np.float32(eta) * np.max(np.abs(w))                   # float32, like the library
    q = np.zeros(w.shape)
    dw = np.zeros(w.shape)
    dalpha = np.zeros(alpha.shape)
    for idx in np.ndindex(*w.shape):
        a = float(alpha[group_index(idx, granularity, w.ndim)])
        s = 1.0 if w[idx] >= 0 else -1.0
        kept = True if eta == 0 else abs(w[idx]) > t
        if kept:
            q[idx] = s * a
            dw[idx] = a * g[idx]
            dalpha[group_index(idx, granularity, w.ndim)] += s * g[idx]
        else:
            dw[idx] = g[idx]
    return q, dw, dalpha


@pytest.mark.parametrize("shape", [(3, 3, 4, 5), (6, 7)], ids=["conv", "dense"])
@pytest.mark.parametrize("eta", [0.0, 0.05, 0.3, 0.7])
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_random_against_numpy_loop(shape, eta, granularity, rng):
    w = rng.normal(size=shape).astype(np.float32)
    w.flat[0] = 0.0                                            # a zero weight in every case
    alpha = rng.uniform(0.1, 2.0, syq_scale_shape(shape, granularity)).astype(np.float32)
    g = rng.normal(size=shape).astype(np.float32)
    q_ref, dw_ref, dalpha_ref = loop_reference(w, alpha, g, eta, granularity)

    q, dw, dalpha = value_and_grads(w, alpha, g, eta, jax.jit)
    np.testing.assert_array_equal(np.asarray(q), q_ref)       # levels are exact
    np.testing.assert_array_equal(np.asarray(dw), dw_ref.astype(np.float32))
    np.testing.assert_allclose(np.asarray(dalpha), dalpha_ref, rtol=1e-5, atol=1e-5)
    if eta > 0:
        assert 0 < np.count_nonzero(q_ref) < q_ref.size     # both levels are exercised


def test_init_scales_random_against_loop(rng):
    w = rng.normal(size=(3, 2, 4, 5)).astype(np.float32)
    for granularity in GRANULARITIES:
        shape = syq_scale_shape(w.shape, granularity)
        total, count = np.zeros(shape), np.zeros(shape)
        for idx in np.ndindex(*w.shape):
            gi = group_index(idx, granularity, w.ndim)
            total[gi] += abs(float(w[idx]))
            count[gi] += 1
        np.testing.assert_allclose(np.asarray(init_syq_scales(w, granularity)), total / count,
                                   rtol=1e-5)


def test_broadcast_alpha_shapes(maybe_jit):
    """A plain broadcastable alpha (rank-1 per-channel, scalar) behaves like the SYQ shapes."""
    per_channel = np.asarray([2.0, 3.0], np.float32)
    q, dw, dalpha = value_and_grads(W_CONV, per_channel, G_CONV, ETA_CONV, maybe_jit)
    q_ref, dw_ref, dalpha_ref = EXPECTED_CONV[("ternary", "channel")]
    np.testing.assert_array_equal(np.asarray(q), q_ref)
    np.testing.assert_array_equal(np.asarray(dw), dw_ref)
    assert dalpha.shape == (2,)
    np.testing.assert_array_equal(np.asarray(dalpha), dalpha_ref.reshape(2))

    q, dw, dalpha = value_and_grads(W_CONV, np.float32(2.0), G_CONV, 0.0, maybe_jit)
    q_ref, dw_ref, dalpha_ref = EXPECTED_CONV[("binary", "layer")]
    np.testing.assert_array_equal(np.asarray(q), q_ref)
    np.testing.assert_array_equal(np.asarray(dw), dw_ref)
    assert dalpha.shape == ()
    assert float(dalpha) == float(dalpha_ref.reshape(()))


def test_dtypes():
    w = jnp.asarray(W_CONV, jnp.bfloat16)
    alpha = jnp.asarray(ALPHA_CONV["pixel"])
    q = syq_quantize(w, alpha, ETA_CONV)
    assert q.dtype == jnp.float32                              # result_type(bf16, f32)
    dw, dalpha = jax.grad(lambda w, a: jnp.sum(syq_quantize(w, a, ETA_CONV) * G_CONV),
                          argnums=(0, 1))(w, alpha)
    assert dw.dtype == jnp.bfloat16 and dalpha.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(dalpha), EXPECTED_CONV[("ternary", "pixel")][2])
    # Integer kernels are read as float32.
    q = syq_quantize(np.asarray([[3, -1], [0, 2]]), 0.5, 0.5)
    np.testing.assert_array_equal(np.asarray(q), [[0.5, 0.0], [0.0, 0.5]])


def test_vmap_over_kernels():
    ws = np.stack([W_CONV, -W_CONV])
    alpha = ALPHA_CONV["channel"]
    q = jax.vmap(lambda w: syq_quantize(w, alpha, ETA_CONV))(ws)
    q_ref = EXPECTED_CONV[("ternary", "channel")][0]
    np.testing.assert_array_equal(np.asarray(q[0]), q_ref)
    np.testing.assert_array_equal(np.asarray(q[1]), -q_ref)


# --------------------------------------------------------------------------------------------
# Errors.

@pytest.mark.parametrize("eta, text", [(-0.1, "-0.1"), (1.0, "1.0"), (1.5, "1.5"),
                                       (float("nan"), "nan")])
def test_bad_eta(eta, text):
    w = jnp.asarray(W_CONV)
    alpha = ALPHA_CONV["layer"]
    for call in (lambda: check_syq_args(eta, "layer"),
                 lambda: syq_quantize(w, alpha, eta),
                 lambda: syq_codes(w, eta),
                 lambda: syq_threshold(w, eta)):
        with pytest.raises(ValueError, match=r"eta") as err:
            call()
        assert text in str(err.value) and "[0, 1)" in str(err.value)


def test_eta_type_errors():
    with pytest.raises(TypeError, match="eta"):
        check_syq_args(True, "layer")
    with pytest.raises(TypeError, match="eta"):
        check_syq_args("0.1", "layer")
    with pytest.raises(TypeError, match="static"):
        jax.jit(lambda e: syq_quantize(W_CONV, 1.0, e))(0.1)
    assert check_syq_args(np.float32(0.5), "channel") == (0.5, "channel")
    assert check_syq_args(0, "layer") == (0.0, "layer")


def test_bad_granularity():
    for call in (lambda: check_syq_args(0.05, "column"),
                 lambda: syq_scale_shape(W_CONV.shape, "column"),
                 lambda: init_syq_scales(W_CONV, "column")):
        with pytest.raises(ValueError, match="'column'") as err:
            call()
        for valid in GRANULARITIES:
            assert repr(valid) in str(err.value)


@pytest.mark.parametrize("alpha_shape", [(3,), (1, 1, 1, 3), (2, 1, 2, 1), (1, 2, 2, 1, 2)])
def test_alpha_wrong_shape(alpha_shape):
    alpha = np.ones(alpha_shape, np.float32)
    with pytest.raises(ValueError, match="alpha shape") as err:
        syq_quantize(W_CONV, alpha, ETA_CONV)
    assert str(alpha_shape) in str(err.value) and str(W_CONV.shape) in str(err.value)
    assert "(2, 2, 1, 1)" in str(err.value)                    # lists the SYQ scale shapes


def test_kernel_rank_below_two():
    w = jnp.asarray([0.5, -1.0, 0.1, 0.0])
    for call in (lambda: syq_quantize(w, 1.0, 0.05),
                 lambda: syq_codes(w, 0.05),
                 lambda: syq_threshold(w, 0.05),
                 lambda: init_syq_scales(w, "layer"),
                 lambda: syq_scale_shape(w.shape, "layer")):
        with pytest.raises(ValueError, match="at least 2 dimensions") as err:
            call()
        assert "(4,)" in str(err.value)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        syq_quantize(jnp.float32(1.0), 1.0, 0.0)


# --------------------------------------------------------------------------------------------
# Property: codes in range, codes * alpha == forward, levels only {-alpha, 0, +alpha}.

# A few fixed shapes keep the number of compilations (and the test time) small.
PROPERTY_SHAPES = [(1, 1), (3, 2), (2, 1, 3), (2, 2, 1, 3), (1, 3, 2, 2)]


_forward_and_codes = jax.jit(lambda w, alpha, eta: (syq_quantize(w, alpha, eta),
                                                    syq_codes(w, eta)), static_argnums=2)


@st.composite
def kernel_case(draw):
    shape = draw(st.sampled_from(PROPERTY_SHAPES))
    w = draw(hnp.arrays(np.float32, shape, elements=st.floats(
        -8, 8, width=32, allow_subnormal=False)))
    granularity = draw(st.sampled_from(GRANULARITIES))
    alpha = draw(hnp.arrays(np.float32, syq_scale_shape(shape, granularity),
                            elements=st.floats(0.125, 10, width=32)))
    eta = draw(st.sampled_from([0.0, 0.05, 0.3, 0.9]))
    return w, alpha, eta


@settings(max_examples=40, deadline=None)
@given(kernel_case())
def test_property_codes_times_alpha_is_forward(case):
    w, alpha, eta = case
    q, codes = (np.asarray(x) for x in _forward_and_codes(w, alpha, eta))
    allowed = [-1, 1] if eta == 0 else [-1, 0, 1]
    assert np.all(np.isin(codes, allowed))
    np.testing.assert_array_equal(np.asarray(codes * jnp.asarray(alpha)), q)
    a = np.broadcast_to(alpha, w.shape)
    assert np.all((q == 0) | (np.abs(q) == a))
    nonzero = codes != 0
    assert np.all(np.sign(w[nonzero]) * codes[nonzero] >= 0)  # the sign is kept (0 -> +1)
    if eta > 0:
        t = np.float32(eta) * np.max(np.abs(w))
        np.testing.assert_array_equal(nonzero, np.abs(w) > t)
