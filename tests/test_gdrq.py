"""GDRQ (symog_jax.quantizers.gdrq, symog_jax.methods.gdrq) against independent ground truth.

References here are hand-computed values and a plain numpy loop re-implementation (no call to
the library's statistics or rounding); gradients are checked against the straight-through
rule written out by hand and against finite differences where the function is smooth.
"""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from symog_jax.methods import make_method
from symog_jax.methods.gdrq import GDRQConfig, GDRQFormat
from symog_jax.quantizers.gdrq import (GAUSSIAN_CLIP_K, channel_scales, check_gdrq_args,
                                       check_groups_divide, fold_group_scales, gdrq_codes,
                                       gdrq_quantize,
                                       group_assignment, group_clip, group_steps)
from symog_jax.training import TrainConfig, train
from tests.test_training import synthetic_digits


# -- numpy reference ---------------------------------------------------------------------------
def np_groups(w, groups, grouping):
    cout = w.shape[-1]
    size = cout // groups
    if grouping == "contiguous":
        return [c // size for c in range(cout)]
    flat = np.asarray(w, np.float64).reshape(-1, cout)
    norms = [float(np.sqrt(np.sum(flat[:, c] ** 2))) for c in range(cout)]
    order = sorted(range(cout), key=lambda c: (norms[c], c))
    group_of = [0] * cout
    for rank, c in enumerate(order):
        group_of[c] = rank // size
    return group_of


def np_gdrq(w, alpha, bits, groups, clip_k, scale_clip, grouping):
    """Loop reference: (codes, dequantized, x = w / step, step per channel), float64."""
    w = np.asarray(w, np.float64)
    cout = w.shape[-1]
    flat = w.reshape(-1, cout)
    n = 2 ** (bits - 1) - 1
    group_of = np_groups(w, groups, grouping)
    step = np.zeros(cout)
    for g in range(groups):
        members = [c for c in range(cout) if group_of[c] == g]
        vals = np.abs(flat[:, members]).ravel()
        t = clip_k * vals.mean() if scale_clip else vals.max()
        for c in members:
            step[c] = t / n if t > 0 else 1.0
    x = flat / step
    codes = np.round(np.clip(x, -n, n))            # numpy rounds half to even
    scale = np.array([alpha[group_of[c]] for c in range(cout)], np.float64)
    return (codes.reshape(w.shape), (codes * scale).reshape(w.shape), x.reshape(w.shape),
            step)


def assert_codes_match(codes, ref_codes, x_ref):
    """Equal, except possibly at float32-vs-float64 ties (x within 1e-4 of k + 1/2)."""
    codes, ref_codes = np.asarray(codes), np.asarray(ref_codes)
    near_tie = np.abs(np.abs(x_ref) % 1.0 - 0.5) < 1e-4
    bad = (codes != ref_codes) & ~near_tie
    assert not bad.any(), (codes[bad], ref_codes[bad])
    assert np.all(np.abs(codes - ref_codes) <= 1)


# -- hand-computed cases -----------------------------------------------------------------------
W_HAND = np.array([[0.5, -1.0, 2.0, 0.0],
                   [-1.5, 0.25, -4.0, 1.0]], np.float32)


def test_hand_case_scale_clip_two_groups(maybe_jit):
    # group 0 = channels 0, 1: mean|W| = (0.5+1+1.5+0.25)/4 = 0.8125, clip 2x -> 1.625 (1 level)
    # group 1 = channels 2, 3: mean|W| = (2+0+4+1)/4 = 1.75, clip -> 3.5
    steps, group_of = group_steps(W_HAND, bits=2, groups=2, clip_k=2.0)
    np.testing.assert_allclose(np.asarray(steps), [1.625, 3.5], rtol=1e-7)
    assert group_of.tolist() == [0, 0, 1, 1]
    codes = maybe_jit(lambda w: gdrq_codes(w, bits=2, groups=2, clip_k=2.0))(W_HAND)
    assert codes.dtype == jnp.int32
    assert codes.tolist() == [[0, -1, 1, 0], [-1, 0, -1, 0]]
    alpha = jnp.array([0.5, 2.0])
    q = maybe_jit(lambda w, a: gdrq_quantize(w, a, bits=2, clip_k=2.0))(W_HAND, alpha)
    assert q.tolist() == [[0.0, -0.5, 2.0, 0.0], [-0.5, 0.0, -2.0, 0.0]]


def test_hand_case_without_scale_clip_uses_the_group_max():
    w = W_HAND.copy()
    w[1, 2] = -3.0
    # 3 bits: levels -3..3; group 0 max 1.5 -> step 0.5, group 1 max 3 -> step 1
    codes = gdrq_codes(w, bits=3, groups=2, scale_clip=False)
    # 0.5/0.5=1, -1/0.5=-2, -1.5/0.5=-3, 0.25/0.5=0.5 -> 0 (half to even); 2, 0, -3, 1
    assert codes.tolist() == [[1, -2, 2, 0], [-3, 0, -3, 1]]
    # G = 1: one max over the layer (3 -> step 1): 0.5 -> 0 and -1.5 -> -2 (half to even)
    assert gdrq_codes(w, bits=3, groups=1, scale_clip=False).tolist() == \
        [[0, -1, 2, 0], [-2, 0, -3, 1]]


def test_hand_case_norm_grouping():
    # channel L2 norms^2: 2.5, 1.0625, 20, 1 -> ascending ranks 2, 1, 3, 0 -> groups (G=2)
    assert group_assignment(W_HAND, 2, "norm").tolist() == [1, 0, 1, 0]
    assert group_assignment(W_HAND, 4, "norm").tolist() == [2, 1, 3, 0]
    # group 0 = channels 1, 3: mean|W| = (1+0.25+0+1)/4 = 0.5625; group 1 = 0, 2: 2
    t = group_clip(W_HAND, group_assignment(W_HAND, 2, "norm"), 2, clip_k=1.0)
    np.testing.assert_allclose(np.asarray(t), [0.5625, 2.0], rtol=1e-7)


def test_hand_case_gradients():
    alpha = jnp.array([0.5, 2.0])
    r = jnp.arange(1.0, 9.0).reshape(2, 4)
    dw, dalpha = jax.grad(lambda w, a: jnp.sum(gdrq_quantize(w, a, bits=2, clip_k=2.0) * r),
                          argnums=(0, 1))(jnp.asarray(W_HAND), alpha)
    # inside the clip everywhere except -4.0 (|-4| > 3.5); factor alpha_g / step_g
    f0, f1 = 0.5 / 1.625, 2.0 / 3.5
    expected = np.array([[1 * f0, 2 * f0, 3 * f1, 4 * f1],
                         [5 * f0, 6 * f0, 0.0, 8 * f1]])
    np.testing.assert_allclose(np.asarray(dw), expected, rtol=1e-6)
    # dL/dalpha_g = sum codes * r over the group: codes [[0,-1,1,0],[-1,0,-1,0]]
    np.testing.assert_allclose(np.asarray(dalpha), [-2 - 5, 3 - 7], rtol=1e-7)


def test_weight_exactly_at_the_clip_keeps_its_gradient():
    w = jnp.array([[1.0, -1.0], [3.0, -3.0]])          # mean|W| = 2, k = 1.5: clip at 3 exactly
    g = jax.grad(lambda w: jnp.sum(gdrq_quantize(w, jnp.array([1.0]), bits=2, clip_k=1.5)))(w)
    np.testing.assert_allclose(np.asarray(g), 1.0 / 3.0, rtol=1e-7)


# -- loop reference, properties ----------------------------------------------------------------
@pytest.mark.parametrize("grouping", ["contiguous", "norm"])
@pytest.mark.parametrize("scale_clip", [True, False])
@pytest.mark.parametrize("bits, groups, shape", [(2, 4, (3, 3, 5, 8)), (4, 2, (20, 6)),
                                                 (8, 1, (4, 7)), (3, 8, (2, 2, 3, 16))])
def test_matches_numpy_loop_reference(rng, maybe_jit, bits, groups, shape, scale_clip, grouping):
    w = (rng.standard_normal(shape) * rng.uniform(0.05, 2.0, shape[-1])).astype(np.float32)
    alpha = rng.uniform(0.01, 0.5, groups).astype(np.float32)
    kw = dict(bits=bits, clip_k=1.7, scale_clip=scale_clip, grouping=grouping)
    codes, q_ref, x_ref, step_ref = np_gdrq(w, alpha.astype(np.float64), groups=groups, **kw)
    codes_lib = maybe_jit(lambda w: gdrq_codes(w, groups=groups, **kw))(w)
    assert_codes_match(codes_lib, codes, x_ref)
    assert np.asarray(group_assignment(w, groups, grouping)).tolist() == \
        np_groups(w, groups, grouping)
    steps, group_of = group_steps(w, groups=groups, **kw)
    np.testing.assert_allclose(np.asarray(steps)[np.asarray(group_of)], step_ref, rtol=1e-5)
    q = maybe_jit(lambda w, a: gdrq_quantize(w, a, **kw))(w, alpha)
    # the learned scale enters with a mantissa of 25 - bits bits: relative change < 2**-(24-b)
    tol = 2.0 ** -(24 - bits)
    np.testing.assert_allclose(np.asarray(q, np.float64),
                               np.asarray(codes_lib, np.float64) * np.asarray(
                                   alpha, np.float64)[np.asarray(group_of)],
                               rtol=tol, atol=0)
    same = np.asarray(codes_lib) == codes
    np.testing.assert_allclose(np.asarray(q)[same], q_ref[same], rtol=tol, atol=0)


def test_explicit_straight_through_gradients_and_finite_differences(rng, maybe_jit):
    w = rng.standard_normal((3, 3, 4, 8)).astype(np.float32)
    alpha = rng.uniform(0.1, 1.0, 4).astype(np.float32)
    r = rng.standard_normal(w.shape).astype(np.float32)
    kw = dict(bits=3, clip_k=1.2, scale_clip=True, grouping="norm")

    def loss(w, a):
        return jnp.sum(gdrq_quantize(w, a, **kw) * r)
    dw, da = maybe_jit(jax.grad(loss, argnums=(0, 1)))(w, alpha)
    codes, _, x_ref, step = np_gdrq(w, alpha, groups=4, **kw)
    group_of = np.asarray(np_groups(w, 4, "norm"))
    inside = np.abs(x_ref) <= 3
    assert 0 < inside.mean() < 1                    # the clip cuts some weights
    expected_dw = np.where(inside, r * alpha[group_of] / step, 0.0)
    np.testing.assert_allclose(np.asarray(dw), expected_dw, rtol=1e-5, atol=1e-6)
    expected_da = [np.sum((codes * r)[..., group_of == g]) for g in range(4)]
    np.testing.assert_allclose(np.asarray(da), expected_da, rtol=1e-5, atol=1e-4)
    # Q is linear in alpha: central differences agree with the gradient
    for g in range(4):
        e = np.zeros(4, np.float32)
        e[g] = 1e-2
        fd = (loss(w, alpha + e) - loss(w, alpha - e)) / 2e-2
        np.testing.assert_allclose(float(fd), float(da[g]), rtol=2e-3, atol=2e-3)


def test_no_scale_clip_passes_every_gradient():
    w = jnp.asarray(np.random.default_rng(3).standard_normal((16, 4)), jnp.float32)
    a = group_steps(w, 2, 2, scale_clip=False)[0]
    dw = jax.grad(lambda w: jnp.sum(gdrq_quantize(w, a, bits=2, scale_clip=False)))(w)
    np.testing.assert_allclose(np.asarray(dw), 1.0, rtol=1e-6)     # alpha = step: factor 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bits=st.integers(2, 8), groups=st.sampled_from([1, 2, 4]),
       clip_k=st.floats(0.3, 6.0), scale_clip=st.booleans(),
       grouping=st.sampled_from(["contiguous", "norm"]), seed=st.integers(0, 2**31 - 1),
       power=st.integers(-4, 4))
