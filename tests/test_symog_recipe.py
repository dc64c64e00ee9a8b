"""The SYMOG recipe pieces of issue 10: the annealed exact-mixture prior and a float start.

Ground truth is computed by hand in numpy: the posterior mean of the level under a mixture of
equal-weight Gaussians at the levels, and the geometric sigma ramp.
"""

from __future__ import annotations
from symog_jax.training.config import config_from_file

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.test_training import synthetic_digits
from symog_jax import find_formats
from symog_jax.methods import RunInfo, make_method
from symog_jax.methods.symog import SymogConfig, sigma_schedule
from symog_jax.training import TrainConfig, train


def posterior_mean_numpy(v: np.ndarray, step: float, sigma_steps: float, levels) -> np.ndarray:
    """E[level | v] under equal-weight Gaussians N(level, (sigma*step)^2) (float64)."""
    mu = np.asarray(levels, np.float64) * step
    logits = -((v[..., None] - mu) ** 2) / (2 * (sigma_steps * step) ** 2)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return (p * mu).sum(-1)


def test_sigma_schedule_is_the_geometric_ramp_and_never_zero():
    s = sigma_schedule(0.4, 0.05, ramp_steps=200, warmup_steps=50)
    for t in (0, 25, 50, 90, 150, 249, 250, 10_000):
        frac = min(max((t - 50) / 200, 0.0), 1.0)
        assert float(s(t)) == pytest.approx(0.4 * (0.05 / 0.4) ** frac, rel=1e-6)
    assert float(jax.jit(s)(0)) == pytest.approx(0.4)


@pytest.mark.parametrize("bad", [dict(prior="gauss"), dict(sigma_start=0.5),
                                 dict(sigma_start=0.0), dict(sigma_end=0.3, sigma_start=0.2),
                                 dict(sigma_end=float("nan")), dict(reestimate_epochs=-1),
                                 dict(reestimate_epochs=1, warmup_epochs=1.0)])
def test_mixture_config_rejects_bad_values_in_one_line(bad):
    with pytest.raises(ValueError) as e:
        SymogConfig(bits=2, **bad)
    assert "\n" not in str(e.value)


def _one_step(config: SymogConfig, w: np.ndarray, count: int, steps=(100, 1)):
    """Applies the method's transform to ``w`` with zero gradients at optimizer step ``count``."""
    run = RunInfo(steps_per_epoch=steps[0], epochs=steps[1], layer_order=("dense",))
    method = make_method("symog", config, run)
    trainable = {"params": {"dense": {"kernel": jnp.asarray(w)}}, "method": {}}
    tx = method.transform(optax.sgd(0.0), run)
    state = tx.init(trainable)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, trainable)
    update = jax.jit(tx.update)
    for _ in range(count):      # only advances the schedules: the weights stay `w`
        _, state = update(zeros, state, trainable)
    u, _ = update(zeros, state, trainable)
    fmt = find_formats(state)["params"]["dense"]["kernel"]
    step = float(np.asarray(fmt.step_for(2)))     # the format is chosen (and tested) elsewhere
    return np.asarray(optax.apply_updates(trainable, u)["params"]["dense"]["kernel"]), step


def test_mixture_pull_targets_the_posterior_mean_with_the_scheduled_sigma():
    w = np.array([[-1.0, -0.6, -0.3, 0.0], [0.3, 0.45, 0.55, 1.0]], np.float32)
    cfg = SymogConfig(bits=2, prior="mixture", strength_start=0.5, strength_end=0.5,
                      sigma_start=0.4, sigma_end=0.05, anneal_fraction=1.0)
    got, step = _one_step(cfg, w, count=0)
    assert step == 0.5                        # levels -0.5, 0, 0.5
    expected = w + 0.5 * (posterior_mean_numpy(w.astype(np.float64), step, 0.4, (-1, 0, 1)) - w)
    expected = np.clip(expected, -step, step)       # then clipped to the representable range
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # Near a midpoint between levels (0.25 = half a step) the wide mixture barely moves a
    # weight, which can still change mode; the nearest-level pull moves it half-way to 0 or 0.5.
    w = np.array([[0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.22, 0.24, 0.26, 0.28]] * 2,
                 np.float32) * np.array([[1.0], [-1.0]], np.float32)
    got, step = _one_step(cfg, w, count=0)
    assert step == 0.5
    nearest, _ = _one_step(SymogConfig(bits=2, strength_start=0.5, strength_end=0.5,
                                       anneal_fraction=1.0), w, count=0)
    moved, moved_nearest = np.abs(got - w)[:, 8:], np.abs(nearest - w)[:, 8:]
    assert np.all(moved < 0.25 * moved_nearest), (moved, moved_nearest)


