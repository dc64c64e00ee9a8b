"""Batch-norm statistics re-estimated for changed weights (``recalibrate_batch_stats``).

Ground truth: numpy -- the mean over batches of each batch's per-channel mean and biased variance
of the layer input, computed here from the inputs (and, for a conv, from an explicit numpy
convolution), whatever the model's momentum and stored statistics were.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_training import synthetic_digits, tiny_config

from symog_jax.pipelines.export import check_export, export_run
from symog_jax.training import derived_run, train
from symog_jax.training.batch_norm import recalibrate_batch_stats
from symog_jax.training import evaluate_run, restore_run
from symog_jax.training.evaluation import recalibrated_batch_stats

ROOT = Path(__file__).resolve().parent.parent


class DenseBN(nn.Module):
    momentum: float

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(3, name="dense")(x)
        return nn.BatchNorm(use_running_average=False, momentum=self.momentum, name="bn")(x)


def _update_fn(model, params, jit):
    def update(stats, x):
        return model.apply({"params": params, "batch_stats": stats}, x,
                           mutable=["batch_stats"])[1]["batch_stats"]
    return jax.jit(update) if jit else update


@pytest.mark.e2e
@pytest.mark.parametrize("jit", [True, False])
@settings(max_examples=15, deadline=None)
@given(momentum=st.sampled_from([0.0, 0.5, 0.9, 0.99]), n_batches=st.integers(1, 5),
       seed=st.integers(0, 2**16))
def test_dense_statistics_are_the_mean_of_per_batch_statistics(jit, momentum, n_batches, seed):
    rng = np.random.default_rng(seed)
    model = DenseBN(momentum)
    variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((8, 4)))
    # Stored statistics far from the truth: the result must not depend on them.
    stored = jax.tree_util.tree_map(lambda a: a + 37.0, variables["batch_stats"])
    batches = [rng.normal(2.0, 3.0, (8, 4)).astype(np.float32) for _ in range(n_batches)]
    stats = recalibrate_batch_stats(_update_fn(model, variables["params"], jit), stored,
                                    batches)
    kernel = np.asarray(variables["params"]["dense"]["kernel"], np.float64)
    bias = np.asarray(variables["params"]["dense"]["bias"], np.float64)
    outs = [b.astype(np.float64) @ kernel + bias for b in batches]
    np.testing.assert_allclose(stats["bn"]["mean"], np.mean([o.mean(0) for o in outs], 0),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(stats["bn"]["var"], np.mean([o.var(0) for o in outs], 0),
                               rtol=1e-4, atol=1e-4)
    assert stats["bn"]["mean"].dtype == stored["bn"]["mean"].dtype


class ConvBN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(2, (3, 3), padding="VALID", use_bias=False, name="conv")(x)
        x = nn.BatchNorm(use_running_average=False, momentum=0.9, name="bn1")(x)
        return nn.BatchNorm(use_running_average=False, momentum=0.99, name="bn2")(
            nn.relu(x) * 2.0)


def _np_conv_valid(x, k):
    """(N, H, W, C) * (3, 3, C, F) -> (N, H-2, W-2, F), the direct sum."""
    n, h, w, _ = x.shape
    out = np.zeros((n, h - 2, w - 2, k.shape[-1]))
    for i in range(3):
        for j in range(3):
            out += np.einsum("nhwc,cf->nhwf", x[:, i:i + h - 2, j:j + w - 2], k[i, j])
    return out


def test_conv_statistics_reduce_over_batch_and_space_with_layers_of_other_momenta():
    rng = np.random.default_rng(0)
    model = ConvBN()
    variables = model.init(jax.random.PRNGKey(1), jnp.zeros((2, 6, 6, 3)))
    batches = [rng.normal(size=(4, 6, 6, 3)).astype(np.float32) for _ in range(3)]
    stats = recalibrate_batch_stats(_update_fn(model, variables["params"], True),
                                    variables["batch_stats"], batches)
    k = np.asarray(variables["params"]["conv"]["kernel"], np.float64)
    convs = [_np_conv_valid(b.astype(np.float64), k) for b in batches]
    np.testing.assert_allclose(stats["bn1"]["mean"],
                               np.mean([c.mean((0, 1, 2)) for c in convs], 0), atol=1e-5)
    np.testing.assert_allclose(stats["bn1"]["var"],
                               np.mean([c.var((0, 1, 2)) for c in convs], 0), rtol=1e-4)
    # The second layer sees the first normalised with each batch's own statistics.
    seconds = [2 * np.maximum((c - c.mean((0, 1, 2))) / np.sqrt(c.var((0, 1, 2)) + 1e-5), 0)
               for c in convs]
    np.testing.assert_allclose(stats["bn2"]["mean"],
                               np.mean([s.mean((0, 1, 2)) for s in seconds], 0), rtol=1e-4)
    np.testing.assert_allclose(stats["bn2"]["var"],
                               np.mean([s.var((0, 1, 2)) for s in seconds], 0), rtol=1e-4)


def test_bad_inputs_are_named():
    model = DenseBN(0.9)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((8, 4)))
    update = _update_fn(model, variables["params"], True)
    with pytest.raises(ValueError, match="at least one batch"):
        recalibrate_batch_stats(update, variables["batch_stats"], [])
    with pytest.raises(ValueError, match="not finite"):
        recalibrate_batch_stats(update, variables["batch_stats"],
                                [np.full((8, 4), np.nan, np.float32)])
    frozen = _update_fn(DenseBN(1.0), variables["params"], True)
    with pytest.raises(ValueError, match="m = 1: it does not move"):
        recalibrate_batch_stats(frozen, variables["batch_stats"], [np.ones((8, 4), np.float32)])

    def squared(stats, x):    # not a moving average: new = old**2 + batch mean
        return jax.tree_util.tree_map(lambda s: s ** 2 + x.mean(), stats)

    def uneven(stats, x):     # a different momentum for each channel
        return jax.tree_util.tree_map(
            lambda s: jnp.linspace(0.1, 0.9, s.shape[-1]) * s + x.mean(), stats)
    for bad, read in ((squared, "m = 1024"), (uneven, "m from 0.1 to 0.9")):
        with pytest.raises(ValueError, match=f"not an exponential moving average.*{read}"):
            recalibrate_batch_stats(bad, variables["batch_stats"], [np.ones((8, 4), np.float32)])


@pytest.fixture(scope="module")
def float_run(tmp_path_factory):
    """A 1-epoch float VGG7 (batch norm) on the synthetic digits; evaluated at 2 bits."""
    workdir = tmp_path_factory.mktemp("recal") / "run"
    dataset = synthetic_digits()
    train(tiny_config(workdir, method="float", model="vgg7", epochs=1), dataset=dataset)
    return workdir, dataset


@pytest.mark.e2e
def test_evaluate_run_reports_the_recalibrated_error(float_run):
    workdir, dataset = float_run
    plain = evaluate_run(workdir, dataset)
    result = evaluate_run(workdir, dataset, recalibrate_batches=3)
    assert "test_error_quantized_recalibrated" not in plain
    assert result["test_error_quantized"] == plain["test_error_quantized"]
    assert 0.0 <= result["test_error_quantized_recalibrated"] <= 1.0
    assert result["recalibration"] == {"batches": 3, "batch_size": 32, "augment": True}
    with pytest.raises(ValueError, match="cannot draw 9 batches of 32 from 256"):
        evaluate_run(workdir, dataset, recalibrate_batches=9)


@pytest.mark.e2e
def test_run_recalibration_ignores_the_stored_statistics(float_run):
    workdir, dataset = float_run
    config, built, state, _ = restore_run(workdir, dataset)
    args = (built.model, built.prepare, state.params)
    kw = dict(batches=2, batch_size=32, seed=3)
    a = recalibrated_batch_stats(*args, state.batch_stats, state.act_formats,
                                 dataset.train_images, **kw)
    shifted = jax.tree_util.tree_map(lambda s: s * 5.0 + 1.0, state.batch_stats)
    b = recalibrated_batch_stats(*args, shifted, state.act_formats, dataset.train_images, **kw)
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
                           a, b)
    assert any(not np.allclose(x, y) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                     jax.tree_util.tree_leaves(state.batch_stats)))


@pytest.mark.e2e
def test_a_model_without_batch_norm_is_refused(tmp_path):
    dataset = synthetic_digits()
    train(tiny_config(tmp_path, method="float", epochs=1), dataset=dataset)   # lenet5: no BN
    with pytest.raises(ValueError, match="has no batch norm"):
        evaluate_run(tmp_path, dataset, recalibrate_batches=1)


@pytest.mark.e2e
def test_evaluate_cli_flag(float_run):
    workdir, _ = float_run
    bad = subprocess.run([sys.executable, "-m", "experiments.evaluate", "--workdir", str(workdir),
                          "--recalibrate-bn", "-1"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2
    assert "argument --recalibrate-bn: must be an integer >= 0" in bad.stderr


def _file_digests(workdir: Path) -> dict:
    """SHA-256 of every file under ``workdir`` but ``eval.json`` (which evaluating rewrites)."""
    return {p.relative_to(workdir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(workdir.rglob("*")) if p.is_file() and p.name != "eval.json"}


@pytest.mark.e2e
def test_saved_recalibrated_run_is_the_recalibrated_network(float_run, tmp_path):
    workdir, dataset = float_run
    before = _file_digests(workdir)
    out = tmp_path / "runs" / "recal"           # its parent does not exist yet
    result = evaluate_run(workdir, dataset, recalibrate_batches=3, save_recalibrated=out)
    assert _file_digests(workdir) == before    # the source run is not changed
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "config.json", "data.json",
                                                     "metrics.jsonl", "report.json"]
    assert not [p for p in out.parent.iterdir() if p.name != "recal"]   # no partial dir left

    # The saved run evaluates, with no recalibration, to the recalibrated error.
    saved = evaluate_run(out, dataset)
    assert saved["test_error_quantized"] == result["test_error_quantized_recalibrated"]
    report = json.loads((out / "report.json").read_text())
    assert report["test_error_quantized"] == result["test_error_quantized_recalibrated"]
    assert report["test_error_float"] == saved["test_error_float"]
    rec = report["recalibration"]
    assert rec["batches"] == 3 and rec["source"] == os.path.relpath(workdir, out)
    assert result["saved_recalibrated"] == os.path.relpath(out, workdir)
    assert rec["test_error_quantized_before"] == result["test_error_quantized"]
    assert json.loads((out / "config.json").read_text())["run"]["workdir"] == str(out)

    # Same weights; batch statistics re-estimated for the rounded weights, as an independent
    # call with the same batches gives them (its numerics are tested against numpy above).
    _, built, src, _ = restore_run(workdir, dataset)
    _, _, new, meta = restore_run(out, dataset)
    jax.tree_util.tree_map(np.testing.assert_array_equal, src.params, new.params)
    rounded = built.method.finalize(src.trainable, src.opt_state).params
    expected = recalibrated_batch_stats(built.model, built.prepare, rounded, src.batch_stats,
                                        src.act_formats, dataset.train_images, batches=3,
                                        batch_size=32, seed=0)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                           new.batch_stats, expected)
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree_util.tree_leaves(new.batch_stats),
                                                     jax.tree_util.tree_leaves(src.batch_stats)))
    assert meta["epoch"] == 1 and meta["recalibration"]["source"] == rec["source"]

    # The export deploys the recalibrated network: the integer program's test error is the
    # recalibrated one (up to the float32 ties check_export counts), not the stored-stats one.
    manifest, run = export_run(out, tmp_path / "recal.npz", dataset=dataset)
    check = check_export(run, tmp_path / "recal.npz")
    assert check["agreement"] == 1.0
    assert abs(check["error_integer"] - result["test_error_quantized_recalibrated"]) <= (
        check["disagreeing_float32"] / len(dataset.test_labels))


@pytest.mark.e2e
def test_save_recalibrated_refuses_before_any_work(float_run, tmp_path, monkeypatch):
    workdir, dataset = float_run
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    # the data must not even be loaded: no dataset is passed and none could be found
    monkeypatch.setattr("symog_jax.training.evaluation.load_run_dataset",
                        lambda *a, **k: pytest.fail("loaded data before refusing"))
    for kwargs, match in (
            (dict(recalibrate_batches=2, save_recalibrated=taken), "not an empty directory"),
            (dict(recalibrate_batches=2, save_recalibrated=workdir), "is the source run itself"),
            (dict(save_recalibrated=tmp_path / "new"), "needs recalibrate_batches >= 1")):
        with pytest.raises(ValueError, match=match):
            evaluate_run(workdir, **kwargs)
    assert (taken / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "new").exists()
    cli = subprocess.run([sys.executable, "-m", "experiments.evaluate", "--workdir", str(workdir),
                          "--save-recalibrated", str(tmp_path / "new")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 2
    assert "--save-recalibrated needs --recalibrate-bn N" in cli.stderr


@pytest.mark.e2e
def test_a_failed_save_leaves_no_run_behind(float_run, tmp_path, monkeypatch):
    workdir, dataset = float_run
    empty = tmp_path / "empty"
    empty.mkdir()

    def disk_full(self, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(derived_run.Checkpointer, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        evaluate_run(workdir, dataset, recalibrate_batches=2, save_recalibrated=empty)
    assert [p.name for p in tmp_path.iterdir()] == ["empty"]   # no partial directory
    assert not any(empty.iterdir())
