"""Per-layer bit-widths in every fixed-point method, and training from a run's weights
(init_from) (Lin, Talathi & Annapureddy 2016; issue 8 item 6)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from test_training import synthetic_digits, tiny_config

from experiments.cli import build_parser, config_from_args
from symog_jax.methods import make_method
from symog_jax.methods.fixed_point import parse_bits_per_layer
from symog_jax.training import TrainConfig, train
from symog_jax.training.loop import build_run, restore_run, training_split

@pytest.fixture(scope="module")
def dataset():
    return synthetic_digits()


def layer_bits(report) -> dict[str, int]:
    return {r["path"]: r["bits"] for r in report["layers"]}


# -- item 6: per-layer bit-widths in float (its PTQ report), ste and symog ----------------------

@pytest.mark.parametrize("method", ["float", "ste", "symog"])
def test_training_with_bits_per_layer_reports_those_bits(tmp_path, dataset, method):
    mc = {"float": {}, "ste": {}, "symog": dict(warmup_epochs=1.0, strength_start=1e-2,
                                                strength_end=0.5)}[method]
    config = tiny_config(tmp_path, method=method, epochs=2,
                         method_config={**mc, "bits": 3, "bits_per_layer": "conv1=6,fc1=2"})
    assert config.method_config.bits_per_layer == "conv1=6,fc1=2"
    assert config.describe() == f"{method}-mixed2-6bit"
    report = train(config, dataset=dataset)
    assert layer_bits(report) == {"conv1/kernel": 6, "conv2/kernel": 3, "fc1/kernel": 2,
                                  "fc2/kernel": 3}
    if method == "symog":            # the prior pulled every weight to its own layer's levels
        assert all(r["near_level_fraction"] == 1.0 for r in report["layers"])
    n = {r["path"]: int(np.prod(r["shape"])) for r in report["layers"]}
    floats = report["num_params"] - sum(n.values())          # biases stay float32
    assert report["weight_memory_bits"]["quantized"] == \
        6 * n["conv1/kernel"] + 3 * n["conv2/kernel"] + 2 * n["fc1/kernel"] + \
        3 * n["fc2/kernel"] + 32 * floats
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["method_config"]["bits_per_layer"] == "conv1=6,fc1=2"


def test_bits_per_layer_from_a_file_and_the_flag(tmp_path, dataset):
    path = tmp_path / "alloc.json"
    path.write_text(json.dumps({"params/conv2/kernel": 5, "fc2": 4}))
    config = tiny_config(tmp_path / "run", method="ste",
                         method_config={"bits": 2, "bits_per_layer": str(path)}, epochs=1)
    # stored inline: config.json does not depend on the file
    assert config.method_config.bits_per_layer == "conv2/kernel=5,fc2=4"
    assert layer_bits(train(config, dataset=dataset)) == {
        "conv1/kernel": 2, "conv2/kernel": 5, "fc1/kernel": 2, "fc2/kernel": 4}
    defaults = TrainConfig(dataset="mnist", model="lenet5", method="ste")
    parser = build_parser("x", defaults, "")
    args = parser.parse_args(["--bits-per-layer", str(path), "--bits", "3"])
    assert config_from_args(args, defaults).method_config.bits_per_layer == \
        "conv2/kernel=5,fc2=4"
    assert parse_bits_per_layer(" conv1 = 3 , ") == {"conv1": 3}


@pytest.mark.parametrize("spec, match", [
    ("conv1=1", r"'conv1' has 1 bits; each must be an integer in \[2, 24\]"),
    ("conv1=30", r"'conv1' has 30 bits"),
    ("missing.json", "file 'missing.json' does not exist"),
    ("conv1=4,conv1=5", "'conv1' is given twice"),
    ("conv1", "file 'conv1' does not exist"),
    ("conv1=four", "integer bits"),
    ("=4", "not 'layer=bits'"),
    (",", "file ',' does not exist"),
    (4, "must be 'layer=bits,...'"),
])
def test_bad_bits_per_layer_is_a_one_line_error_at_config_creation(spec, match):
    for method in ("float", "ste", "symog"):
        with pytest.raises(ValueError, match=match) as e:
            make_method(method, {"bits_per_layer": spec})
        assert "\n" not in str(e.value)


def test_bad_bits_per_layer_files(tmp_path):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{conv1: 3")
    listed = tmp_path / "list.json"
    listed.write_text("[3, 4]")
    big = tmp_path / "big.json"
    big.write_text('{"conv1": 3, "fc1": 99}')
    fraction = tmp_path / "frac.json"
    fraction.write_text('{"conv1": 3.5}')
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    for path, match in [(bad_json, "cannot read .* as JSON"), (listed, "must hold a JSON object"),
                        (big, "'fc1' has 99 bits"), (fraction, "'conv1' has 3.5 bits"),
                        (empty, "gives no layer")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(method="ste", method_config={"bits_per_layer": str(path)})


@pytest.mark.parametrize("spec, kw, match", [
    ("conv9=4", {}, "'conv9' is not a conv/dense layer of the model; its layers: conv1, conv2"),
    ("conv1/bias=4", {}, "'conv1/bias' is not a conv/dense layer"),
    ("conv1=4", {"float_first_last": True}, "covers layer 'conv1', which float_first_last keeps"),
])
def test_unknown_layers_fail_before_training(tmp_path, dataset, spec, kw, match):
    config = tiny_config(tmp_path, method="ste",
                         method_config={"bits": 2, "bits_per_layer": spec, **kw}, epochs=1)
    with pytest.raises(ValueError, match=match) as e:
        train(config, dataset=dataset)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


# -- init_from ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def float_run(tmp_path_factory, dataset):
    workdir = tmp_path_factory.mktemp("float")
    train(tiny_config(workdir, method="float", epochs=2), dataset=dataset)
    return workdir


def test_init_from_starts_from_the_runs_weights(tmp_path, dataset, float_run):
    _, _, state, _ = restore_run(float_run, dataset)
    config = tiny_config(tmp_path, method="ste", init_from=str(float_run), epochs=1,
                         method_config={"bits": 4, "bits_per_layer": "fc1=3"})
    train_x, _, steps = training_split(config, dataset)
    built = build_run(config, dataset, train_x, steps)
    jax.tree_util.tree_map(np.testing.assert_array_equal, built.state.params, state.params)
    # the formats of the straight-through run are chosen from the float weights
    fresh = build_run(config.replace(init_from=None), dataset, train_x, steps)
    assert not all(np.array_equal(a, b) for a, b in zip(
        jax.tree_util.tree_leaves(fresh.state.params), jax.tree_util.tree_leaves(state.params)))
    report = train(config, dataset=dataset)
    assert report["config"]["init_from"] == str(float_run)
    assert layer_bits(report)["fc1/kernel"] == 3


def test_init_from_errors(tmp_path, dataset, float_run):
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        train(tiny_config(tmp_path / "a", init_from=str(tmp_path / "nowhere")), dataset=dataset)
    with pytest.raises(ValueError, match="do not fit this model"):
        train(tiny_config(tmp_path / "b", init_from=str(float_run), width=0.25), dataset=dataset)
    with pytest.raises(ValueError, match="init_from must be a run directory"):
        tiny_config(tmp_path / "c", init_from="  ")