def test_mixture_pull_at_the_end_of_the_ramp_is_the_nearest_level():
    w = np.array([[-1.0, -0.6, -0.3, 0.0], [0.3, 0.45, 0.55, 1.0]], np.float32)
    cfg = SymogConfig(bits=2, prior="mixture", strength_start=1.0, strength_end=1.0,
                      sigma_start=0.4, sigma_end=0.05, anneal_fraction=1.0)
    got, step = _one_step(cfg, w, count=99)   # sigma has reached 0.05 steps
    np.testing.assert_allclose(got, np.clip(np.round(w / step), -1, 1) * step, atol=1e-4)


@pytest.mark.parametrize("jit", [False, True])
def test_quantized_forward_rounds_the_kernels_with_straight_through_gradients(jit):
    w = np.array([[-1.0, -0.6, -0.3, 0.0], [0.3, 0.45, 0.55, 1.0]], np.float32)
    run = RunInfo(steps_per_epoch=10, epochs=1, layer_order=("dense",))
    trainable = {"params": {"dense": {"kernel": jnp.asarray(w)}}, "method": {}}
    soft = make_method("symog", SymogConfig(bits=2), run)
    hard = make_method("symog", SymogConfig(bits=2, forward="quantized"), run)
    state = hard.transform(optax.sgd(0.1), run).init(trainable)
    step = float(np.asarray(find_formats(state)["params"]["dense"]["kernel"].step_for(2)))
    assert step == 0.5                                 # levels -0.5, 0, 0.5

    def loss(method, t):
        return jnp.sum(method.train_params(t, state)["dense"]["kernel"] * jnp.arange(8.0)
                       .reshape(2, 4))
    fn = (lambda m: jax.jit(jax.value_and_grad(lambda t: loss(m, t)))) if jit else \
        (lambda m: jax.value_and_grad(lambda t: loss(m, t)))
    value, grad = fn(hard)(trainable)
    rounded = np.clip(np.round(w / step), -1, 1) * step        # numpy ground truth
    assert float(value) == pytest.approx(float(np.sum(rounded * np.arange(8.0).reshape(2, 4))))
    g = np.asarray(grad["params"]["dense"]["kernel"])
    inside = np.abs(w) <= step                         # straight-through inside the range
    np.testing.assert_array_equal(g, np.where(inside, np.arange(8.0).reshape(2, 4), 0.0))
    value_soft, _ = fn(soft)(trainable)                # the published forward: float weights
    assert float(value_soft) == pytest.approx(float(np.sum(w * np.arange(8.0).reshape(2, 4))))
    with pytest.raises(ValueError, match="forward"):
        SymogConfig(bits=2, forward="hard")


@pytest.mark.parametrize("jit", [True, False])
@pytest.mark.parametrize("every", [0, 1, 2])
def test_reestimate_epochs_rechooses_the_step_at_epoch_boundaries(every, jit):
    # Power-of-two steps are scale-equivariant: weights 4x as large get exactly a 4x step.
    # The transform sees 4x the weights it was initialised with; the format follows at the first
    # re-estimation (optimizer step `every` epochs), never with reestimate_epochs=0.
    steps_per_epoch = 5
    run = RunInfo(steps_per_epoch=steps_per_epoch, epochs=3, layer_order=("dense",))
    method = make_method("symog", SymogConfig(bits=2, reestimate_epochs=every), run)
    w = jnp.asarray(np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32))
    tx = method.transform(optax.sgd(0.0), run)
    state = tx.init({"params": {"dense": {"kernel": w}}, "method": {}})
    grown = {"params": {"dense": {"kernel": 4 * w}}, "method": {}}
    zeros = jax.tree_util.tree_map(jnp.zeros_like, grown)
    update = jax.jit(tx.update) if jit else tx.update

    def step_now():
        fmt = find_formats(state)["params"]["dense"]["kernel"]
        return float(np.asarray(fmt.step_for(2)))

    start = step_now()
    steps = []
    for _ in range(3 * steps_per_epoch):
        _, state = update(zeros, state, grown)
        steps.append(step_now())
    first_change = every * steps_per_epoch       # the update at count == that re-estimates
    for t, step in enumerate(steps):      # steps[t]: after the update at count == t
        expected = 4 * start if every and t >= first_change else start
        assert step == expected, (t, step, expected)


