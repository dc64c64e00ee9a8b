"""LSQ (Esser et al. 2020): the quantizer's gradients against the paper's equations computed by
hand in numpy, the gradient scale, finite differences where the function is smooth, the
initialisation, power-of-two steps, and the method through the trainer (contract variants,
integer export)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tests.test_methods as contract
from symog_jax.methods import make_method
from symog_jax.methods.lsq import step_format
from symog_jax.quantizers.scaled import ScaledFormat
from symog_jax.numerics.formats import FixedPointFormat
from symog_jax.quantizers.lsq import (MIN_STEP, exact_product_step, grad_scale_factor,
                                      init_step, learned_step, lsq_codes, lsq_quantize,
                                      power_of_two_step, scale_grad)
from tests.test_training import synthetic_digits


# -- ground truth: the paper's equations in float64 numpy -----------------------------------------

def paper(v, s, bits):
    """``(v_hat, d v_hat / d s, d v_hat / d v)`` elementwise: LSQ eq. 1-3 with Q_N = Q_P."""
    q = 2 ** (bits - 1) - 1
    v, s = np.asarray(v, np.float64), np.asarray(s, np.float64)
    x = v / s
    v_hat = np.round(np.clip(x, -q, q)) * s                 # numpy rounds half to even too
    d_s = np.where(x <= -q, -q, np.where(x >= q, q, -x + np.round(x)))
    d_v = ((x > -q) & (x < q)).astype(np.float64)
    return v_hat, d_s, d_v


def vjp(fn, use_jit, *args):
    """``(value, grads of sum(u * fn(*args)))`` with a fixed cotangent ``u``."""
    f = jax.jit(fn) if use_jit else fn
    value, pullback = jax.vjp(f, *args)
    u = cotangent(value.shape)
    return value, pullback(jnp.asarray(u, value.dtype)), u


def cotangent(shape):
    return np.random.default_rng(0).uniform(0.5, 2.0, shape).astype(np.float32)


# 2 bits (Q = 1) and 3 bits (Q = 3) with s = 0.5: exactly at the bounds (+-Q s), inside, on
# rounding ties (x = +-0.5, 2.5: half to even), beyond the range, and zero.
V = np.array([-3.0, -1.5, -1.25, -0.75, -0.5, -0.3, -0.25, 0.0, 0.1, 0.25, 0.3, 0.5, 0.6, 0.75,
              1.2, 1.25, 1.5, 1.6, 4.0], np.float32)


@pytest.mark.parametrize("bits", [2, 3])
def test_step_and_weight_gradients_are_the_papers_per_tensor(bits, use_jit):
    s = jnp.float32(0.5)
    value, (g_v, g_s), u = vjp(lambda v, s: lsq_quantize(v, s, bits), use_jit, jnp.asarray(V), s)
    v_hat, d_s, d_v = paper(V, 0.5, bits)
    np.testing.assert_array_equal(np.asarray(value), v_hat)
    np.testing.assert_allclose(float(g_s), np.sum(u * d_s), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(g_v), u * d_v)
    # the cases the test is about are all there
    q = 2 ** (bits - 1) - 1
    x = V / 0.5
    assert np.any(x == q) and np.any(x == -q) and np.any(x > q) and np.any(x < -q)
    assert np.any(np.abs(x) < q) and np.any(np.abs(x % 1) == 0.5)


@pytest.mark.parametrize("bits", [2, 4])
def test_step_and_weight_gradients_are_the_papers_per_channel(bits, use_jit):
    w = np.random.default_rng(1).normal(0, 1, (6, 3)).astype(np.float32)
    w[0] = [0.5, 0.25 * (2 ** (bits - 1) - 1), -1.0 * (2 ** (bits - 1) - 1)]   # at the bounds
    step = np.array([[0.5, 0.25, 1.0]], np.float32)
    value, (g_v, g_s), u = vjp(lambda v, s: lsq_quantize(v, s, bits), use_jit,
                               jnp.asarray(w), jnp.asarray(step))
    v_hat, d_s, d_v = paper(w, step, bits)
    np.testing.assert_array_equal(np.asarray(value), v_hat)
    assert g_s.shape == (1, 3)
    np.testing.assert_allclose(np.asarray(g_s), np.sum(u * d_s, axis=0, keepdims=True),
                               rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(g_v), u * d_v)


def test_codes_are_the_forward_pass_codes(use_jit):
    w = np.random.default_rng(2).normal(0, 1, (50, 4)).astype(np.float32)
    step = np.array([[0.3, 0.17, 0.5, 2.0]], np.float32)
    codes = (jax.jit(lsq_codes, static_argnums=2) if use_jit else lsq_codes)(w, step, 3)
    expected = np.clip(np.round(w / step), -3, 3)             # in float32, as jax divides
    np.testing.assert_array_equal(np.asarray(codes), expected)
    assert codes.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(lsq_quantize(w, step, 3)),
                                  expected.astype(np.float32) * step)


@pytest.mark.parametrize("bits, n", [(2, 18), (4, 1152), (8, 5)])
def test_gradient_scale_multiplies_the_step_gradient_by_exactly_g(bits, n, use_jit):
    g = grad_scale_factor(n, bits)
    assert g == 1 / math.sqrt(n * (2 ** (bits - 1) - 1))
    w = jnp.asarray(np.random.default_rng(3).normal(0, 1, (n, 2)), jnp.float32)
    s = jnp.asarray([[0.4, 0.7]], jnp.float32)

    def loss(s, g):
        return jnp.sum(jnp.asarray(cotangent(w.shape)) * lsq_quantize(w, scale_grad(s, g), bits))
    grad = jax.jit(jax.grad(loss), static_argnums=1) if use_jit else jax.grad(loss)
    plain, scaled = np.asarray(grad(s, 1.0)), np.asarray(grad(s, g))
    assert np.all(plain != 0)
    np.testing.assert_array_equal(scaled, plain * np.float32(g))
    assert float(loss(s, g)) == float(loss(s, 1.0))           # the value is untouched


def test_scale_grad_value_is_exact():
    s = jnp.asarray([0.1, 3.7e-5, 123.456], jnp.float32)
    np.testing.assert_array_equal(np.asarray(scale_grad(s, 0.0123)), np.asarray(s))


# -- finite differences where the function is smooth ----------------------------------------------

def test_step_gradient_is_the_derivative_when_every_weight_is_clipped():
    """All |v/s| > Q: v_hat = +-Q s, smooth in s, and the paper's gradient is its derivative."""
    v = jnp.asarray([-5.0, -2.2, 2.5, 4.0, 7.0], jnp.float32)
    u = jnp.asarray(cotangent(v.shape))

    def loss(s):
        return jnp.sum(u * lsq_quantize(v, s, 2))
    s, h = 0.5, 1e-3
    fd = (float(loss(s + h)) - float(loss(s - h))) / (2 * h)
    np.testing.assert_allclose(float(jax.grad(loss)(jnp.float32(s))), fd, rtol=1e-3)