def test_properties(bits, groups, clip_k, scale_clip, grouping, seed, power):
    rng = np.random.default_rng(seed)
    w = rng.laplace(size=(6, 8)).astype(np.float32) * np.float32(rng.uniform(0.01, 3))
    alpha = rng.uniform(1e-3, 1.0, groups).astype(np.float32)
    kw = dict(bits=bits, clip_k=clip_k, scale_clip=scale_clip, grouping=grouping)
    n = 2 ** (bits - 1) - 1
    codes = np.asarray(gdrq_codes(w, groups=groups, **kw))
    assert codes.min() >= -n and codes.max() <= n
    # the quantized weights are exactly codes times the per-channel scale (even in float64)
    group_of = group_assignment(w, groups, grouping)
    scale = np.asarray(channel_scales(alpha, group_of, bits), np.float64)
    q = np.asarray(gdrq_quantize(w, alpha, **kw), np.float64)
    np.testing.assert_array_equal(q, codes * scale)
    # codes do not change when the weights are scaled by a power of two
    np.testing.assert_array_equal(
        np.asarray(gdrq_codes(w * np.float32(2.0 ** power), groups=groups, **kw)), codes)
    t = np.asarray(group_clip(w, group_of, groups, clip_k, scale_clip))[np.asarray(group_of)]
    if scale_clip:
        # everything at or beyond the clip is at the top level
        assert np.all(np.abs(codes[np.abs(w) >= t]) == n)
    else:
        # the largest weight of each group is on the top level
        for g in range(groups):
            cols = np.asarray(group_of) == g
            i = np.unravel_index(np.argmax(np.abs(w[:, cols])), w[:, cols].shape)
            assert abs(codes[:, cols][i]) == n


