"""Activation quantization on a tiny linen model vs a hand-written quantized forward, and the
one-line refusal for a Flax NNX model given without ``model=`` (linen's interceptors cannot see
its layers; with ``model=`` it is quantized: tests/test_nnx_activations.py)."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax import nnx

from symog_jax.numerics.formats import unsigned_format
from symog_jax.quantizers.activations import quantize_activations, record_layer_inputs


class TinyLinen(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(3, name="fc1")(x))
        return nn.Dense(2, name="fc2")(x)


class TinyNNX(nnx.Module):
    def __init__(self, rngs):
        self.fc1 = nnx.Linear(4, 3, rngs=rngs)
        self.fc2 = nnx.Linear(3, 2, rngs=rngs)

    def __call__(self, x):
        return self.fc2(nnx.relu(self.fc1(x)))


X = np.array([[0.3, -0.2, 0.9, 0.55]], np.float32)


def hand_quantize(x, step, top):
    """round(x / step) * step, saturated to [0, top] (numpy, ties to even as jnp.round)."""
    return np.clip(np.round(np.asarray(x, np.float64) / step) * step, 0.0, top)


@pytest.mark.parametrize("jit", [False, True])
def test_linen_matches_a_hand_written_quantized_forward(jit):
    model = TinyLinen()
    v = model.init(jax.random.key(0), X)
    fmt = unsigned_format(2, 2)                     # levels 0, .25, .5, .75

    def run(v, x):
        with quantize_activations({"fc2": fmt}):
            return model.apply(v, x)
    y = (jax.jit(run) if jit else run)(v, X)
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), v["params"])
    h = np.maximum(X @ p["fc1"]["kernel"] + p["fc1"]["bias"], 0)
    expected = hand_quantize(h, 0.25, 0.75) @ p["fc2"]["kernel"] + p["fc2"]["bias"]
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-6, atol=1e-6)


def test_nnx_model_without_model_is_refused_in_one_line_not_silently_left_float():
    model = TinyNNX(nnx.Rngs(0))
    with pytest.raises(ValueError, match="for a Flax NNX model pass model=the_nnx_model"):
        record_layer_inputs(lambda: model(X))
    with pytest.raises(ValueError, match="quantize_activations: the model called no flax.linen"):
        with quantize_activations({"fc2": unsigned_format(2, 2)}):
            model(X)