def test_step_gradient_inside_the_range_is_the_derivative_minus_v_over_s():
    """Away from rounding jumps v_hat = code * s, whose derivative is the code; the paper's
    gradient adds -v/s (the straight-through part) for the weights inside the range."""
    rng = np.random.default_rng(4)
    x = rng.uniform(-3.4, 3.4, 200)
    x = x[np.abs(x - np.floor(x) - 0.5) > 0.1][:100]    # no rounding jump within +-h
    v = jnp.asarray(x * 0.5, jnp.float32)
    u = jnp.asarray(cotangent(v.shape))

    def loss(s):
        return jnp.sum(u * lsq_quantize(v, s, 3))
    s, h = 0.5, 1e-2
    fd = (float(loss(s + h)) - float(loss(s - h))) / (2 * h)
    inside = np.abs(np.asarray(v) / s) < 3
    straight_through = -np.sum(np.asarray(u) * np.asarray(v) / s * inside)
    np.testing.assert_allclose(float(jax.grad(loss)(jnp.float32(s))), fd + straight_through,
                               rtol=1e-3, atol=1e-3)


def test_power_of_two_step_gradient_is_the_derivative_of_2_to_the_l_at_integers(use_jit):
    f = jax.jit(power_of_two_step) if use_jit else power_of_two_step
    d = jax.jit(jax.grad(power_of_two_step)) if use_jit else jax.grad(power_of_two_step)
    for log2_step in (-6.0, -1.0, 0.0, 3.0):
        h = 1e-3
        fd = (2.0 ** (log2_step + h) - 2.0 ** (log2_step - h)) / (2 * h)
        np.testing.assert_allclose(float(d(jnp.float32(log2_step))), fd, rtol=1e-5)
        assert float(f(jnp.float32(log2_step))) == 2.0 ** log2_step


# -- power-of-two steps ---------------------------------------------------------------------------

