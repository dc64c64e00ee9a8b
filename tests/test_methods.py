"""The method contract: every registered method passes the same checks through the trainer.

init, jit step, finite state, orbax round trip and exact resume, codes inside their range,
finalized parameters = codes * scales, and the finalized network's forward pass equal to the
fake-quantized one. Adding a method to the registry adds it here automatically.
"""

from __future__ import annotations

import dataclasses
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symog_jax.methods import Method, MethodConfig, RunInfo, make_method, method_names, register
from symog_jax.methods.base import get_method_class, leaves_by_path
from symog_jax.models import create_model
from symog_jax.training import TrainConfig, train
from symog_jax.training.run import make_prepare, probe_model
from symog_jax.quantizers.activations import ActivationQuantConfig, quantize_activations
from tests.conftest import _method_setup
from tests.test_training import _restore, synthetic_digits

# Settings that make each method do something visible in 2 tiny epochs.
CONFIGS = {
    "float": {"bits": 2},
    "ste": {"bits": 2},
    "symog": {"bits": 2, "warmup_epochs": 0.5, "strength_start": 1e-2, "strength_end": 0.5},
    "syq": {"eta": 0.05, "granularity": "pixel"},
    "gdrq": {"bits": 2, "groups": 2, "clip_k": 2.0},
    # power-of-two steps per channel (fixed-point result); tests/test_lsq.py runs these
    # checks on the other variants too
    "lsq": {"bits": 2, "granularity": "channel", "power_of_two": True},
    # pruning (gates, budget loss) around SYMOG 2-bit weights
    "hfp": {"arch": "lenet5", "input_shape": "28x28x1", "prune_macs": 0.3, "gate_lr": 0.1,
            "inner_method": "symog", "inner": {"bits": 2, "warmup_epochs": 0.5,
                                               "strength_start": 1e-2, "strength_end": 0.5}},
}


@pytest.fixture(scope="module")
def dataset():
    return synthetic_digits(n_train=128, n_test=64)


def test_every_registered_method_has_a_contract_config():
    assert set(method_names()) == set(CONFIGS), "add a CONFIGS entry for the new method"


def build(dataset, name, act_bits=None, seed=0):
    """Model, method, state and jitted step exactly as ``train()`` builds them."""
    model = create_model("lenet5", dataset.num_classes, width=0.125)
    variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 28, 28, 1)), train=False)
    prepare = make_prepare(dataset, augment=False)
    order, act_formats = probe_model(model, variables, prepare, dataset.train_images[:64],
                                     ActivationQuantConfig(bits=act_bits))
    run = RunInfo(steps_per_epoch=4, epochs=2, layer_order=order)
    method = make_method(name, CONFIGS[name], run)
    state, step = _method_setup(model, method, variables["params"], run, prepare, act_formats)
    return model, method, state, step, prepare


def assert_finite(tree):
    for leaf in jax.tree_util.tree_leaves(tree):
        arr = np.asarray(leaf)
        if arr.dtype.kind == "f":
            assert np.all(np.isfinite(arr))


#: Methods whose contract also runs in the fast tier (every method runs it in the e2e tier).
FAST_CONTRACT = ("symog", "syq")


@pytest.mark.parametrize("act_bits", [None, pytest.param(4, marks=pytest.mark.e2e)])
@pytest.mark.parametrize("name", [
    n if n in FAST_CONTRACT else pytest.param(n, marks=pytest.mark.e2e) for n in sorted(CONFIGS)])