def test_zero_group_gives_zero_codes_and_finite_gradients():
    w = jnp.zeros((4, 4)).at[:, 2:].set(1.0)
    codes = gdrq_codes(w, bits=3, groups=2, clip_k=1.0)     # step 1/3: ones -> top code 3
    assert np.all(np.asarray(codes)[:, :2] == 0) and np.all(np.asarray(codes)[:, 2:] == 3)
    dw = jax.grad(lambda w: jnp.sum(gdrq_quantize(w, jnp.array([0.5, 0.5]), bits=3)))(w)
    assert np.all(np.isfinite(np.asarray(dw)))


def test_vmap_matches_a_loop():
    ws = jnp.asarray(np.random.default_rng(1).standard_normal((3, 5, 4)), jnp.float32)
    a = jnp.array([0.2, 0.3])
    out = jax.vmap(lambda w: gdrq_quantize(w, a, bits=4))(ws)
    for i in range(3):
        np.testing.assert_array_equal(np.asarray(out[i]), np.asarray(gdrq_quantize(ws[i], a, 4)))


# -- bad inputs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("args, exc, message", [
    (dict(bits=1, groups=1), ValueError, r"bits must be in \[2, 8\], got 1"),
    (dict(bits=9, groups=1), ValueError, r"bits must be in \[2, 8\], got 9"),
    (dict(bits=2.5, groups=1), TypeError, "bits must be an integer"),
    (dict(bits=2, groups=0), ValueError, "groups must be in"),
    (dict(bits=2, groups=1, clip_k=0.0), ValueError, "clip_k must be a finite number > 0"),
    (dict(bits=2, groups=1, clip_k=-1), ValueError, "clip_k must be a finite number > 0"),
    (dict(bits=2, groups=1, clip_k=float("inf")), ValueError, "clip_k must be a finite"),
    (dict(bits=2, groups=1, clip_k=True), TypeError, "clip_k must be a real number"),
    (dict(bits=2, groups=1, scale_clip="yes"), TypeError, "scale_clip must be a bool"),
    (dict(bits=2, groups=1, grouping="random"), ValueError, "unknown GDRQ grouping 'random'"),
])
def test_bad_arguments_are_one_line_errors(args, exc, message):
    with pytest.raises(exc, match=message) as info:
        check_gdrq_args(**args)
    assert "\n" not in str(info.value)
    with pytest.raises(exc, match=message):
        gdrq_codes(np.ones((2, 4), np.float32), **args)