def test_power_of_two_steps_are_exact_powers_with_a_straight_through_gradient(use_jit):
    logs = jnp.asarray([-7.49, -2.51, -0.2, 0.5, 1.5, 2.7], jnp.float32)
    steps = np.asarray((jax.jit(power_of_two_step) if use_jit else power_of_two_step)(logs))
    np.testing.assert_array_equal(steps, 2.0 ** np.round(np.asarray(logs, np.float64)))
    mantissa, _ = np.frexp(steps)
    assert np.all(mantissa == 0.5)
    jac = jax.vmap(jax.grad(power_of_two_step))(logs)
    np.testing.assert_allclose(np.asarray(jac), steps * np.log(2.0), rtol=1e-7)


def test_method_power_of_two_gradient_is_ln2_s_g_times_the_papers(use_jit):
    """dL/dl = ln 2 * 2^round(l) * g * dL/ds, with the paper's dL/ds, by hand."""
    w = np.random.default_rng(5).normal(0, 0.1, (3, 3, 2, 4)).astype(np.float32)
    method = make_method("lsq", {"bits": 2, "granularity": "channel", "power_of_two": True})
    params = {"conv": {"kernel": jnp.asarray(w), "bias": jnp.zeros(4)}}
    log2 = jnp.asarray([[[[-4.3, -3.6, -2.5, -3.0]]]], jnp.float32)
    trainable = {"params": params, "method": {"log2_steps": {"conv": {"kernel": log2}}}}
    u = cotangent(w.shape)

    def loss(t):
        return jnp.sum(u * method.train_params(t, None)["conv"]["kernel"])
    grads = (jax.jit(jax.grad(loss)) if use_jit else jax.grad(loss))(trainable)
    s = 2.0 ** np.round(np.asarray(log2, np.float64))
    v_hat, d_s, d_v = paper(w, s, 2)
    g = 1 / math.sqrt(3 * 3 * 2 * 1)                          # N_w: weights per channel
    expected = np.log(2.0) * s * g * np.sum(u * d_s, axis=(0, 1, 2), keepdims=True)
    np.testing.assert_allclose(np.asarray(grads["method"]["log2_steps"]["conv"]["kernel"]),
                               expected, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(grads["params"]["conv"]["kernel"]), u * d_v)
    np.testing.assert_array_equal(np.asarray(method.train_params(trainable, None)["conv"]
                                             ["kernel"]), v_hat.astype(np.float32))

    fmt = method.weight_formats(trainable)["conv"]["kernel"]
    assert fmt == FixedPointFormat(2, (4, 4, 2, 3))          # frac_bits = -round(log2 s)
    assert method.weight_formats(trainable)["conv"]["bias"] is None


def test_step_format_refuses_a_step_that_is_no_power_of_two():
    with pytest.raises(ValueError, match="power-of-two steps expected"):
        step_format(2, np.array([[0.3]]), "tensor", True)
    assert step_format(3, np.array([[[[0.125]]]]), "tensor", True) == FixedPointFormat(3, 3)


# -- the method's gradient scale, initialisation and exact products -------------------------------

@pytest.mark.parametrize("granularity, n_w", [("tensor", 3 * 3 * 2 * 4), ("channel", 3 * 3 * 2)])
@pytest.mark.parametrize("power_of_two", [False, True])
def test_method_scales_the_step_gradient_by_one_over_sqrt_n_qp(granularity, n_w, power_of_two):
    w = jnp.asarray(np.random.default_rng(6).normal(0, 0.1, (3, 3, 2, 4)), jnp.float32)
    params = {"conv": {"kernel": w}}
    u = cotangent(w.shape)
    grads = {}
    for scaled in (True, False):
        method = make_method("lsq", {"bits": 3, "granularity": granularity,
                                     "power_of_two": power_of_two, "grad_scale": scaled})
        trainable = {"params": params, "method": method.init_variables(params)}
        grads[scaled] = jax.grad(lambda t: jnp.sum(
            u * method.train_params(t, None)["conv"]["kernel"]))(trainable)
    key = "log2_steps" if power_of_two else "steps"
    plain = np.asarray(grads[False]["method"][key]["conv"]["kernel"])
    scaled = np.asarray(grads[True]["method"][key]["conv"]["kernel"])
    assert np.all(plain != 0)
    np.testing.assert_array_equal(scaled, plain * np.float32(1 / math.sqrt(n_w * 3)))
    np.testing.assert_array_equal(np.asarray(grads[True]["params"]["conv"]["kernel"]),
                                  np.asarray(grads[False]["params"]["conv"]["kernel"]))


