"""PACT learned activation clips (symog_jax.quantizers.pact) against the paper's formulas
worked out by hand, alone and through quantize_activations on a linen model."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from symog_jax.numerics.formats import unsigned_format
from symog_jax.numerics.rounding import quantize_ste
from symog_jax.quantizers.activations import (ActivationQuantConfig, activation_format_report,
                                              calibrate_activation_formats, learned_ranges,
                                              quantize_activations, record_layer_inputs)
from symog_jax.quantizers.pact import PACTRange, log2_domain, pact_quantize, power_of_two_alpha
from symog_jax.training import TrainConfig
from symog_jax.training.run import act_range_optimizer

X = np.array([-0.5, 0.2, 0.9, 1.5, 2.0], np.float32)
G = np.array([1.0, 2.0, 3.0, 4.0, 5.0], np.float32)     # upstream dL/dy_q


def value_and_grads(fn, x, alpha, maybe_jit):
    def loss(x, a):
        y = fn(x, a)
        return jnp.sum(y * G), y
    (_, y), (dx, da) = maybe_jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
        jnp.asarray(x), jnp.float32(alpha))
    return np.asarray(y), np.asarray(dx), float(da)


def test_forward_and_gradients_by_hand(maybe_jit):
    # alpha 1.5, 2 bits: step 0.5. clip -> [0, .2, .9, 1.5, 1.5] -> levels [0, 0, 1, 1.5, 1.5].
    y, dx, da = value_and_grads(lambda x, a: pact_quantize(x, a, 2), X, 1.5, maybe_jit)
    np.testing.assert_array_equal(y, [0.0, 0.0, 1.0, 1.5, 1.5])
    np.testing.assert_array_equal(dx, [0.0, 2.0, 3.0, 0.0, 0.0])   # 1 on [0, alpha) only
    assert da == 9.0                                              # sum of G where x >= alpha


def test_power_of_two_clip_by_hand(maybe_jit):
    # alpha 1.4, 2 bits: step 1.4/3 -> 2**round(log2 0.467) = 0.5, clip used 1.5;
    # d alpha_used / d alpha = 1.5 / 1.4, times the sum of G where x >= 1.5 (4 + 5).
    y, dx, da = value_and_grads(lambda x, a: pact_quantize(x, power_of_two_alpha(a, 2), 2),
                                X, 1.4, maybe_jit)
    np.testing.assert_array_equal(y, [0.0, 0.0, 1.0, 1.5, 1.5])
    np.testing.assert_allclose(da, 9.0 * 1.5 / 1.4, rtol=1e-6)


def test_lsq_step_gradient_by_hand(maybe_jit):
    """LSQ's eq. 3 with Q_N = 0 and alpha = 3 s (2 bits), worked out by hand: alpha 1.5, step
    0.5; x / s = [-, 0.4, 1.8, -, -]: 0.2 rounds 0.4 -> 0 (term -0.4 / 3), 0.9 rounds
    1.8 -> 2 (term +0.2 / 3); 1.5 and 2.0 are clipped (term 1); -0.5 gives 0."""
    y, dx, da = value_and_grads(lambda x, a: pact_quantize(x, a, 2, step_gradient=True),
                                X, 1.5, maybe_jit)
    np.testing.assert_array_equal(y, [0.0, 0.0, 1.0, 1.5, 1.5])      # forward as PACT's
    np.testing.assert_array_equal(dx, [0.0, 2.0, 3.0, 0.0, 0.0])     # and d/dx too
    assert da == pytest.approx(2.0 * -0.4 / 3 + 3.0 * 0.2 / 3 + 4.0 + 5.0, abs=1e-6)
    # through the power-of-two clip: alpha 1.4 is used as 1.5 (as above), times 1.5 / 1.4
    _, _, da2 = value_and_grads(
        lambda x, a: PACTRange(a, bits=2, power_of_two=True, step_gradient=True)(x),
        X, 1.4, maybe_jit)
    assert da2 == pytest.approx((2.0 * -0.4 / 3 + 3.0 * 0.2 / 3 + 9.0) * 1.5 / 1.4, rel=1e-6)


def test_lsq_step_gradient_is_the_derivative_of_the_step_with_rounding_frozen(rng):
    """Independent check: with every ``round(x / s)`` held fixed (LSQ's straight-through),
    ``y = s * k`` inside the range and ``alpha`` outside, so the gradient is the central finite
    difference of that frozen function in ``alpha`` (float64 numpy)."""
    x = rng.uniform(-0.5, 3.0, 200)
    g = rng.normal(size=200)
    alpha, bits = 2.1, 3
    m = 2 ** bits - 1
    k = np.round(np.clip(x, 0, alpha) / (alpha / m))        # frozen codes

    def frozen(a):
        y = np.where(x >= alpha, a, np.where(x < 0, 0.0, k * a / m))
        return float(np.sum(g * y))
    expected = (frozen(alpha + 1e-6) - frozen(alpha - 1e-6)) / 2e-6
    got = jax.grad(lambda a: jnp.sum(jnp.asarray(g, jnp.float32) * pact_quantize(
        jnp.asarray(x, jnp.float32), a, bits, step_gradient=True)))(jnp.float32(alpha))
    # LSQ differentiates s * round(x / s) as round(x / s) - x / s: the frozen codes' k minus
    # the x / s that the straight-through rounding adds back
    inside = (x >= 0) & (x < alpha)
    expected -= float(np.sum(g[inside] * x[inside] / alpha))
    assert float(got) == pytest.approx(expected, rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("act_range, expected_clips", [
    ("pact-pow2", {3.0}),             # PACT: nothing is clipped, so alpha's gradient is 0
    ("lsq-pow2", {0.375, 0.75})])     # LSQ: down to the powers of two around the MSE optimum
def test_only_the_lsq_gradient_shrinks_a_clip_that_is_too_large(act_range, expected_clips):
    """2-bit activations uniform on [0, 0.5], loss: their mean squared rounding error;
    calibration went wrong and put the clip at 3 (step 1: everything rounds to 0). By brute
    force over steps (numpy, below) the MSE-optimal continuous step lies between 0.125 and
    0.25, so a power-of-two clip trained by LSQ's gradient ends at 3 * 0.125 or 3 * 0.25
    (a latent at the midpoint flips between them); PACT's never moves."""
    x = np.random.default_rng(1).uniform(0.0, 0.5, 4096).astype(np.float32)
    steps = np.linspace(0.05, 0.5, 901)
    mse = [np.mean((np.round(np.clip(x, 0, 3 * s) / s) * s - x) ** 2) for s in steps]
    assert 0.125 < steps[int(np.argmin(mse))] < 0.25
    config = TrainConfig(method="float", acts={"bits": 2, "range": act_range,
                                               "range_lr": 0.05})
    alphas = {"layer": jnp.float32(3.0)}
    tx = act_range_optimizer(config, 300, alphas)
    state = tx.init(alphas)
    xj = jnp.asarray(x)

    @jax.jit
    def step(alphas, state):
        def loss(a):
            r = PACTRange(a["layer"], bits=2, power_of_two=True,
                          step_gradient=act_range == "lsq-pow2")
            return jnp.mean((r(xj) - xj) ** 2)
        updates, state = tx.update(jax.grad(loss)(alphas), state, alphas)
        return optax.apply_updates(alphas, updates), state

    for _ in range(300):
        alphas, state = step(alphas, state)
    assert float(power_of_two_alpha(alphas["layer"], 2)) in expected_clips


def test_lsq_pow2_range_from_the_config():
    (fc,) = learned_ranges({"fc": unsigned_format(2, 1)}, power_of_two=True,
                           step_gradient=True).values()
    assert fc.power_of_two and fc.step_gradient and float(fc.alpha) == 1.5
    # trained like pact-pow2: Adam on log2(alpha), first step 2**-lr for any gradient size
    config = TrainConfig(method="float", acts={"bits": 2, "range": "lsq-pow2"})
    tx = act_range_optimizer(config, 10, {"l": jnp.float32(1.0)})
    updates, _ = tx.update({"l": jnp.float32(1e-3)}, tx.init({"l": jnp.float32(1.0)}),
                           {"l": jnp.float32(1.0)})
    assert float(updates["l"]) == pytest.approx(2 ** -0.01 - 1, rel=1e-4)


@pytest.mark.parametrize("act_range, power_of_two, step_gradient", [
    ("calibrated", None, None),
    ("pact", False, False),
    ("pact-pow2", True, False),
    ("lsq-pow2", True, True)])
def test_each_range_name_calibrates_to_its_kind_of_clip(act_range, power_of_two, step_gradient):
    """The range name picks the layer's quantizer: a fixed format, or a clip with its switches
    (written out here, not read from the library's table)."""
    x = jnp.asarray(np.linspace(0.0, 1.0, 64, dtype=np.float32).reshape(8, 8))
    _, rec = record_layer_inputs(lambda: nn.Dense(3).init_with_output(jax.random.key(0), x))
    (q,) = calibrate_activation_formats(rec, ActivationQuantConfig(
        bits=2, range=act_range, skip_first=False, skip_last=False)).values()
    if power_of_two is None:
        assert not isinstance(q, PACTRange)
        return
    assert isinstance(q, PACTRange)
    assert (q.power_of_two, q.step_gradient) == (power_of_two, step_gradient)


def test_power_of_two_range_is_its_fixed_point_format(rng):
    r = PACTRange(jnp.float32(2.9), bits=3, power_of_two=True)     # step 2.9/7 -> 0.5
    fmt = r.to_fixed_point()
    assert fmt == unsigned_format(3, 1)
    x = jnp.asarray(rng.uniform(-1, 5, 1000), jnp.float32)
    np.testing.assert_array_equal(np.asarray(r(x)), np.asarray(quantize_ste(x, fmt)))
    with pytest.raises(ValueError, match="power_of_two=True"):
        PACTRange(jnp.float32(2.9), bits=3).to_fixed_point()


def test_bad_arguments():
    with pytest.raises(ValueError, match="bits must be an integer in 1..16"):
        pact_quantize(X, 1.0, 0)
    with pytest.raises(ValueError, match="alpha must be a scalar"):
        pact_quantize(X, jnp.ones(2), 2)


class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(3, name="fc1")(x))
        return nn.Dense(2, name="fc2")(x)