def test_groups_not_dividing_the_channels():
    with pytest.raises(ValueError,
                       match=r"^gdrq: layer conv3 has 6 output channels, which "
                             r"groups=4 does not divide \(use groups in \[1, 2, 3, 6\]"):
        check_groups_divide((3, 3, 2, 6), 4, "conv3")
    with pytest.raises(ValueError, match="has 6 output channels"):
        gdrq_quantize(np.ones((2, 6), np.float32), jnp.ones(4))
    with pytest.raises(ValueError, match="alpha must be 1-D"):
        gdrq_quantize(np.ones((2, 4), np.float32), jnp.ones((1, 4)))


@pytest.mark.parametrize("config, message", [
    ({"bits": 1}, r"bits must be in \[2, 8\]"),
    ({"bits": 9}, r"bits must be in \[2, 8\]"),
    ({"groups": 0}, r"groups must be in \[1, None\]"),
    ({"clip_k": 0.0}, r"clip_k must be in \(0, None\]"),
    ({"clip_k": -2.0}, r"clip_k must be in \(0, None\]"),
    ({"grouping": "random"}, "grouping must be one of"),
    ({"scale_clip": "no"}, "scale_clip must be a bool"),
])
def test_bad_configs(config, message):
    with pytest.raises(ValueError, match=message) as info:
        make_method("gdrq", config)
    assert "\n" not in str(info.value)