def test_method_contract_step_codes_and_finalized_forward(dataset, name, act_bits):
    model, method, state, step, prepare = build(dataset, name, act_bits)
    assert isinstance(method, Method) and isinstance(method.config, MethodConfig)
    before = state
    for i in range(8):
        lo = (i % 4) * 32
        state, metrics = step(state, dataset.train_images[lo:lo + 32],
                              dataset.train_labels[lo:lo + 32])
    assert int(state.step) == 8
    assert np.isfinite(float(metrics["loss"]))
    assert_finite(state)
    chex.assert_trees_all_equal_structs(before.params, state.params)
    chex.assert_trees_all_equal_structs(before.method_vars, state.method_vars)
    assert not np.allclose(np.asarray(before.params["fc1"]["kernel"]),
                           np.asarray(state.params["fc1"]["kernel"]))

    trainable = state.trainable
    hq = method.finalize(trainable, state.opt_state)
    assert hq.report, "finalize quantized nothing"
    by_path = {r.path: r for r in hq.report}
    flat_codes = leaves_by_path(hq.codes)          # None (unquantized) leaves drop out
    flat_params = leaves_by_path(hq.params)
    assert set(flat_codes) == set(by_path)
    for path, c in flat_codes.items():
        fmt = by_path[path].format
        c = np.asarray(c)
        assert np.issubdtype(c.dtype, np.integer)
        assert fmt.code_min <= c.min() and c.max() <= fmt.code_max, path
        # finalized parameters are exactly codes * scale
        expected = c.astype(np.float64) * np.asarray(fmt.step_for(c.ndim), np.float64)
        np.testing.assert_array_equal(np.asarray(flat_params[path], np.float64), expected)
    q, f = hq.weight_bits()
    assert q < f

    # The finalized network computes what the method's (traceable) quantized network computes.
    x = prepare(None, dataset.test_images[:16], False)

    def forward(params, act_formats):
        with quantize_activations(act_formats):
            return model.apply({"params": params}, x, train=False)
    fq = jax.jit(lambda t, s, a: forward(method.quantized_params(t, s), a))(
        trainable, state.opt_state, state.act_formats)
    np.testing.assert_allclose(np.asarray(forward(hq.params, state.act_formats)),
                               np.asarray(fq), rtol=1e-5, atol=1e-5)


@pytest.mark.e2e
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_method_contract_resume_is_exact_and_report_is_valid_json(tmp_path, dataset, name):
    def config(workdir, **kw):
        return TrainConfig(dataset="synthetic", model="lenet5", method=name,
                           method_config=CONFIGS[name], epochs=2, batch_size=32,
                           optimizer="adam", lr=3e-3, weight_decay=0.0, width=0.125,
                           workdir=str(workdir), progress=False, **kw)
    full = train(config(tmp_path / "a"), dataset=dataset)
    out = train(config(tmp_path / "b", stop_after_epochs=1), dataset=dataset)
    assert out["stopped_at_epoch"] == 1
    resumed = train(config(tmp_path / "b"), dataset=dataset, resume=True)
    a, b = _restore(tmp_path / "a"), _restore(tmp_path / "b")
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert resumed["test_error_quantized"] == full["test_error_quantized"]
    report = json.loads((tmp_path / "b" / "report.json").read_text(),
                        parse_constant=lambda c: pytest.fail(f"non-finite {c} in report"))
    assert report["config"]["method"] == name
    assert report["layers"] and all(layer["bits"] in (1, 2) for layer in report["layers"])


@pytest.mark.e2e
def test_a_new_method_needs_no_trainer_change(tmp_path, dataset):
    """A method defined here (outside the package) trains through the unchanged trainer."""

    @dataclasses.dataclass(frozen=True)
    class SignConfig(MethodConfig):
        scale: float = 0.05

    class SignWeights(Method):
        """Binary sign weights with a fixed scale, straight-through; an extra L2 term."""
        name = "test-sign"
        Config = SignConfig

        def transform(self, base, run):
            return base

        def train_params(self, trainable, opt_state):
            return self.quantized_params(trainable, opt_state)

        def extra_loss(self, trainable, opt_state):
            return 1e-4 * sum(jnp.sum(w ** 2) for w in jax.tree_util.tree_leaves(trainable))

        def quantized_params(self, trainable, opt_state):
            def q(path, w):
                if path[-1].key != "kernel":
                    return w
                s = self.config.scale * jnp.where(w >= 0, 1.0, -1.0)
                return w + jax.lax.stop_gradient(s - w)
            return jax.tree_util.tree_map_with_path(q, trainable["params"])

        def finalize(self, trainable, opt_state):
            from symog_jax.export import hard_quantize
            from symog_jax.numerics.formats import symmetric_format
            params = self.quantized_params(trainable, opt_state)
            formats = jax.tree_util.tree_map_with_path(
                lambda p, w: symmetric_format(2, 0) if p[-1].key == "kernel" else None, params)
            # Scale 0.05 is not a power of two: express the levels as {-1, 1} * 2**0 on
            # params / 0.05 and scale back (enough for this test).
            scaled = jax.tree_util.tree_map_with_path(
                lambda p, w: w / self.config.scale if p[-1].key == "kernel" else w, params)
            hq = hard_quantize(scaled, formats)
            back = jax.tree_util.tree_map_with_path(
                lambda p, w: w * self.config.scale if p[-1].key == "kernel" else w, hq.params)
            return hq._replace(params=back)

    register(SignWeights)
    try:
        report = train(TrainConfig(dataset="synthetic", model="lenet5", method="test-sign",
                                   epochs=1, batch_size=32, optimizer="adam", lr=3e-3,
                                   weight_decay=0.0, width=0.125, workdir=str(tmp_path),
                                   progress=False), dataset=dataset)
        assert report["config"]["method"] == "test-sign"
        assert abs(report["test_error_quantized"] - report["test_error_float"]) < 1.0
    finally:
        from symog_jax.methods import base
        base._REGISTRY.pop("test-sign", None)