def test_learned_range_through_a_linen_model(maybe_jit):
    model = Tiny()
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 4)) * 2, jnp.float32)
    v = model.init(jax.random.key(1), x)
    alpha = 0.75

    def loss(a):
        with quantize_activations({"fc2": PACTRange(a, bits=2)}):
            return jnp.sum(model.apply(v, x))
    value, grad = maybe_jit(jax.value_and_grad(loss))(jnp.float32(alpha))
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), v["params"])
    h = np.maximum(np.asarray(x, np.float64) @ p["fc1"]["kernel"] + p["fc1"]["bias"], 0)
    step = alpha / 3
    hq = np.round(np.clip(h, 0, alpha) / step) * step
    expected = np.sum(hq @ p["fc2"]["kernel"] + p["fc2"]["bias"])
    # dL/dalpha = sum over inputs h >= alpha of dL/dh_q = the row sum of fc2's kernel.
    row_sums = p["fc2"]["kernel"].sum(axis=1)
    expected_grad = np.sum((h >= alpha) * row_sums[None, :])
    assert np.any(h >= alpha) and np.any((h > 0) & (h < alpha))
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)
    np.testing.assert_allclose(float(grad), expected_grad, rtol=1e-5)


def test_learned_ranges_start_at_the_calibrated_top_level():
    r = learned_ranges({"fc2": unsigned_format(4, 2)}, power_of_two=True)["fc2"]
    assert float(r.alpha) == 15 / 4 and r.bits == 4 and r.power_of_two
    assert r.to_fixed_point() == unsigned_format(4, 2)
    assert activation_format_report({"fc2": r}) == [
        {"path": "fc2", "bits": 4, "signed": False, "pact_alpha": 3.75, "latent_alpha": 3.75,
         "power_of_two": True}]
    moved = PACTRange(jnp.float32(5.0), bits=4, power_of_two=True)   # step 1/3 -> 1/4
    assert activation_format_report({"fc2": moved})[0]["pact_alpha"] == 3.75
    assert activation_format_report({"fc2": moved})[0]["latent_alpha"] == 5.0