@pytest.mark.e2e
def test_float_start_then_mixture_ends_on_levels_and_keeps_float_accuracy(tmp_path):
    data = synthetic_digits(n_train=256, n_test=128)
    common = dict(dataset="synthetic", model="lenet5", batch_size=32, optimizer="adam",
                  lr=3e-3, weight_decay=0.0, width=0.25, progress=False)
    float_run = train(TrainConfig(method="float", epochs=3, workdir=str(tmp_path / "f"),
                                  **common), dataset=data)
    cfg = TrainConfig(method="symog", epochs=2, init_from=str(tmp_path / "f"),
                      method_config=SymogConfig(bits=2, prior="mixture", warmup_epochs=0.0,
                                                strength_start=1e-3, strength_end=1.0),
                      workdir=str(tmp_path / "s"), **common)
    report = train(cfg, dataset=data)
    assert all(layer["near_level_fraction"] == 1.0 for layer in report["layers"])
    # Lossless rounding, and the 2-bit network is about as good as its float start.
    assert report["test_error_quantized"] == pytest.approx(report["test_error_float"], abs=1e-9)
    assert report["test_error_quantized"] <= float_run["test_error_float"] + 0.1
    assert math.isfinite(report["test_error_quantized"])


@pytest.mark.e2e
def test_train_from_float_runs_both_stages_and_resumes_without_retraining(tmp_path, capsys):
    from symog_jax.pipelines.recipes import train_from_float
    data = synthetic_digits(n_train=128, n_test=64)
    cfg = TrainConfig(dataset="synthetic", model="lenet5", method="ste", method_config={"bits": 2},
                      epochs=2, batch_size=32, optimizer="adam", lr=3e-3, weight_decay=0.0,
                      width=0.125, progress=False, workdir=str(tmp_path / "run"),
                      stop_after_epochs=1)
    out = train_from_float(cfg, 1, dataset=data, float_lr=1e-3)
    assert out["stopped_at_epoch"] == 1                       # stage 2 stopped after 1 epoch
    float_dir = tmp_path / "run" / "float-start"
    float_report = json.loads((float_dir / "report.json").read_text())
    assert float_report["config"]["method"] == "float" and float_report["config"]["epochs"] == 1
    assert float_report["config"]["lr"] == 1e-3               # its own learning rate ...
    saved = config_from_file(tmp_path / "run" / "config.json").flat()
    assert saved["init_from"] == str(float_dir) and saved["method"] == "ste"
    assert saved["lr"] == 3e-3                                # ... the stage after it keeps its
    mtime = (float_dir / "report.json").stat().st_mtime_ns
    capsys.readouterr()
    report = train_from_float(cfg.replace(stop_after_epochs=None), 1, dataset=data, resume=True,
                              float_lr=1e-3)
    assert "already trained" in capsys.readouterr().out
    assert (float_dir / "report.json").stat().st_mtime_ns == mtime
    assert report["float_stage"]["test_error_float"] == float_report["test_error_float"]
    assert report["config"]["init_from"] == str(float_dir)
    with pytest.raises(ValueError, match="init_from"):
        train_from_float(cfg.replace(init_from=str(float_dir)), 1, dataset=data)
    # Without --resume the run's checkpoints are refused before anything trains ...
    with pytest.raises(FileExistsError, match="already holds checkpoints; pass --resume"):
        train_from_float(cfg, 1, dataset=data, float_lr=1e-3)
    # ... and a finished float stage trained differently is refused, not silently reused.
    with pytest.raises(ValueError, match=r"not the one asked for \(lr: finished 0.001, asked"):
        train_from_float(cfg, 1, dataset=data, resume=True)
    with pytest.raises(ValueError, match="epochs: finished 1, asked 2"):
        train_from_float(cfg, 2, dataset=data, float_lr=1e-3, resume=True)
    with pytest.raises(ValueError, match="float_epochs"):
        train_from_float(cfg, 0, dataset=data)
    # distill: the finished float stage also teaches the second stage.
    kd = cfg.replace(stop_after_epochs=None, epochs=1, workdir=str(tmp_path / "kd"),
                     distill={"weight": 0.8})
    report = train_from_float(kd, 1, dataset=data, float_lr=1e-3, distill=True)
    assert report["config"]["distill_from"] == str(tmp_path / "kd" / "float-start")
    assert report["config"]["init_from"] == report["config"]["distill_from"]
    with pytest.raises(ValueError, match="already taught by"):
        train_from_float(kd.replace(distill={"teacher": "x"}), 1, dataset=data, distill=True)


