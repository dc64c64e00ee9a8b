"""Activation quantization by Flax method interception (symog_jax.quantizers.activations).

Ground truth is written here by hand: a LeNet-5 forward pass from the raw parameters with
``lax.conv_general_dilated`` / matmul, numpy rounding to the formats' levels
(``clip(round(x / step), lo, hi) * step`` with hand-written code ranges), a brute-force MSE search
for the step, and the straight-through gradient of a two-layer Dense model derived by hand.
"""

from __future__ import annotations

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symog_jax.models import create_model, init_variables
from symog_jax.numerics.formats import FixedPointFormat, symmetric_format, unsigned_format
from symog_jax.quantizers.activations import (
    ActivationQuantConfig,
    activation_format_report,
    calibrate_activation_formats,
    quantize_activations,
    record_layer_inputs,
)

LENET_PATHS = ["conv1", "conv2", "fc1", "fc2"]


# -- independent references ---------------------------------------------------------------------

def np_codes(bits: int, signed: bool) -> tuple[int, int]:
    """Hand-written code range: symmetric signed, or unsigned."""
    if signed:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def np_round_to(x, bits: int, frac_bits: int, signed: bool) -> np.ndarray:
    """``clip(round(x / step), lo, hi) * step`` in float64 (ties to even), returned as float32."""
    lo, hi = np_codes(bits, signed)
    step = 2.0 ** -int(frac_bits)
    x = np.asarray(x, np.float64)
    return (np.clip(np.round(x / step), lo, hi) * step).astype(np.float32)


def np_q(x, fmt: FixedPointFormat) -> np.ndarray:
    return np_round_to(x, fmt.bits, int(np.asarray(fmt.frac_bits)), fmt.signed)


def np_best_frac_bits(x, bits: int, signed: bool) -> int:
    """Brute-force MSE search over a wide window of exponents; ties to the smaller exponent."""
    x = np.asarray(x, np.float64).ravel()
    errors = [(np.sum((x - np_round_to(x, bits, f, signed).astype(np.float64)) ** 2), f)
              for f in range(-12, 30)]
    best = min(e for e, _ in errors)
    return min(f for e, f in errors if e == best)


def lenet_by_hand(params, x, formats) -> np.ndarray:
    """LeNet-5 forward from raw params, rounding each layer's input to ``formats`` in numpy."""
    def q(name, a):
        return jnp.asarray(np_q(np.asarray(a), formats[name])) if name in formats else a

    def conv(a, p):
        y = jax.lax.conv_general_dilated(a, p["kernel"], (1, 1), "VALID",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + p["bias"]

    def pool(a):
        a = np.asarray(a)
        n, h, w, c = a.shape
        return jnp.asarray(a.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4)))

    h = pool(jnp.maximum(conv(q("conv1", x), params["conv1"]), 0))
    h = pool(jnp.maximum(conv(q("conv2", h), params["conv2"]), 0))
    h = h.reshape(h.shape[0], -1)
    h = jnp.maximum(q("fc1", h) @ params["fc1"]["kernel"] + params["fc1"]["bias"], 0)
    return np.asarray(q("fc2", h) @ params["fc2"]["kernel"] + params["fc2"]["bias"])


# -- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lenet():
    model = create_model("lenet5", num_classes=10, width=0.25)
    variables = init_variables(model, jax.random.key(0), (4, 28, 28, 1))
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (4, 28, 28, 1)), jnp.float32)
    return model, variables, x


def calibrate(model, variables, x, config, **apply_kw):
    _, rec = record_layer_inputs(lambda: model.apply(variables, x, train=False, **apply_kw))
    return calibrate_activation_formats(rec, config)


# -- tests --------------------------------------------------------------------------------------

def test_record_layer_inputs_paths_and_shapes(lenet):
    model, variables, x = lenet
    out, rec = record_layer_inputs(lambda: model.apply(variables, x, train=False))
    assert [p for p, _ in rec] == LENET_PATHS
    assert [a.shape for _, a in rec] == [(4, 28, 28, 1), (4, 12, 12, 8), (4, 256), (4, 128)]
    np.testing.assert_array_equal(rec[0][1], x)
    np.testing.assert_array_equal(out, model.apply(variables, x, train=False))