# -- training a power-of-two clip in the log2 domain ---------------------------------------------

def test_log2_domain_sgd_is_a_multiplicative_step_by_hand(maybe_jit):
    # l = log2(p); dL/dl = g * p * ln2; sgd(lr) gives l' = l - lr * g * p * ln2, p' = 2**l'.
    p = {"a": jnp.float32(3.0), "b": jnp.array([0.5, 8.0], jnp.float32)}
    g = {"a": jnp.float32(0.25), "b": jnp.array([-1.0, 0.125], jnp.float32)}
    tx = log2_domain(optax.sgd(0.1))
    updates, _ = maybe_jit(tx.update)(g, tx.init(p), p)
    new = optax.apply_updates(p, updates)
    ln2 = np.log(2.0)
    np.testing.assert_allclose(new["a"], 2 ** (np.log2(3.0) - 0.1 * 0.25 * 3.0 * ln2), rtol=1e-6)
    np.testing.assert_allclose(new["b"], [2 ** (-1 + 0.1 * 0.5 * ln2),
                                          2 ** (3 - 0.1 * 0.125 * 8.0 * ln2)], rtol=1e-6)


def test_log2_domain_adam_moves_every_clip_by_the_same_factor():
    # Adam's first step is lr * sign(gradient) in log2 units, whatever the size of p or g.
    p = {"small": jnp.float32(0.01), "large": jnp.float32(100.0)}
    g = {"small": jnp.float32(-3.0), "large": jnp.float32(1e-4)}
    tx = log2_domain(optax.adam(0.05))
    updates, _ = tx.update(g, tx.init(p), p)
    new = optax.apply_updates(p, updates)
    np.testing.assert_allclose(new["small"], 0.01 * 2 ** 0.05, rtol=1e-5)
    np.testing.assert_allclose(new["large"], 100.0 * 2 ** -0.05, rtol=1e-5)
    with pytest.raises(ValueError, match="needs params"):
        tx.update(g, tx.init(p))


