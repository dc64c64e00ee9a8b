"""End-to-end training: jit steps, methods, checkpoint/resume exactness, the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from symog_jax.data import ImageDataset
from symog_jax.training import Checkpointer, TrainConfig, train
from symog_jax.training.config import flat_fields

ROOT = Path(__file__).resolve().parents[1]


def synthetic_digits(n_train=256, n_test=128, seed=0) -> ImageDataset:
    """28x28 greyscale images whose class (0..3) is the brightest quadrant: learnable fast."""
    rng = np.random.default_rng(seed)

    def make(n):
        labels = rng.integers(0, 4, n).astype(np.int32)
        images = rng.integers(0, 60, (n, 28, 28, 1)).astype(np.uint8)
        for i, c in enumerate(labels):
            r, q = divmod(int(c), 2)
            images[i, r * 14:(r + 1) * 14, q * 14:(q + 1) * 14] += 150
        return images, labels

    (xtr, ytr), (xte, yte) = make(n_train), make(n_test)
    return ImageDataset("synthetic", xtr, ytr, xte, yte, ("a", "b", "c", "d"), "synthetic test set")


SYMOG = dict(bits=2, warmup_epochs=1.0, strength_start=1e-2, strength_end=0.5)


def tiny_config(tmp_path, method="symog", method_config=None, **kw) -> TrainConfig:
    if method_config is None:
        method_config = SYMOG if method == "symog" else {"bits": 2}
    base = dict(dataset="synthetic", model="lenet5", method=method, method_config=method_config,
                epochs=3, batch_size=32, optimizer="adam", lr=3e-3, weight_decay=0.0,
                width=0.125, workdir=str(tmp_path), progress=False)
    base.update(kw)
    return TrainConfig(**base)


def _restore(workdir: Path):
    """The last train state saved in ``workdir``, as a raw pytree (no template)."""
    ckpt = Checkpointer(workdir / "checkpoints")
    path = ckpt.directory / str(ckpt.latest_epoch()) / "state"
    return ocp.StandardCheckpointer().restore(path)


@pytest.fixture(scope="module")
def dataset():
    return synthetic_digits()


@pytest.mark.e2e
def test_symog_puts_weights_on_levels_and_rounding_is_lossless(tmp_path, dataset):
    report = train(tiny_config(tmp_path, epochs=4), dataset=dataset)
    for layer in report["layers"]:
        assert layer["near_level_fraction"] == 1.0, layer
        assert layer["max_abs_error_in_steps"] < 0.05
    assert report["test_error_float"] < 0.2  # it learned (chance is 0.75)
    assert abs(report["test_error_quantized"] - report["test_error_float"]) <= 0.01
    assert report["weight_memory_bits"]["ratio"] > 10
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]
    assert json.loads((tmp_path / "report.json").read_text())["test_error_quantized"] == \
        report["test_error_quantized"]


@pytest.mark.e2e
@pytest.mark.parametrize("method", ["float", "ste"])
def test_other_methods_train(tmp_path, dataset, method):
    report = train(tiny_config(tmp_path, method=method, epochs=2), dataset=dataset)
    assert report["test_error_float"] < 0.5
    assert 0.0 <= report["test_error_quantized"] <= 1.0
    assert all(layer["bits"] == 2 for layer in report["layers"])


@pytest.mark.e2e
def test_resume_ends_with_exactly_the_uninterrupted_parameters(tmp_path, dataset):
    cfg_a = tiny_config(tmp_path / "a", epochs=3)
    train(cfg_a, dataset=dataset)
    cfg_b = tiny_config(tmp_path / "b", epochs=3, stop_after_epochs=1)
    out = train(cfg_b, dataset=dataset)
    assert out["stopped_at_epoch"] == 1
    final = train(cfg_b.replace(stop_after_epochs=None), dataset=dataset, resume=True)
    again = train(cfg_b.replace(stop_after_epochs=None), dataset=dataset, resume=True)
    assert again["test_error_quantized"] == final["test_error_quantized"]  # nothing retrained
    a, b = _restore(tmp_path / "a"), _restore(tmp_path / "b")
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    epochs = [json.loads(line)["epoch"]
              for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


@pytest.mark.e2e
def test_refuses_to_overwrite_or_resume_with_other_config(tmp_path, dataset):
    cfg = tiny_config(tmp_path, epochs=2, stop_after_epochs=1)
    train(cfg, dataset=dataset)
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, dataset=dataset)
    with pytest.raises(ValueError, match="bits"):
        train(cfg.replace(method_config=dict(SYMOG, bits=3)), dataset=dataset, resume=True)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="method"):
        TrainConfig(method="magic")
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=-1.0)


def _write_image_folder(root: Path, dataset: ImageDataset, n_train=96, n_test=48):
    for split, images, labels in (("train", dataset.train_images[:n_train], dataset.train_labels),
                                  ("test", dataset.test_images[:n_test], dataset.test_labels)):
        for i, (img, label) in enumerate(zip(images, labels)):
            d = root / split / dataset.class_names[label]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[..., 0]).save(d / f"{i}.png")


def _run_cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT), SYMOG_JAX_CACHE=str(Path(cwd) / "cache"))
    return subprocess.run([sys.executable, "-m", "experiments.mnist", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.e2e
def test_cli_smoke_one_tiny_epoch(tmp_path, dataset):
    _write_image_folder(tmp_path / "quads", dataset)
    res = _run_cli("--dataset", "quads", "--data-source", "folder", "--data-dir",
                   str(tmp_path / "quads"), "--epochs", "1", "--batch-size", "16", "--width",
                   "0.125", "--warmup-epochs", "0", "--workdir", str(tmp_path / "run"),
                   "--float-start-epochs", "1", "--no-progress", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["config"]["method"] == "symog"
    # the experiment's two-stage recipe: a float network first, SYMOG from it
    assert report["config"]["init_from"] == str(tmp_path / "run" / "float-start")
    assert json.loads((tmp_path / "run" / "float-start" / "report.json").read_text())[
        "config"]["method"] == "float"
    assert report["config"]["method_config"]["bits"] == 2
    assert "final:" in res.stdout


@pytest.mark.e2e
@pytest.mark.parametrize("flags, message", [
    (["--bits", "1"], "bits"),
    (["--epochs", "0"], "epochs"),
    (["--data-source", "folder", "--data-dir", "/nonexistent/dir"], "/nonexistent/dir"),
])
def test_cli_bad_values_give_one_line_errors(tmp_path, flags, message):
    res = _run_cli(*flags, "--workdir", str(tmp_path / "run"), "--no-progress", cwd=tmp_path)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert message in res.stderr


# --------------------------------------------------------------------------------------------
# The command line is generated from the config dataclasses
# --------------------------------------------------------------------------------------------

def test_every_config_field_is_a_documented_flag():
    import dataclasses

    from experiments import mnist
    from experiments.cli import build_parser
    from symog_jax.methods import get_method_class, method_names

    parser = build_parser("d", mnist.DEFAULTS, "")
    help_text = parser.format_help()
    names = [name for name, f in flat_fields().items() if f.metadata.get("cli", True)]
    for m in method_names():
        names += [f.name for f in dataclasses.fields(get_method_class(m).Config)
                  if f.metadata.get("cli", True)]
    for name in names:
        flag = "--" + name.replace("_", "-")
        assert flag in help_text, flag
    actions = {a.dest: a for a in parser._actions}
    for name in names:
        assert actions[name].help and len(actions[name].help) > 15, name


def test_cli_builds_the_config_of_the_chosen_method():
    from experiments import mnist
    from experiments.cli import build_parser, config_from_args

    def parse(*argv):
        return config_from_args(build_parser("d", mnist.DEFAULTS, "").parse_args(argv),
                                mnist.DEFAULTS)

    c = parse("--method", "syq", "--eta", "0", "--granularity", "layer", "--act-bits", "8")
    assert (c.method, c.method_config.eta, c.method_config.granularity, c.acts.bits) == \
        ("syq", 0.0, "layer", 8)
    assert c.workdir == "runs/mnist-lenet5-syq-binary-layer-a8-seed0"
    c = parse("--bits", "3", "--no-augment")
    assert c.method == "symog" and c.method_config.bits == 3 and not c.augment
    assert c.method_config.strength_start == mnist.DEFAULTS.method_config.strength_start
    c = parse("--method", "ste", "--bits", "4")     # shared field carried to another method
    assert c.method_config.bits == 4 and c.method_config.reestimate_epochs == 1
    # The experiment's own choices carry over; a shared field it left at the default does not
    # (symog's reestimate_epochs defaults to 0, ste's to 1).
    three_bit = mnist.DEFAULTS.replace(
        method_config=dataclasses.replace(mnist.DEFAULTS.method_config, bits=3))
    c = config_from_args(build_parser("d", three_bit, "").parse_args(["--method", "ste"]),
                         three_bit)
    assert (c.method_config.bits, c.method_config.reestimate_epochs) == (3, 1)
    with pytest.raises(ValueError, match="--eta is not a parameter of method 'symog'"):
        parse("--eta", "0.1")


@pytest.mark.e2e
def test_symog_warmup_longer_than_the_run_is_clamped_with_a_warning(tmp_path, dataset):
    with pytest.warns(UserWarning, match="clamped to half the run"):
        report = train(tiny_config(tmp_path, epochs=1), dataset=dataset)
    assert all(layer["near_level_fraction"] > 0.5 for layer in report["layers"])


@pytest.mark.e2e
@pytest.mark.parametrize("flags, message", [
    (["--method", "syq", "--granularity", "column"], "invalid choice: 'column'"),
    (["--method", "syq", "--eta", "1.5"], "eta must be in [0, 1)"),
    (["--act-bits", "17"], "act_bits must be None or an integer in 1..16, got 17"),
    (["--eta", "0.1"], "--eta is not a parameter of method 'symog'"),
])
def test_cli_bad_method_flags_give_one_line_errors(tmp_path, flags, message):
    res = _run_cli(*flags, "--workdir", str(tmp_path / "run"), "--no-progress", cwd=tmp_path)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert message in res.stderr


# --------------------------------------------------------------------------------------------
# Evaluation without training, and runs described by config files
# --------------------------------------------------------------------------------------------

@pytest.mark.e2e
def test_config_file_reruns_a_run_exactly_and_evaluate_reports_it(tmp_path, dataset):
    _write_image_folder(tmp_path / "quads", dataset)
    common = ["--dataset", "quads", "--data-source", "folder", "--data-dir",
              str(tmp_path / "quads"), "--no-progress"]
    res = _run_cli(*common, "--epochs", "2", "--batch-size", "16", "--width", "0.125",
                   "--warmup-epochs", "0.5", "--method", "symog", "--bits", "3",
                   "--float-start-epochs", "0", "--workdir", str(tmp_path / "a"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    res = _run_cli("--config", str(tmp_path / "a" / "config.json"), "--workdir",
                   str(tmp_path / "b"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    a = json.loads((tmp_path / "a" / "report.json").read_text())
    b = json.loads((tmp_path / "b" / "report.json").read_text())
    assert {**a["config"], "workdir": None} == {**b["config"], "workdir": None}
    assert a["config"]["method_config"]["bits"] == 3
    assert a["test_error_quantized"] == b["test_error_quantized"]
    assert a["layers"] == b["layers"]

    env = dict(os.environ, PYTHONPATH=str(ROOT), SYMOG_JAX_CACHE=str(tmp_path / "cache"))
    ev = subprocess.run([sys.executable, "-m", "experiments.evaluate", "--workdir",
                         str(tmp_path / "b")], cwd=tmp_path, env=env, capture_output=True,
                        text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr[-2000:]
    result = json.loads((tmp_path / "b" / "eval.json").read_text())
    assert result["epoch"] == 2
    assert result["test_error_quantized"] == b["test_error_quantized"]
    assert result["test_error_float"] == b["test_error_float"]
    # The MNIST recipe's SYMOG trains on the rounded weights (forward quantized): the summary
    # gives the deployed network's error and not the latent weights' (never run as a network).
    assert (f"epoch 2: test error {100 * b['test_error_quantized']:.2f}% (deployed: quantized "
            "weights) (symog-3bit)") in ev.stdout
    assert "latent" not in ev.stdout


@pytest.mark.e2e
@pytest.mark.parametrize("what, message", [
    ("no-config", "is not a run directory"),
    ("no-checkpoint", "no checkpoint in"),
])
def test_evaluate_bad_workdirs_are_one_line_errors(tmp_path, what, message):
    run = tmp_path / "run"
    run.mkdir()
    if what == "no-checkpoint":
        (run / "config.json").write_text(TrainConfig(workdir=str(run)).to_json())
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    ev = subprocess.run([sys.executable, "-m", "experiments.evaluate", "--workdir", str(run)],
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert ev.returncode == 2 and message in ev.stderr and "Traceback" not in ev.stderr


@pytest.mark.e2e
def test_config_file_with_an_unknown_field_is_one_line(tmp_path):
    bad = tmp_path / "c.json"
    bad.write_text(json.dumps({**json.loads(TrainConfig().to_json()), "learning_rate": 1.0}))
    res = _run_cli("--config", str(bad), cwd=tmp_path)
    assert res.returncode == 2
    assert "unknown section 'learning_rate'" in res.stderr and str(bad) in res.stderr
    assert "Traceback" not in res.stderr