@pytest.mark.e2e
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_lenet_forward_matches_hand_written(lenet, bits, maybe_jit):
    model, variables, x = lenet
    formats = calibrate(model, variables, x, ActivationQuantConfig(bits=bits))
    assert list(formats) == ["conv2", "fc1", "fc2"]          # skip_first: conv1 stays float
    _, rec = record_layer_inputs(lambda: model.apply(variables, x, train=False))
    for path, a in rec[1:]:                                   # MSE-optimal step, brute force
        fmt = formats[path]
        assert int(fmt.frac_bits) == np_best_frac_bits(a, bits, fmt.signed), path

    def run(variables, formats, x):
        with quantize_activations(formats):
            return model.apply(variables, x, train=False)

    got = maybe_jit(run)(variables, formats, x)              # formats traced under jit
    want = lenet_by_hand(variables["params"], x, formats)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    plain = model.apply(variables, x, train=False)
    assert not np.allclose(np.asarray(plain), want, atol=1e-4)  # quantization did something


@pytest.mark.e2e
def test_quantized_inputs_lie_on_levels_and_first_is_untouched(lenet):
    model, variables, x = lenet
    formats = calibrate(model, variables, x, ActivationQuantConfig(bits=3))
    with quantize_activations(formats):                       # recorder runs after quantizer
        _, rec = record_layer_inputs(lambda: model.apply(variables, x, train=False))
    inputs = dict(rec)
    np.testing.assert_array_equal(inputs["conv1"], x)        # the image stays float
    for path in ["conv2", "fc1", "fc2"]:
        a = np.asarray(inputs[path], np.float64)
        np.testing.assert_array_equal(a, np_q(a, formats[path]))
        step = 2.0 ** -int(formats[path].frac_bits)
        assert len(np.unique(a)) <= 2**3 and np.all(a / step == np.round(a / step))

    # skip_first=False: the image is quantized too; skip_last=True: the classifier input is not.
    formats = calibrate(model, variables, x,
                        ActivationQuantConfig(bits=3, skip_first=False, skip_last=True))
    assert list(formats) == ["conv1", "conv2", "fc1"]
    with quantize_activations(formats):
        _, rec = record_layer_inputs(lambda: model.apply(variables, x, train=False))
    inputs = dict(rec)
    np.testing.assert_array_equal(inputs["conv1"], np_q(x, formats["conv1"]))
    assert not np.array_equal(np.asarray(inputs["conv1"]), np.asarray(x))
    assert formats["conv1"].bits == 3


def test_unsigned_after_relu_and_signed_otherwise(lenet):
    model, variables, x = lenet
    formats = calibrate(model, variables, x, ActivationQuantConfig(bits=4))
    assert all(not f.signed for f in formats.values())
    # A signed image (no ReLU before conv1) gets a signed symmetric format.
    formats = calibrate(model, variables, x - 0.5, ActivationQuantConfig(bits=4, skip_first=False))
    assert formats["conv1"].signed and formats["conv1"].symmetric
    assert all(not formats[p].signed for p in ["conv2", "fc1", "fc2"])
    assert int(formats["conv1"].frac_bits) == np_best_frac_bits(x - 0.5, 4, signed=True)


def test_unit_range_clips_to_unit_interval(lenet):
    model, variables, x = lenet
    bits = 2
    big = x * 50.0                                            # activations well above 1
    formats = calibrate(model, variables, big, ActivationQuantConfig(bits=bits, range="unit"))
    assert list(formats) == ["conv2", "fc1", "fc2"]
    for fmt in formats.values():
        assert (fmt.bits, int(fmt.frac_bits), fmt.signed) == (bits, bits, False)
    with quantize_activations(formats):
        _, rec = record_layer_inputs(lambda: model.apply(variables, big, train=False))
    _, raw = record_layer_inputs(lambda: model.apply(variables, big, train=False))
    a = np.asarray(dict(rec)["conv2"])
    assert np.asarray(dict(raw)["conv2"]).max() > 1.0
    assert a.min() >= 0 and a.max() == 1 - 2.0**-bits
    assert set(np.unique(a)) <= {0.0, 0.25, 0.5, 0.75}
    # Negative inputs saturate to 0 in the unit range.
    formats = calibrate(model, variables, x - 0.5,
                        ActivationQuantConfig(bits=bits, range="unit", skip_first=False))
    with quantize_activations(formats):
        _, rec = record_layer_inputs(lambda: model.apply(variables, x - 0.5, train=False))
    np.testing.assert_array_equal(dict(rec)["conv1"], np_round_to(x - 0.5, bits, bits, False))