@pytest.mark.parametrize("loss_scale", [1.0, 1e-3])
@pytest.mark.parametrize("start, target_clip, expected", [(1.5, 3.0, 3.0), (3.0, 1.5, 1.5)])
def test_pow2_clip_crosses_to_the_power_of_two_the_gradient_asks_for(start, target_clip,
                                                                     expected, loss_scale):
    """2-bit activations uniform on [0, 4]; the loss wants them clipped at ``target_clip``.
    Calibration leaves the clip's latent in the middle of its power-of-two bucket (1.5 or 3),
    a factor sqrt(2) from the next one; the run's optimizer for ``pact-pow2`` (default learning
    rate, 200 steps, cosine) must carry it across, and then stop there (PACT's gradient is 0
    once nothing clipped differs from the target). ``loss_scale`` 1e-3: a clip's gradient as
    small as in a network (where SGD at the network's learning rate, the earlier optimizer,
    moved the latent by at most 9 % and never crossed)."""
    x = jnp.asarray(np.random.default_rng(0).uniform(0.0, 4.0, 4096), jnp.float32)
    target = jnp.minimum(x, target_clip)
    config = TrainConfig(method="float", acts={"bits": 2, "range": "pact-pow2"})
    alphas = {"layer": jnp.float32(start)}
    tx = act_range_optimizer(config, 200, alphas)
    state = tx.init(alphas)

    @jax.jit
    def step(alphas, state):
        def loss(a):
            error = PACTRange(a["layer"], bits=2, power_of_two=True)(x) - target
            return loss_scale * jnp.mean(error ** 2)
        g = jax.grad(loss)(alphas)
        updates, state = tx.update(g, state, alphas)
        return optax.apply_updates(alphas, updates), state

    clips = []
    for _ in range(200):
        alphas, state = step(alphas, state)
        clips.append(float(power_of_two_alpha(alphas["layer"], 2)))
    assert clips[-1] == expected, clips[::20]
    assert clips[-50:] == [expected] * 50                # stays


def test_range_lr_is_checked_and_used():
    with pytest.raises(ValueError, match="range_lr is the learning rate of a learned range; "
                                         "range 'calibrated' learns none"):
        ActivationQuantConfig(bits=2, range_lr=0.1)
    with pytest.raises(ValueError, match=r"range_lr must be None or a finite number > 0, got -1"):
        ActivationQuantConfig(bits=2, range="pact", range_lr=-1)
    # pact: the run's optimizer at range_lr (sgd: one step moves alpha by lr * gradient,
    # plus the weight decay's lr * wd * alpha)
    config = TrainConfig(method="float", optimizer="sgd", momentum=0.0, weight_decay=0.0,
                         acts={"bits": 2, "range": "pact", "range_lr": 0.25})
    tx = act_range_optimizer(config, 10, {"l": jnp.float32(1.0)})
    updates, _ = tx.update({"l": jnp.float32(2.0)}, tx.init({"l": jnp.float32(1.0)}),
                           {"l": jnp.float32(1.0)})
    assert float(updates["l"]) == pytest.approx(-0.5)
    assert act_range_optimizer(config, 10, {}) is None