@pytest.mark.e2e
def test_cli_float_start_epochs_flag(tmp_path):
    from tests.test_training import _run_cli
    res = _run_cli("--float-start-epochs", "-1", "--workdir", str(tmp_path / "run"), cwd=tmp_path)
    assert res.returncode == 2
    assert "argument --float-start-epochs: must be an integer >= 0" in res.stderr
    res = _run_cli("--float-start-lr", "0", "--workdir", str(tmp_path / "run"), cwd=tmp_path)
    assert res.returncode == 2
    assert "argument --float-start-lr: must be a finite number > 0" in res.stderr
    res = _run_cli("--distill-from-float-start", "--float-start-epochs", "0", "--workdir",
                   str(tmp_path / "run"), cwd=tmp_path)
    assert res.returncode == 2 and "--distill-from-float-start needs the two-stage" in res.stderr


def test_cli_experiment_defaults_for_the_two_stages_and_their_flags(tmp_path, monkeypatch):
    import symog_jax.pipelines.cli as cli
    from experiments.mnist import DEFAULTS
    calls = []
    monkeypatch.setattr(cli, "train_stages", lambda stages, **kw: calls.append(stages))

    def last_call():
        """(float stage config or None, the method's config) of the last command."""
        stages = [c for _, c in calls[-1]]
        return (stages[0] if len(stages) == 2 else None), stages[-1]

    wd = ["--workdir", str(tmp_path / "run")]
    lr = DEFAULTS.lr
    kw = dict(float_start_epochs=3, distill_from_float_start=True, fine_tune_lr=lr / 4)
    assert cli.main("t", DEFAULTS, "", wd, **kw) == 0
    float_stage, config = last_call()
    assert float_stage.epochs == 3 and config.distill.teacher == float_stage.workdir
    assert float_stage.lr == lr and config.lr == lr / 4     # float stage at --lr, then fine-tune
    assert config.init_from == float_stage.workdir == str(tmp_path / "run" / "float-start")
    flags = ["--fine-tune-lr", "0.3", "--float-start-lr", "0.2", "--no-distill-from-float-start"]
    assert cli.main("t", DEFAULTS, "", wd + flags, **kw) == 0
    float_stage, config = last_call()
    assert (config.lr, float_stage.lr, config.distill.teacher) == (0.3, 0.2, None)
    assert cli.main("t", DEFAULTS, "", wd + ["--lr", "0.1"], **kw) == 0
    float_stage, config = last_call()
    assert float_stage.lr == 0.1 and config.lr == lr / 4
    assert cli.main("t", DEFAULTS, "", wd + ["--float-start-epochs", "0"], **kw) == 0
    float_stage, config = last_call()
    assert float_stage is None and config.lr == lr          # from random weights: --lr
    assert cli.main("t", DEFAULTS, "", wd, float_start_epochs=3) == 0
    float_stage, config = last_call()
    assert (config.lr, float_stage.lr, config.distill.teacher) == (lr, lr, None)
    with pytest.raises(SystemExit):
        cli.main("t", DEFAULTS, "", wd + ["--fine-tune-lr", "nan"], **kw)


