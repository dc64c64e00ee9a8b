"""Learned activation ranges (PACT) in the trainer: ``act_range`` ``pact`` / ``pact-pow2``.

The clip ``alpha`` of each layer input is a leaf of ``state.act_formats``; the train step
differentiates the loss with respect to it (PACT's gradient, :mod:`symog_jax.quantizers.pact`)
and updates it with its own optimizer (``state.act_opt_state``), apart from the method's
transform. Checked here against an independent computation of the same step, for exact
resume, and for export (power-of-two clips become fixed-point formats).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from symog_jax.methods import make_method, RunInfo
from symog_jax.models import create_model, init_variables
from symog_jax.pipelines.export import check_export, export_run
from symog_jax.quantizers.activations import quantize_activations
from symog_jax.quantizers.pact import PACTRange
from symog_jax.training import train
from symog_jax.training.checkpoint import Checkpointer
from symog_jax.training.steps import MIN_ACT_ALPHA, TrainState, make_train_step
from tests.test_training import synthetic_digits, tiny_config


@pytest.fixture(scope="module")
def dataset():
    return synthetic_digits(n_train=128, n_test=64)


@pytest.mark.e2e
def test_one_step_moves_each_clip_by_its_own_pact_gradient():
    """SGD(lr) on the clips: ``alpha' = alpha - lr * dL/dalpha``, with ``dL/dalpha`` from
    ``jax.grad`` of a plain forward under the same ranges; the weights' optimizer never sees
    a clip, and a clip pushed below the floor stops at ``MIN_ACT_ALPHA``."""
    model = create_model("lenet5", 4, width=0.125)
    variables = init_variables(model, jax.random.PRNGKey(0), (28, 28, 1))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 4, 16).astype(np.int32)
    formats = {"conv2": PACTRange(jnp.float32(0.05), bits=2),
               "fc1": PACTRange(jnp.float32(0.3), bits=2)}
    prepare = lambda rng_, x, train: jnp.asarray(x, jnp.float32) / 255.0   # noqa: E731
    run = RunInfo(steps_per_epoch=1, epochs=1, layer_order=("conv1", "conv2", "fc1", "fc2"))
    method = make_method("float", {}, run)
    tx = optax.sgd(0.0)                                       # the weights do not move
    lr = 0.5
    act_tx = optax.sgd(lr)
    params = variables["params"]
    trainable = {"params": params, "method": {}}
    alphas = {p: f.alpha for p, f in formats.items()}
    state = TrainState(step=jnp.zeros([], jnp.int32), params=params, method_vars={},
                       batch_stats={}, opt_state=tx.init(trainable), act_formats=formats,
                       rng=jax.random.PRNGKey(1), act_opt_state=act_tx.init(alphas))
    step = make_train_step(model, tx, method, prepare, act_tx=act_tx)
    new, _ = step(state, images, labels)

    def loss(alphas):
        fmts = {p: PACTRange(a, bits=2) for p, a in alphas.items()}
        with quantize_activations(fmts):
            logits = model.apply({"params": params}, prepare(None, images, False), train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    grads = jax.grad(loss)(alphas)
    assert any(abs(float(g)) > 0 for g in grads.values())
    for path, a in alphas.items():
        want = max(float(a) - lr * float(grads[path]), MIN_ACT_ALPHA)
        np.testing.assert_allclose(float(new.act_formats[path].alpha), want, rtol=1e-5,
                                   err_msg=path)
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.e2e
def test_learned_ranges_resume_exactly(tmp_path, dataset):
    acts = {"bits": 2, "range": "pact"}
    whole = train(tiny_config(tmp_path / "whole", method="ste", epochs=2, acts=acts),
                  dataset=dataset)
    part = tiny_config(tmp_path / "part", method="ste", epochs=2, acts=acts)
    train(part.replace(stop_after_epochs=1), dataset=dataset)
    resumed = train(part, dataset=dataset, resume=True)
    assert whole["activations"] == resumed["activations"]
    assert {k: v for k, v in whole.items() if k.startswith("test_error")} == \
        {k: v for k, v in resumed.items() if k.startswith("test_error")}
    start = {r["path"]: r["pact_alpha"] for r in whole["activations"]}
    assert len(start) == 3                        # conv2, fc1, fc2 (the image stays float)


@pytest.mark.e2e
@pytest.mark.parametrize("pow2_range", ["pact-pow2", "lsq-pow2"])
def test_power_of_two_clips_export_and_plain_clips_are_refused(tmp_path, dataset, pow2_range):
    p2 = tiny_config(tmp_path / "p2", method="ste", epochs=1,
                     acts={"bits": 2, "range": pow2_range})
    train(p2, dataset=dataset)
    manifest, run = export_run(tmp_path / "p2", dataset=dataset)
    assert manifest["integer_program"] is not None
    result = check_export(run, tmp_path / "p2" / "export.npz")
    assert result["agreement"] == 1.0 and result["max_abs_logit_diff"] < 1e-6
    plain = tiny_config(tmp_path / "plain", method="ste", epochs=1,
                        acts={"bits": 2, "range": "pact"})
    train(plain, dataset=dataset)
    with pytest.raises(ValueError, match="learned PACT clip without a power-of-two step; train "
                                         "with acts.range 'pact-pow2'"):
        export_run(tmp_path / "plain", dataset=dataset)


def test_a_checkpoint_written_before_act_opt_state_existed_restores(tmp_path):
    """Runs checkpointed before learned activation ranges (no ``act_opt_state`` on disk)
    still restore, resume and export: the field keeps the template's empty value, and a
    state whose real fields do not match is still refused."""
    state = TrainState(step=jnp.asarray(7, jnp.int32), params={"w": jnp.arange(3.0)},
                       method_vars={}, batch_stats={}, opt_state=(jnp.ones(2),),
                       act_formats={}, rng=jax.random.PRNGKey(3))
    old_form = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)
                if f.name != "act_opt_state"}
    ckpt = Checkpointer(tmp_path / "checkpoints")
    ckpt.save(1, old_form, {"epoch": 1})
    template = state.replace(step=jnp.zeros([], jnp.int32), params={"w": jnp.zeros(3)})
    restored, meta = ckpt.restore(template)
    assert isinstance(restored, TrainState) and restored.act_opt_state == ()
    assert int(restored.step) == 7 and meta["epoch"] == 1
    np.testing.assert_array_equal(restored.params["w"], np.arange(3.0))
    with pytest.raises(ValueError, match="tree structures do not match"):
        ckpt.restore(template.replace(params={"v": jnp.zeros(3)}))
    ckpt.close()