def test_bits_none_is_the_plain_model(lenet):
    model, variables, x = lenet
    config = ActivationQuantConfig()
    assert not config.enabled
    formats = calibrate(model, variables, x, config)
    assert formats == {}
    assert isinstance(quantize_activations(formats), contextlib.nullcontext)
    with quantize_activations(formats):
        got = model.apply(variables, x, train=False)
    np.testing.assert_array_equal(got, model.apply(variables, x, train=False))
    # Paths that match no layer leave the model unchanged too.
    with quantize_activations({"no_such_layer": unsigned_format(2, 0)}):
        got = model.apply(variables, x, train=False)
    np.testing.assert_array_equal(got, model.apply(variables, x, train=False))


class TwoDense(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(3, name="fc1")(x)
        return nn.Dense(2, name="fc2")(h)


def test_gradient_is_the_straight_through_rule(maybe_jit):
    model = TwoDense()
    x = jnp.array([[0.5, -1.0], [1.5, 0.25]], jnp.float32)
    params = {"fc1": {"kernel": jnp.array([[1.0, -0.7, 2.3], [0.3, 0.2, -1.1]]),
                      "bias": jnp.array([0.05, 0.1, -0.2])},
              "fc2": {"kernel": jnp.array([[0.4, -1.0], [0.6, 0.3], [-0.8, 0.9]]),
                      "bias": jnp.array([0.0, 0.1])}}
    c = jnp.array([[1.0, -2.0], [0.5, 3.0]])
    fmt = symmetric_format(3, 1)                              # levels -1.5 .. 1.5, step 0.5
    formats = {"fc2": fmt}

    def loss(params, formats):
        with quantize_activations(formats):
            return jnp.sum(model.apply({"params": params}, x) * c)

    grads = maybe_jit(jax.grad(loss))(params, formats)

    # By hand: h = x W1 + b1; hq = round-and-clip(h); y = hq W2 + b2; L = sum(y * c).
    xn, cn = np.asarray(x, np.float64), np.asarray(c, np.float64)
    w1, b1 = np.asarray(params["fc1"]["kernel"], np.float64), np.asarray(params["fc1"]["bias"])
    w2 = np.asarray(params["fc2"]["kernel"], np.float64)
    h = xn @ w1 + b1
    inside = (h >= -1.5) & (h <= 1.5)
    assert inside.any() and not inside.all()                  # both branches of the STE rule
    hq = np.clip(np.round(h / 0.5), -3, 3) * 0.5
    dh = (cn @ w2.T) * inside                                 # identity inside, zero outside
    want = {"fc1": {"kernel": xn.T @ dh, "bias": dh.sum(0)},
            "fc2": {"kernel": hq.T @ cn, "bias": cn.sum(0)}}
    for layer in want:
        for leaf in want[layer]:
            np.testing.assert_allclose(np.asarray(grads[layer][leaf]), want[layer][leaf],
                                       rtol=1e-5, atol=1e-6, err_msg=f"{layer}/{leaf}")


@pytest.mark.e2e
def test_lenet_gradient_is_finite_and_nonzero(lenet, maybe_jit):
    model, variables, x = lenet
    formats = calibrate(model, variables, x, ActivationQuantConfig(bits=2))

    def loss(params, formats):
        with quantize_activations(formats):
            logits = model.apply({"params": params}, x, train=False)
        return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[:, 0])

    grads = maybe_jit(jax.grad(loss))(variables["params"], formats)
    for layer in LENET_PATHS:
        g = np.asarray(grads[layer]["kernel"])
        assert np.all(np.isfinite(g)) and np.any(g != 0), layer


class Shared(nn.Module):
    @nn.compact
    def __call__(self, x):
        first = nn.Dense(4, name="first")
        shared = nn.Dense(4, name="shared")
        h = shared(first(x))
        return shared(h * 3.0), nn.Dense(4)(x)                # shared twice, plus 'Dense_0'