def test_method_refuses_groups_not_dividing_a_layer_before_training():
    params = {"conv1": {"kernel": jnp.ones((5, 5, 1, 8)), "bias": jnp.zeros(8)},
              "fc2": {"kernel": jnp.ones((64, 10)), "bias": jnp.zeros(10)}}
    method = make_method("gdrq", {"groups": 4})
    with pytest.raises(ValueError) as info:
        method.init_variables(params)
    assert str(info.value).startswith("gdrq: layer fc2 has 10 output channels, which groups=4 "
                                      "does not divide (use groups in [1, 2, 5, 10]")
    assert set(make_method("gdrq", {"groups": 2}).init_variables(params)["scales"]) == \
        {"conv1", "fc2"}


def test_cli_flags():
    from experiments.cli import build_parser, config_from_args
    from experiments.mnist import DEFAULTS
    parser = build_parser("t", DEFAULTS, "")
    args = parser.parse_args(["--method", "gdrq", "--bits", "3", "--groups", "2",
                              "--clip-k", "2.5", "--no-scale-clip", "--grouping", "norm",
                              "--float-first-last", "--dataset", "synthetic"])
    cfg = config_from_args(args, DEFAULTS).method_config
    assert cfg == GDRQConfig(bits=3, groups=2, clip_k=2.5, scale_clip=False, grouping="norm",
                             float_first_last=True)
    with pytest.raises(SystemExit):
        parser.parse_args(["--method", "gdrq", "--grouping", "random"])


# -- method variables, format, finalize ------------------------------------------------------------
def test_init_variables_are_the_group_steps_and_decay_excludes_them():
    rng = np.random.default_rng(0)
    params = {"conv": {"kernel": jnp.asarray(rng.standard_normal((3, 3, 2, 8)), jnp.float32),
                       "bias": jnp.zeros(8)}}
    method = make_method("gdrq", {"bits": 4, "groups": 4, "clip_k": 3.0})
    scales = method.init_variables(params)["scales"]["conv"]["kernel"]
    assert scales.shape == (4,)
    k = np.asarray(params["conv"]["kernel"], np.float64)
    expected = [3.0 * np.abs(k[..., 2 * g:2 * g + 2]).mean() / 7 for g in range(4)]
    np.testing.assert_allclose(np.asarray(scales), expected, rtol=1e-6)
    trainable = {"params": params, "method": {"scales": {"conv": {"kernel": scales}}}}
    mask = method.decay_mask(trainable)
    assert mask["params"]["conv"]["kernel"] is True
    assert mask["method"]["scales"]["conv"]["kernel"] is False