@pytest.mark.parametrize("bits", [2, 3, 8])
def test_initial_step_is_two_mean_abs_over_sqrt_qp(bits):
    rng = np.random.default_rng(7)
    conv = rng.normal(0, 0.2, (3, 3, 2, 5)).astype(np.float32)
    dense = rng.laplace(0, 0.5, (7, 3)).astype(np.float32)
    params = {"conv": {"kernel": jnp.asarray(conv), "bias": jnp.zeros(5)},
              "fc": {"kernel": jnp.asarray(dense), "bias": jnp.zeros(3)}}
    sqrt_qp = math.sqrt(2 ** (bits - 1) - 1)
    for granularity, axes in (("tensor", None), ("channel", "all but last")):
        for power_of_two in (False, True):
            method = make_method("lsq", {"bits": bits, "granularity": granularity,
                                         "power_of_two": power_of_two})
            got = method.init_variables(params)["log2_steps" if power_of_two else "steps"]
            assert set(got) == {"conv", "fc"} and set(got["conv"]) == {"kernel"}
            for name, w in (("conv", conv), ("fc", dense)):
                ax = None if axes is None else tuple(range(w.ndim - 1))
                s0 = 2 * np.mean(np.abs(w.astype(np.float64)), axis=ax, keepdims=True) / sqrt_qp
                s0 = s0.reshape((1,) * (w.ndim - 1) + (-1,))
                value = np.asarray(got[name]["kernel"], np.float64)
                assert value.shape == s0.shape
                np.testing.assert_allclose(2.0 ** value if power_of_two else value, s0,
                                           rtol=1e-5)


def test_initial_step_of_a_zero_kernel_is_the_floor():
    s0 = init_step(jnp.zeros((4, 2)), 2, "channel")
    np.testing.assert_array_equal(np.asarray(s0), np.full((1, 2), MIN_STEP, np.float32))


@pytest.mark.parametrize("bits", [2, 3, 5, 8])
def test_free_steps_make_every_code_times_step_exact(bits):
    steps = jnp.asarray(np.random.default_rng(8).uniform(1e-4, 3.0, 500), jnp.float32)
    rounded = np.asarray(exact_product_step(steps, bits))
    assert np.all(np.abs(rounded / np.asarray(steps) - 1) <= 2.0 ** -(25 - bits))
    q = 2 ** (bits - 1) - 1
    codes = np.arange(-q, q + 1, dtype=np.float32)[:, None]
    np.testing.assert_array_equal((codes * rounded[None]).astype(np.float64),
                                  codes.astype(np.float64) * rounded.astype(np.float64)[None])
    # straight through, and the gradient-scaled learned step is the same value
    assert float(jax.grad(lambda s: exact_product_step(s, bits))(jnp.float32(0.1))) == 1.0
    np.testing.assert_array_equal(np.asarray(learned_step(steps, 0.01, bits,
                                                          power_of_two=False)), rounded)


@pytest.mark.parametrize("config, message", [
    ({"bits": 1}, r"bits must be in \[2, 8\], got 1"),
    ({"bits": 9}, r"bits must be in \[2, 8\], got 9"),
    ({"granularity": "pixel"}, "granularity must be one of"),
    ({"power_of_two": "yes"}, "power_of_two must be a bool"),
    ({"grad_scale": 1}, "grad_scale must be a bool"),
    ({"step": 0.1}, "has no parameter"),
])
def test_bad_lsq_configs_are_one_line_errors(config, message):
    with pytest.raises(ValueError, match=message) as info:
        make_method("lsq", config)
    assert "\n" not in str(info.value)


def test_describe_names_the_variant():
    assert make_method("lsq").describe() == "lsq-2bit"
    assert make_method("lsq", {"bits": 4, "granularity": "channel", "power_of_two": True,
                               "grad_scale": False}).describe() == "lsq-4bit-channel-pow2-nogs"


def test_lsq_format_steps_and_codes():
    fmt = step_format(3, np.array([[0.5, 0.2]], np.float32), "channel", power_of_two=False)
    w = jnp.asarray([[0.7, -0.5], [2.0, 0.05]], jnp.float32)
    np.testing.assert_array_equal(np.asarray(fmt.to_codes(w)), [[1, -2], [3, 0]])
    assert np.broadcast_shapes(fmt.step_for(2).shape, (2, 2)) == (2, 2)
    assert (fmt.code_min, fmt.code_max) == (-3, 3)
    assert fmt.to_record()["kind"] == "lsq" and fmt.overhead_bits == 64
    assert fmt.to_record()["granularity"] == "channel"


# -- through the trainer --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dataset():
    return synthetic_digits(n_train=128, n_test=64)