def test_shared_layer_gets_one_format_from_all_its_inputs():
    model = Shared()
    x = jnp.asarray(np.random.default_rng(1).normal(size=(5, 4)), jnp.float32)
    variables = model.init(jax.random.key(1), x)
    _, rec = record_layer_inputs(lambda: model.apply(variables, x))
    assert [p for p, _ in rec] == ["first", "shared", "shared", "Dense_0"]
    formats = calibrate_activation_formats(rec, ActivationQuantConfig(bits=4, skip_last=True))
    assert list(formats) == ["shared"]                        # first and last (Dense_0) skipped
    both = np.concatenate([np.asarray(rec[1][1]).ravel(), np.asarray(rec[2][1]).ravel()])
    assert formats["shared"].signed
    assert int(formats["shared"].frac_bits) == np_best_frac_bits(both, 4, signed=True)
    assert int(formats["shared"].frac_bits) != np_best_frac_bits(rec[1][1], 4, signed=True)

    def quantized_run():
        with quantize_activations(formats):                   # a recorder inside sees the
            return record_layer_inputs(lambda: model.apply(variables, x))[1]  # quantized inputs

    qrec, raw = record_layer_inputs(quantized_run)            # one outside sees them raw
    for (_, a), (_, r) in zip(qrec[1:3], raw[1:3]):
        np.testing.assert_array_equal(a, np_q(r, formats["shared"]))


@pytest.mark.e2e
def test_vgg7_with_batchnorm_runs_under_it(maybe_jit):
    model = create_model("vgg7", num_classes=10, width=0.125)
    variables = init_variables(model, jax.random.key(2), (2, 32, 32, 3))
    x = jnp.asarray(np.random.default_rng(2).uniform(0, 1, (2, 32, 32, 3)), jnp.float32)
    formats = calibrate(model, variables, x, ActivationQuantConfig(bits=4))
    assert list(formats) == ["conv2", "conv3", "conv4", "conv5", "conv6", "fc1", "fc2"]
    assert all(not f.signed for f in formats.values())        # every input follows a ReLU

    def run(variables, formats, x):
        with quantize_activations(formats):
            return model.apply(variables, x, train=False)

    got = np.asarray(maybe_jit(run)(variables, formats, x))
    plain = np.asarray(model.apply(variables, x, train=False))
    assert got.shape == (2, 10) and np.all(np.isfinite(got))
    assert not np.allclose(got, plain)
    # Training mode with mutable batch statistics works too.
    with quantize_activations(formats):
        logits, upd = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert np.all(np.isfinite(np.asarray(logits))) and "batch_stats" in upd


def test_keyword_input_is_quantized():
    layer = nn.Dense(1, use_bias=False, kernel_init=nn.initializers.ones)
    v = layer.init(jax.random.key(0), jnp.ones((1, 2)))
    with quantize_activations({"": unsigned_format(2, 1)}):
        y = layer.apply(v, inputs=jnp.array([[0.3, 0.8]]))
    assert y.tolist() == [[1.5]]


def test_report():
    formats = {"conv2": unsigned_format(4, 3), "fc": symmetric_format(8, 5)}
    assert activation_format_report(formats) == [
        {"path": "conv2", "bits": 4, "signed": False, "frac_bits": 3},
        {"path": "fc", "bits": 8, "signed": True, "frac_bits": 5},
    ]
    assert activation_format_report({}) == []


@pytest.mark.parametrize("kwargs, field", [
    ({"bits": 0}, "bits"), ({"bits": 17}, "bits"), ({"bits": 4.0}, "bits"),
    ({"bits": True}, "bits"), ({"bits": 4, "range": "learned2"}, "range"),
    ({"skip_first": "yes"}, "skip_first"), ({"skip_last": 1}, "skip_last"),
])
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"ActivationQuantConfig\.{field}\b") as info:
        ActivationQuantConfig(**kwargs)
    assert "\n" not in str(info.value)


def test_valid_config_edges():
    assert ActivationQuantConfig(bits=1, range="unit").bits == 1
    assert ActivationQuantConfig(bits=np.int64(16)).bits == 16
    rec = [("a", jnp.array([-1.0, 1.0])), ("b", jnp.array([0.5]))]
    with pytest.raises(ValueError, match="bits >= 2"):
        calibrate_activation_formats(rec, ActivationQuantConfig(bits=1, skip_first=False))
    formats = calibrate_activation_formats(rec, ActivationQuantConfig(bits=1, skip_first=False,
                                                                      range="unit"))
    assert formats == {"a": unsigned_format(1, 1), "b": unsigned_format(1, 1)}
