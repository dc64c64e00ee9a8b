"""Knowledge distillation from a float teacher (``TrainConfig.distill_*``)."""

from __future__ import annotations
from symog_jax.training.config import DistillConfig, config_from_file


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from symog_jax.methods import RunInfo, make_method
from symog_jax.training import TrainConfig, train
from symog_jax.training.distill import Teacher, distillation_loss
from symog_jax.training import save_variables
from symog_jax.training.steps import TrainState, base_optimizer, make_train_step
from tests.test_training import synthetic_digits, tiny_config


def kd_numpy(s: np.ndarray, t: np.ndarray, temp: float) -> float:
    """T^2 * mean over rows of sum_c p_t log(p_t / p_s), in float64, written out."""
    def softmax(z):
        z = z / temp
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    ps, pt = softmax(s.astype(np.float64)), softmax(t.astype(np.float64))
    return temp ** 2 * float(np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), axis=1)))


logits = arrays(np.float32, (3, 5), elements=st.floats(-8, 8, width=32))


@settings(max_examples=40, deadline=None)
@given(s=logits, t=logits, temp=st.sampled_from([0.5, 1.0, 2.0, 4.0, 10.0]))
def test_distillation_loss_is_the_scaled_kl_divergence(s, t, temp):
    got = float(jax.jit(distillation_loss, static_argnums=2)(s, t, temp))
    assert got == pytest.approx(kd_numpy(s, t, temp), rel=1e-4, abs=1e-5)
    assert got >= -1e-6
    assert float(distillation_loss(t, t, temp)) == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("jit", [False, True])
def test_gradient_is_t_times_the_probability_gap_and_none_reaches_the_teacher(jit):
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(4, 6)).astype(np.float32), rng.normal(size=(4, 6)).astype(np.float32)
    temp = 3.0
    grad = jax.grad(distillation_loss, argnums=(0, 1))
    gs, gt = (jax.jit(grad, static_argnums=2) if jit else grad)(s, t, temp)
    p = lambda z: np.exp(z / temp) / np.exp(z / temp).sum(1, keepdims=True)   # noqa: E731
    np.testing.assert_allclose(gs, temp * (p(s) - p(t)) / 4, rtol=1e-4, atol=1e-6)
    assert not np.any(np.asarray(gt))


@pytest.mark.parametrize("s, t, temp, match", [
    (np.zeros((2, 3)), np.zeros((2, 4)), 1.0, "one shape"),
    (np.zeros(3), np.zeros(3), 1.0, "one shape"),
    (np.zeros((2, 3)), np.zeros((2, 3)), 0.0, "temperature"),
])
def test_bad_logits_or_temperature_are_one_line_errors(s, t, temp, match):
    with pytest.raises(ValueError, match=match):
        distillation_loss(jnp.asarray(s), jnp.asarray(t), temp)


class _Tiny(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(3)(x.reshape((x.shape[0], -1)))


def test_train_step_loss_is_the_weighted_label_and_teacher_terms():
    model = _Tiny()
    x = np.random.default_rng(1).integers(0, 255, (8, 2, 2, 1)).astype(np.uint8)
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1], np.int32)
    student = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 2, 1)))["params"]
    teacher_vars = model.init(jax.random.PRNGKey(5), jnp.zeros((1, 2, 2, 1)))
    method = make_method("float", {"bits": 2}, RunInfo(steps_per_epoch=1, epochs=1))
    trainable = {"params": student, "method": {}}
    tx = method.transform(base_optimizer("sgd", 0.1, 1, momentum=0.0, weight_decay=0.0,
                                         decay_mask=method.decay_mask(trainable)),
                          RunInfo(steps_per_epoch=1, epochs=1))
    state = TrainState(step=jnp.zeros([], jnp.int32), params=student, method_vars={},
                       batch_stats={}, opt_state=tx.init(trainable), act_formats={},
                       rng=jax.random.PRNGKey(1))

    def prepare(rng, images, train):
        return images.astype(jnp.float32) / 255.0
    w, temp = 0.7, 2.0
    step = make_train_step(model, tx, method, prepare,
                           teacher=Teacher(model, teacher_vars, w, temp))
    _, metrics = step(state, x, y)

    xs = np.asarray(x, np.float32).reshape(8, -1) / 255.0
    s = xs @ np.asarray(student["Dense_0"]["kernel"]) + np.asarray(student["Dense_0"]["bias"])
    tp = teacher_vars["params"]["Dense_0"]
    t = xs @ np.asarray(tp["kernel"]) + np.asarray(tp["bias"])
    ce = float(np.mean(np.log(np.exp(s).sum(1)) - s[np.arange(8), y]))
    kd = kd_numpy(s, t, temp)
    assert float(metrics["task_loss"]) == pytest.approx(ce, rel=1e-5)
    assert float(metrics["distill_loss"]) == pytest.approx(kd, rel=1e-4)
    assert float(metrics["loss"]) == pytest.approx((1 - w) * ce + w * kd, rel=1e-5)
    # Without a teacher the step is the plain one: no distill_loss, loss = cross-entropy.
    _, plain = make_train_step(model, tx, method, prepare)(state, x, y)
    assert "distill_loss" not in plain and float(plain["loss"]) == pytest.approx(ce, rel=1e-5)


