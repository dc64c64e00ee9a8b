"""PACT learned activation clips (symog_jax.quantizers.pact) against the paper's formulas
worked out by hand, alone and through quantize_activations on a linen model."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symog_jax.numerics.formats import unsigned_format
from symog_jax.numerics.rounding import quantize_ste
from symog_jax.quantizers.activations import (activation_format_report, learned_ranges,
                                              quantize_activations)
from symog_jax.quantizers.pact import PACTRange, pact_quantize, power_of_two_alpha

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