def test_finalize_codes_format_and_quantized_params_agree():
    rng = np.random.default_rng(5)
    params = {"a": {"kernel": jnp.asarray(rng.standard_normal((3, 3, 2, 8)), jnp.float32)},
              "b": {"kernel": jnp.asarray(rng.standard_normal((16, 4)), jnp.float32),
                    "bias": jnp.ones(4)}}
    method = make_method("gdrq", {"bits": 4, "groups": 2, "grouping": "norm", "clip_k": 2.0})
    trainable = {"params": params, "method": method.init_variables(params)}
    trainable["method"]["scales"]["a"]["kernel"] *= jnp.array([1.3, 0.7])   # "learned"
    hq = method.finalize(trainable, None)
    qp = jax.jit(method.quantized_params)(trainable, None)
    for name in ("a", "b"):
        fmt = hq.formats[name]["kernel"]
        codes = np.asarray(hq.codes[name]["kernel"])
        assert isinstance(fmt, GDRQFormat) and codes.dtype == np.int32
        assert fmt.code_min == -7 and fmt.code_max == 7 and fmt.groups == 2
        assert -7 <= codes.min() and codes.max() <= 7 and np.abs(codes).max() == 7
        expected = codes.astype(np.float64) * np.asarray(fmt.step_for(codes.ndim), np.float64)
        np.testing.assert_array_equal(np.asarray(hq.params[name]["kernel"], np.float64), expected)
        np.testing.assert_array_equal(np.asarray(qp[name]["kernel"]),
                                      np.asarray(hq.params[name]["kernel"]))
        assert sorted(np.bincount(fmt.group_of).tolist()) == [fmt.scale.size // 2] * 2
        np.testing.assert_allclose(
            fmt.group_scales(), np.asarray(trainable["method"]["scales"][name]["kernel"]),
            rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(hq.params["b"]["bias"]), 1.0)
    layers = json.loads(json.dumps([r.as_dict() for r in hq.report]))
    assert [layer["kind"] for layer in layers] == ["gdrq", "gdrq"]
    assert layers[0]["bits"] == 4 and len(layers[0]["group_of"]) == 8
    q, f = hq.weight_bits()
    # 4 bits per weight, 2 float32 scales and a 1-bit group index per channel for each kernel,
    # the float32 bias
    assert q == (144 + 64) * 4 + 2 * (2 * 32) + (8 + 4) + 4 * 32
    assert f == (144 + 64 + 4) * 32


def test_describe():
    assert make_method("gdrq", {"bits": 4}).describe() == "gdrq-4bit-g4-k3.101"
    assert make_method("gdrq", {"bits": 4, "clip_k": 2.0}).describe() == "gdrq-4bit-g4-k2"
    assert make_method("gdrq", {"scale_clip": False, "grouping": "norm",
                                "groups": 1}).describe() == "gdrq-2bit-g1-noclip-norm"


# -- folding ------------------------------------------------------------------------------------
class ConvBN(nn.Module):
    features: int
    dense: bool = False
    bn: bool = True

    @nn.compact
    def __call__(self, x):
        if self.dense:
            x = nn.Dense(self.features, use_bias=True, name="layer")(x)
        else:
            x = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=True, name="layer")(x)
        if self.bn:
            x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return x


@pytest.mark.parametrize("bn", [True, False], ids=["bn", "no-bn"])
@pytest.mark.parametrize("dense", [False, True], ids=["conv", "dense"])
@pytest.mark.parametrize("groups", [1, 2, 4, 8])
def test_folding_is_exact(groups, dense, bn):
    rng = np.random.default_rng(groups * 10 + dense * 2 + bn)
    cout = 8
    model = ConvBN(cout, dense, bn)
    x = jnp.asarray(rng.standard_normal((4, 6, 6, 3) if not dense else (4, 24)), jnp.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    kernel = variables["params"]["layer"]["kernel"]
    bits = 4
    steps, group_of = group_steps(kernel, bits, groups, clip_k=2.5, grouping="norm")
    alpha = steps * jnp.asarray(rng.uniform(0.5, 2.0, groups), jnp.float32)   # "learned"
    q = gdrq_quantize(kernel, alpha, bits, clip_k=2.5, grouping="norm")
    codes = gdrq_codes(kernel, bits, groups, clip_k=2.5, grouping="norm")
    bias = jnp.asarray(rng.standard_normal(cout), jnp.float32)
    params = {"layer": {"kernel": q, "bias": bias}}
    state = {}
    batch_norm = None
    if bn:
        params["bn"] = {"scale": jnp.asarray(rng.uniform(0.5, 2, cout), jnp.float32),
                        "bias": jnp.asarray(rng.standard_normal(cout), jnp.float32)}
        state = {"batch_stats": {"bn": {
            "mean": jnp.asarray(rng.standard_normal(cout), jnp.float32),
            "var": jnp.asarray(rng.uniform(0.3, 3.0, cout), jnp.float32)}}}
        batch_norm = {**params["bn"], **state["batch_stats"]["bn"]}
    unfolded = model.apply({"params": params, **state}, x)

    folded = fold_group_scales(codes, channel_scales(alpha, group_of, bits), bias, batch_norm)
    assert folded.kernel.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(folded.kernel), np.asarray(codes))
    fparams = {"layer": {"kernel": folded.kernel.astype(jnp.float32),
                         "bias": jnp.zeros(cout, jnp.float32)}}
    if bn:
        assert folded.out_scale is None and folded.out_bias is None
        fb = folded.batch_norm
        fparams["bn"] = {"scale": fb["scale"], "bias": fb["bias"]}
        fstate = {"batch_stats": {"bn": {"mean": fb["mean"], "var": fb["var"]}}}
        out = model.apply({"params": fparams, **fstate}, x)
    else:
        assert folded.batch_norm is None
        out = model.apply({"params": fparams}, x) * folded.out_scale + folded.out_bias
    assert float(jnp.max(jnp.abs(unfolded))) > 0.5          # a non-trivial output
    assert float(jnp.max(jnp.abs(out - unfolded))) < 1e-5