def _study_module():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "symog_recipe.py"
    spec = importlib.util.spec_from_file_location("symog_recipe_study", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_study_splits_the_budget_between_the_float_start_and_the_second_stage():
    study = _study_module()
    # Default split: half the epochs float, the rest for the quantizing stage.
    cfg = study.variant_config("ste-float-start", 2, 8, "runs/f")
    assert (cfg["epochs"], cfg["init_from"]) == (4, "runs/f")
    # A long float start (the paper's fine-tuning recipe) leaves total - float_epochs.
    for variant in ("symog-mixture-qfwd", "ste-float-start", "float-continued"):
        cfg = study.variant_config(variant, 2, 14, "runs/f", float_epochs=10)
        assert cfg["epochs"] == 4 and cfg["init_from"] == "runs/f", variant
    cont = study.variant_config("float-continued", 2, 14, "runs/f", float_epochs=10)
    assert cont["method"] == "float"
    # From-scratch variants ignore the split.
    assert study.variant_config("ste", 2, 14, "runs/f", float_epochs=10)["epochs"] == 14
    for bad in (0, 14, 20):
        with pytest.raises(ValueError, match="float_epochs must be in"):
            study.variant_config("ste-float-start", 2, 14, "runs/f", float_epochs=bad)


def test_study_variant_names_select_forward_and_pull():
    study = _study_module()
    cfgs = {v: study.variant_config(v, 2, 8, "f")["method_config"]
            for v in ("symog-mixture", "symog-mixture-qfwd", "symog-mixture-weak",
                      "symog-mixture-qfwd-weak")}
    assert {v: (c["forward"], c["strength_end"]) for v, c in cfgs.items()} == {
        "symog-mixture": ("float", 0.1), "symog-mixture-qfwd": ("quantized", 0.1),
        "symog-mixture-weak": ("float", 0.01), "symog-mixture-qfwd-weak": ("quantized", 0.01)}
    assert all(c["prior"] == "mixture" for c in cfgs.values())
    # Every variant builds a config the trainer accepts.
    for variant in study.VARIANTS:
        fields = study.variant_config(variant, 2, 8, "f")
        fields.pop("init_from", None)
        TrainConfig(dataset="mnist", model="lenet5", **fields)


def test_study_stage_lr_applies_to_the_float_start_variants_only():
    study = _study_module()
    for variant in ("ste-float-start", "float-continued", "symog-mixture-qfwd-late"):
        assert study.variant_config(variant, 2, 14, "f", 10, stage_lr=0.02)["lr"] == 0.02
        assert "lr" not in study.variant_config(variant, 2, 14, "f", 10)   # preset's lr
    for variant in ("ste", "float", "symog-scratch"):                    # no second stage
        assert "lr" not in study.variant_config(variant, 2, 14, "f", 10, stage_lr=0.02)


def test_study_hold_variant_stops_the_pull_at_1e_3_from_three_quarters_of_the_stage():
    from symog_jax.transforms import annealing_schedule_for_run
    study = _study_module()
    c = study.variant_config("symog-mixture-qfwd-late-hold", 2, 26, "f", 10)["method_config"]
    late = study.variant_config("symog-mixture-qfwd-late", 2, 26, "f", 10)["method_config"]
    hold = annealing_schedule_for_run(c["strength_start"], c["strength_end"], 1600,
                                      anneal_fraction=c["anneal_fraction"])
    grow = annealing_schedule_for_run(late["strength_start"], late["strength_end"], 1600,
                                      anneal_fraction=late["anneal_fraction"])
    # Same geometric ramp as -late (1e-6 * 1e4 ** (t / T)) up to 3/4 of the stage ...
    for t in (0, 400, 800, 1200):
        expected = 1e-6 * 1e4 ** (t / 1600)
        assert float(hold(t)) == pytest.approx(expected, rel=1e-4)
        assert float(grow(t)) == pytest.approx(expected, rel=1e-2)   # its ramp: 1599 steps
    # ... then held at 1e-3 where -late goes on to 1e-2.
    assert [float(hold(t)) for t in (1300, 1599)] == pytest.approx([1e-3, 1e-3], rel=1e-5)
    assert float(grow(1599)) == pytest.approx(1e-2, rel=1e-2)


def test_study_method_fields_reach_the_quantizing_variants_only():
    study = _study_module()
    assert study.parse_method_field("per_channel=true") == ("per_channel", True)
    assert study.parse_method_field(" bits_per_layer = conv1=8,fc2=8") == (
        "bits_per_layer", "conv1=8,fc2=8")
    for bad in ("per_channel", "=1", "bits="):
        with pytest.raises(ValueError, match="KEY=VALUE"):
            study.parse_method_field(bad)
    extra = {"per_channel": True, "bits_per_layer": "conv1=8"}
    for variant in ("ste", "ste-float-start", "symog-scratch", "symog-mixture-qfwd-late"):
        c = study.variant_config(variant, 2, 14, "f", 10, method_fields=extra)["method_config"]
        assert c["per_channel"] is True and c["bits_per_layer"] == "conv1=8"
        assert c["bits"] == 2                                  # the variant's own fields stay
    late = study.variant_config("symog-mixture-qfwd-late", 2, 14, "f", 10,
                                method_fields=extra)["method_config"]
    assert late["strength_start"] == 1e-6 and late["forward"] == "quantized"
    for variant in ("float", "float-continued"):        # the float reference is not changed
        assert "method_config" not in study.variant_config(variant, 2, 14, "f", 10,
                                                           method_fields=extra)
    # The fields are valid SymogConfig / SteConfig fields: the configs build.
    for variant in ("ste-float-start", "symog-mixture-qfwd-late"):
        fields = study.variant_config(variant, 2, 14, "f", 10, method_fields=extra)
        fields.pop("init_from")
        c = TrainConfig.from_flat({"dataset": "cifar10", "model": "vgg7", **fields})
        assert (c.distill.teacher, c.distill.weight) == (None, 0.5)


@pytest.mark.parametrize("prior", ["nearest", "mixture"])
def test_release_fraction_stops_the_pull_but_not_the_clipping(prior):
    w = np.array([[-1.0, -0.6, -0.3, 0.0], [0.2, 0.45, 0.55, 1.0]], np.float32)
    cfg = SymogConfig(bits=2, prior=prior, strength_start=0.5, strength_end=0.5,
                      sigma_end=0.01, anneal_fraction=0.2, forward="quantized",
                      release_fraction=0.5)
    for count in (49, 50, 99):                # release at step 50 of the 100-step run
        got, step = _one_step(cfg, w, count=count)
        assert step == 0.5
        nearest = np.clip(np.round(w / step), -1, 1) * step     # sigma is sharp after the ramp
        pulled = np.clip(w + 0.5 * (nearest - w), -step, step)
        want = pulled if count < 50 else np.clip(w, -step, step)
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_release_needs_the_quantized_forward_and_a_fraction_in_0_1():
    with pytest.raises(ValueError, match="release_fraction < 1 needs forward='quantized'"):
        SymogConfig(release_fraction=0.5)
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="release_fraction"):
            SymogConfig(release_fraction=bad, forward="quantized")
    SymogConfig(release_fraction=1.0)          # the default: never released, any forward


