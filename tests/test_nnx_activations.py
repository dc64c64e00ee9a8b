"""Activation quantization on Flax NNX models (``quantize_activations(..., model=m)``).

References are written by hand: the same NNX layers called in sequence with their inputs
rounded explicitly by numpy (``round(x / s)`` clipped to the format's codes, times ``s``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from symog_jax.numerics.formats import unsigned_format
from symog_jax.quantizers.activations import (ActivationQuantConfig,
                                              calibrate_activation_formats,
                                              quantize_activations, record_layer_inputs)
from symog_jax.quantizers.pact import PACTRange


class Net(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.blocks = nnx.List([nnx.Linear(4 * 8 * 8, 8, rngs=rngs)])
        self.head = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        y = nnx.relu(self.conv(x))
        y = nnx.relu(self.blocks[0](y.reshape(y.shape[0], -1)))
        return self.head(y)


def _round(x, bits, frac):
    step = 2.0 ** -frac
    return np.clip(np.round(np.asarray(x, np.float64) / step), 0, 2 ** bits - 1) * step


def _by_hand(net, x, bits, frac):
    """The network with the inputs of blocks/0 and head rounded by numpy."""
    y = np.asarray(nnx.relu(net.conv(x)))
    y = _round(y.reshape(y.shape[0], -1), bits, frac).astype(np.float32)
    y = np.asarray(nnx.relu(net.blocks[0](jnp.asarray(y))))
    return np.asarray(net.head(jnp.asarray(_round(y, bits, frac).astype(np.float32))))


@pytest.fixture
def net_and_x():
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (5, 8, 8, 1)), jnp.float32)
    return Net(nnx.Rngs(0)), x


def test_records_the_nnx_layers_in_call_order_and_calibrates(net_and_x):
    net, x = net_and_x
    out, rec = record_layer_inputs(lambda: net(x), model=net)
    assert [(p, a.shape) for p, a in rec] == [
        ("conv", (5, 8, 8, 1)), ("blocks/0", (5, 256)), ("head", (5, 8))]
    np.testing.assert_array_equal(out, net(x))
    formats = calibrate_activation_formats(rec, ActivationQuantConfig(bits=4))
    assert set(formats) == {"blocks/0", "head"} and not formats["head"].signed


@pytest.mark.parametrize("jit", [False, True])
def test_quantizes_nnx_layer_inputs_like_rounding_by_hand(net_and_x, jit):
    net, x = net_and_x
    formats = {"blocks/0": unsigned_format(3, 2), "head": unsigned_format(3, 2)}

    def forward(m, x):
        with quantize_activations(formats, model=m):
            return m(x)
    got = np.asarray((nnx.jit(forward) if jit else forward)(net, x))
    np.testing.assert_allclose(got, _by_hand(net, x, 3, 2), rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, np.asarray(net(x)), atol=1e-3)      # it did quantize
    assert "__call__" in nnx.Linear.__dict__ and nnx.Linear.__call__.__name__ == "__call__"
    np.testing.assert_array_equal(net(x), net(x))                   # outside: unchanged


def test_straight_through_and_pact_gradients_reach_the_nnx_model(net_and_x):
    """d loss / d alpha of a learned clip on the head's input equals PACT's gradient, the sum
    of d loss / d y_q over inputs at or above alpha (computed here from the head's kernel)."""
    net, x = net_and_x
    alpha = jnp.float32(0.05)

    def loss(alpha, m):
        with quantize_activations({"head": PACTRange(alpha, bits=2)}, model=m):
            return m(x).sum()
    g_alpha = jax.grad(loss)(alpha, net)
    feats = np.asarray(nnx.relu(net.blocks[0](nnx.relu(net.conv(x)).reshape(5, -1))))
    # d sum(logits) / d y_q[n, i] = sum_j head.kernel[i, j], for every image n
    dy = np.asarray(net.head.kernel[...]).sum(axis=1)
    want = float((np.broadcast_to(dy, feats.shape) * (feats >= 0.05)).sum())
    assert (feats >= 0.05).any() and abs(want) > 0
    np.testing.assert_allclose(float(g_alpha), want, rtol=1e-4)


def test_an_nnx_model_without_model_is_a_one_line_error(net_and_x):
    net, x = net_and_x
    with pytest.raises(ValueError, match="for a Flax NNX model pass model=the_nnx_model"):
        with quantize_activations({"head": unsigned_format(3, 2)}):
            net(x)
    with pytest.raises(TypeError, match="model must be a Flax NNX module"):
        with quantize_activations({"head": unsigned_format(3, 2)}, model=object()):
            pass