def test_fold_group_scales_bad_inputs():
    with pytest.raises(TypeError, match="codes must be integers"):
        fold_group_scales(jnp.ones((2, 3)), jnp.ones(3))
    with pytest.raises(ValueError, match=r"channel_scale must have shape \(cout,\) = \(3,\)"):
        fold_group_scales(jnp.ones((2, 3), jnp.int32), jnp.ones(2))
    with pytest.raises(ValueError, match="needs 'mean' and 'var'"):
        fold_group_scales(jnp.ones((2, 3), jnp.int32), jnp.ones(3), None, {"scale": jnp.ones(3)})


# -- training ------------------------------------------------------------------------------------
@pytest.mark.e2e
def test_short_training_learns_and_finalizes_in_range(tmp_path):
    dataset = synthetic_digits(n_train=256, n_test=128)
    config = TrainConfig(dataset="synthetic", model="lenet5", method="gdrq",
                         method_config={"bits": 2, "groups": 2, "clip_k": 2.0},
                         acts={"bits": 4},
                         epochs=3, batch_size=32, optimizer="adam", lr=3e-3, weight_decay=0.0,
                         width=0.125, workdir=str(tmp_path), progress=False)
    report = train(config, dataset=dataset)
    assert report["test_error_quantized"] < 0.25            # chance is 0.75
    assert report["layers"] and all(layer["kind"] == "gdrq" and layer["bits"] == 2
                                    for layer in report["layers"])
    for layer in report["layers"]:
        assert len(layer["group_scales"]) == 2 and all(s > 0 for s in layer["group_scales"])


@pytest.mark.e2e
def test_scales_learn_and_stay_positive():
    from tests.test_methods import build
    dataset = synthetic_digits(n_train=128, n_test=64)
    model, method, state, step, _ = build(dataset, "gdrq")
    first = jax.tree_util.tree_leaves(state.method_vars)
    assert [a.shape for a in first] == [(2,)] * 4
    for i in range(8):
        lo = (i % 4) * 32
        state, _ = step(state, dataset.train_images[lo:lo + 32], dataset.train_labels[lo:lo + 32])
    last = jax.tree_util.tree_leaves(state.method_vars)
    assert all(not np.allclose(a, b) for a, b in zip(first, last))   # every layer's scales train
    assert all(np.all(np.asarray(a) > 0) for a in last)


# -- the bit-dependent default clip ------------------------------------------------------------
def gaussian_mse(k: float, bits: int) -> float:
    """E[(W - Q(W))**2] for W ~ N(0, 1) on GDRQ's grid, by a fine Riemann sum (numpy only)."""
    n = 2 ** (bits - 1) - 1
    step = k * np.sqrt(2 / np.pi) / n
    x = np.linspace(-12.0, 12.0, 1_200_001)
    q = np.round(np.clip(x / step, -n, n)) * step
    pdf = np.exp(-x * x / 2) / np.sqrt(2 * np.pi)
    return float(np.sum((x - q) ** 2 * pdf) * (x[1] - x[0]))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_default_clip_k_minimises_the_gaussian_error(bits):
    k = GAUSSIAN_CLIP_K[bits]
    best = gaussian_mse(k, bits)
    for other in (0.97 * k, 0.99 * k, 1.01 * k, 1.03 * k):
        assert best < gaussian_mse(other, bits)
    assert GDRQConfig(bits=bits).clip_k == k
    assert GDRQConfig(bits=bits, clip_k=2.0).clip_k == 2.0   # explicit values are kept


def test_default_clip_k_gains_about_5_db_at_4_bits_over_2():
    gain_db = 10 * np.log10(gaussian_mse(2.0, 4) / gaussian_mse(GAUSSIAN_CLIP_K[4], 4))
    assert 4.7 < gain_db < 5.0      # 4.86 dB (closed form)