# tests/test_methods.py runs the contract on CONFIGS["lsq"] (2-bit power-of-two steps per
# channel); these are the other variants.
VARIANTS = {
    "free-tensor-2bit": {"bits": 2, "granularity": "tensor"},
    "free-channel-4bit": {"bits": 4, "granularity": "channel"},
    "pow2-tensor-3bit": {"bits": 3, "granularity": "tensor", "power_of_two": True},
}


@pytest.mark.e2e
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_method_contract_on_every_variant(variant, dataset, monkeypatch):
    monkeypatch.setitem(contract.CONFIGS, "lsq", VARIANTS[variant])
    contract.test_method_contract_step_codes_and_finalized_forward(dataset, "lsq", None)


@pytest.mark.e2e
@pytest.mark.parametrize("power_of_two", [False, True])
def test_steps_learn_and_free_steps_stay_positive(power_of_two, dataset, monkeypatch):
    monkeypatch.setitem(contract.CONFIGS, "lsq", {"bits": 2, "granularity": "channel",
                                                  "power_of_two": power_of_two})
    model, method, state, step, prepare = contract.build(dataset, "lsq")
    before = jax.tree_util.tree_leaves(state.method_vars)
    for i in range(4):
        state, _ = step(state, dataset.train_images[i * 32:(i + 1) * 32],
                        dataset.train_labels[i * 32:(i + 1) * 32])
    after = jax.tree_util.tree_leaves(state.method_vars)
    assert len(before) == len(after) == 4
    assert all(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(before, after))
    if not power_of_two:
        assert all(np.all(np.asarray(a) >= MIN_STEP) for a in after)
    hq = method.finalize(state.trainable, state.opt_state)
    kinds = {type(r.format) for r in hq.report}
    assert kinds == ({FixedPointFormat} if power_of_two else {ScaledFormat})
    if power_of_two:
        assert all(isinstance(r.format.frac_bits, tuple) for r in hq.report)


@pytest.mark.e2e
@pytest.mark.parametrize("power_of_two", [False, True])
def test_trained_lsq_w2a4_exports_reloads_exactly_and_runs_integer_only(power_of_two, dataset,
                                                                        tmp_path):
    from symog_jax.export import integer_inference as ii
    from symog_jax.export.integer import load_integer
    from symog_jax.pipelines import export_run
    from symog_jax.training import TrainConfig, train
    from tests.test_integer_export import _flax

    train(TrainConfig(dataset="synthetic", model="lenet5", method="lsq",
                      method_config={"bits": 2, "granularity": "channel",
                                     "power_of_two": power_of_two},
                      epochs=1, batch_size=32, optimizer="adam", lr=3e-3, weight_decay=0.0,
                      width=0.125, workdir=str(tmp_path / "run"), progress=False,
                      acts={"bits": 4}),
          dataset=dataset)
    manifest, run = export_run(tmp_path / "run", tmp_path / "x.npz", dataset=dataset)
    hq = run["hq"]
    net = load_integer(tmp_path / "x.npz")
    for a, b in zip(jax.tree_util.tree_leaves(net.hq.params), jax.tree_util.tree_leaves(hq.params)):
        assert a.dtype == np.float32 and np.array_equal(a, np.asarray(b))
    for a, b in zip(jax.tree_util.tree_leaves(net.hq.codes), jax.tree_util.tree_leaves(hq.codes)):
        assert np.array_equal(a, np.asarray(b))
    kernels = [r for r in manifest["params"] if r["quantized"]]
    assert len(kernels) == 4 and all(r["storage"] == "packed2" for r in kernels)
    assert {r["format"]["kind"] for r in kernels} == {"fixed_point" if power_of_two else "lsq"}
    program = ii.load_program(tmp_path / "x.npz")
    codes, logits, _ = ii.run_integer(program, dataset.test_images)
    ref, _ = _flax(run["model"], run["prepare"], hq.params, {}, run["act_formats"],
                   dataset.test_images)
    ref = np.asarray(ref)
    assert np.array_equal(ref.argmax(1), logits.argmax(1))
    assert np.abs(ref - logits).max() <= 1e-4


def test_finalize_refuses_non_finite_weights():
    params = {"fc": {"kernel": jnp.asarray([[0.1, jnp.nan], [0.3, -0.2]], jnp.float32)}}
    for power_of_two in (False, True):
        method = make_method("lsq", {"power_of_two": power_of_two})
        trainable = {"params": params,
                     "method": method.init_variables({"fc": {"kernel": jnp.ones((2, 2))}})}
        with pytest.raises(ValueError, match="NaN or inf"):
            method.finalize(trainable, None)