def test_study_release_variant_is_late_until_three_quarters_then_no_pull():
    study = _study_module()
    c = study.variant_config("symog-mixture-qfwd-late-release", 2, 18, "f", 10)["method_config"]
    late = study.variant_config("symog-mixture-qfwd-late", 2, 18, "f", 10)["method_config"]
    assert c.pop("release_fraction") == 0.75 and c == late
    SymogConfig(**c, release_fraction=0.75)


def test_study_distill_teaches_the_quantizing_float_start_variants_only():
    study = _study_module()
    kd = {"distill_weight": 0.5, "distill_temperature": 4.0}
    for variant in ("ste-float-start", "symog-mixture-qfwd-late-release"):
        fields = study.variant_config(variant, 2, 14, "runs/f", 10, distill=kd)
        assert fields["distill_from"] == "runs/f" and fields["distill_weight"] == 0.5
        assert study.variant_label(variant, fields) == variant + "-kd"
        fields.pop("init_from")
        fields.pop("distill_from")
        c = TrainConfig.from_flat({"dataset": "cifar10", "model": "vgg7", **fields})
        assert (c.distill.teacher, c.distill.weight) == (None, 0.5)
    for variant in ("float-continued", "ste", "symog-scratch"):   # no float start to learn from
        fields = study.variant_config(variant, 2, 14, "runs/f", 10, distill=kd)
        assert "distill_from" not in fields and study.variant_label(variant, fields) == variant