@pytest.mark.parametrize("name, config, message", [
    ("syq", {"granularity": "column"}, "granularity must be one of"),
    ("syq", {"eta": -0.1}, r"eta must be in \[0, 1\)"),
    ("syq", {"eta": 1.0}, r"eta must be in \[0, 1\)"),
    ("syq", {"eta": float("nan")}, "eta must be a finite number"),
    ("symog", {"bits": 1}, "bits must be in"),
    ("symog", {"placement": "sideways"}, "placement must be one of"),
    ("ste", {"eta": 0.1}, "has no parameter"),
    ("magic", None, "unknown method 'magic'; registered methods: float, ste, symog, syq"),
])
def test_bad_method_configs_are_one_line_errors(name, config, message):
    with pytest.raises((ValueError, TypeError), match=message) as info:
        make_method(name, config)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kw, message", [
    (dict(acts={"bits": 0}), r"ActivationQuantConfig.bits must be None or an integer in 1\.\.16"),
    (dict(acts={"bits": 17}), r"ActivationQuantConfig.bits must be None or an integer in"),
    (dict(acts={"range": "learned2"}), "ActivationQuantConfig.range must be one of"),
    (dict(method="magic"), "unknown method 'magic'"),
])
def test_bad_run_configs_are_one_line_errors(kw, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kw)


def test_registry_by_name():
    assert get_method_class("syq").name == "syq"
    assert make_method("syq", {"eta": 0.0}).describe() == "syq-binary-pixel"
    with pytest.raises(ValueError, match="already registered"):
        @register
        class Other(get_method_class("ste")):
            name = "symog"


def test_syq_scales_learn_and_stay_positive(dataset):
    model, method, state, step, _ = build(dataset, "syq")
    first = jax.tree_util.tree_leaves(state.method_vars)
    for i in range(8):
        lo = (i % 4) * 32
        state, _ = step(state, dataset.train_images[lo:lo + 32], dataset.train_labels[lo:lo + 32])
    last = jax.tree_util.tree_leaves(state.method_vars)
    assert any(not np.allclose(a, b) for a, b in zip(first, last))   # the scales are trained
    assert all(np.all(np.asarray(a) > 0) for a in last)
    # pixel-wise: conv scales are (kh, kw, 1, 1), dense ones a single (1, 1); the first and
    # last layers stay float by default (the reference code's choice), so they have none
    scales = state.method_vars["scales"]
    chex.assert_shape(scales["conv2"]["kernel"], (5, 5, 1, 1))
    chex.assert_shape(scales["fc1"]["kernel"], (1, 1))
    assert set(scales) == {"conv2", "fc1"}


def test_float_first_last_keeps_those_layers_float(dataset):
    model, method, state, step, _ = build(dataset, "ste")
    method = make_method("syq", {"float_first_last": True}, method.run)
    hq = method.finalize({"params": state.params,
                          "method": method.init_variables(state.params)}, state.opt_state)
    assert [r.path for r in hq.report] == ["conv2/kernel", "fc1/kernel"]
    ste = make_method("ste", {"float_first_last": True}, method.run)
    assert ste.decay_mask({"params": state.params, "method": {}})["params"]["fc2"]["kernel"]