@pytest.mark.e2e
def test_student_learns_from_a_float_teacher_of_another_width(tmp_path):
    data = synthetic_digits()
    teacher = train(tiny_config(tmp_path / "teacher", method="float", width=0.25), dataset=data)
    report = train(tiny_config(tmp_path / "student", method="ste", distill=DistillConfig(
        teacher=str(tmp_path / "teacher"), weight=0.9, temperature=2.0)), dataset=data)
    assert teacher["test_error_float"] < 0.2
    assert report["test_error_quantized"] < 0.3
    saved = config_from_file(tmp_path / "student" / "config.json").flat()
    assert saved["distill_from"] == str(tmp_path / "teacher") and saved["distill_weight"] == 0.9
    # A variables file of the student's own architecture teaches it too.
    from symog_jax.training import restore_run
    _, _, st_, _ = restore_run(tmp_path / "student", data)
    path = save_variables(tmp_path / "v.msgpack", {"params": st_.params})
    train(tiny_config(tmp_path / "student2", method="float", epochs=1,
                      distill={"teacher": str(path)}),
          dataset=data)
    # Evaluating a distilled run needs neither its teacher nor the teacher's folder.
    import shutil
    shutil.rmtree(tmp_path / "teacher")
    _, _, again, _ = restore_run(tmp_path / "student", data)
    np.testing.assert_array_equal(again.params["fc2"]["kernel"], st_.params["fc2"]["kernel"])


@pytest.mark.e2e
def test_a_quantizing_or_missing_teacher_is_refused(tmp_path):
    data = synthetic_digits()
    train(tiny_config(tmp_path / "ste", method="ste", epochs=1), dataset=data)
    with pytest.raises(ValueError, match="must be a float run"):
        train(tiny_config(tmp_path / "s", method="ste",
                          distill={"teacher": str(tmp_path / "ste")}),
              dataset=data)
    with pytest.raises(FileNotFoundError, match="distill_from"):
        train(tiny_config(tmp_path / "s2", method="ste",
                          distill={"teacher": str(tmp_path / "nope")}),
              dataset=data)
    path = save_variables(tmp_path / "wide.msgpack", {"params": {"fc": {"kernel": np.ones(3)}}})
    with pytest.raises(ValueError, match="distill_from: the params"):
        train(tiny_config(tmp_path / "s3", method="ste", distill={"teacher": str(path)}),
              dataset=data)
    # A batch-norm model's teacher file must bring its statistics.
    from tests.test_data_parallel import bn_config, synthetic_colour
    colour = synthetic_colour(n_train=64, n_test=32)
    from symog_jax.models import create_model, init_variables
    v = init_variables(create_model("vgg7", 4, width=0.0625), jax.random.PRNGKey(0), (32, 32, 3))
    path = save_variables(tmp_path / "nobn.msgpack", {"params": v["params"]})
    with pytest.raises(ValueError, match="has no batch_stats"):
        train(bn_config(tmp_path / "s4", method="ste", distill={"teacher": str(path)}),
              dataset=colour)


@pytest.mark.parametrize("field, value, match", [
    ("weight", 0.0, "DistillConfig.weight"), ("weight", 1.5, "DistillConfig.weight"),
    ("temperature", 0.0, "DistillConfig.temperature"),
    ("temperature", float("nan"), "DistillConfig.temperature"),
    ("teacher", "  ", "DistillConfig.teacher"),
])
def test_distill_fields_are_checked(field, value, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(distill={field: value})


def test_teacher_logits_do_not_change_the_optimizer_state_structure():
    # The distilled step's state is a plain state: checkpoints are interchangeable.
    model = _Tiny()
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 2, 1)))["params"]
    tx = optax.sgd(0.1)
    method = make_method("float", {"bits": 2}, RunInfo(steps_per_epoch=1, epochs=1))
    trainable = {"params": params, "method": {}}
    state = TrainState(step=jnp.zeros([], jnp.int32), params=params, method_vars={},
                       batch_stats={}, opt_state=tx.init(trainable), act_formats={},
                       rng=jax.random.PRNGKey(1))
    x, y = np.zeros((2, 2, 2, 1), np.uint8), np.zeros(2, np.int32)
    prep = lambda r, i, t: i.astype(jnp.float32)   # noqa: E731
    a, _ = make_train_step(model, tx, method, prep)(state, x, y)
    b, _ = make_train_step(model, tx, method, prep, teacher=Teacher(
        model, {"params": params}, 0.5, 1.0))(state, x, y)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
