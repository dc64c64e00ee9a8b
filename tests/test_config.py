"""Config files: sections, strict types with the field's dotted name and the file, partial
files on top of an experiment's recipe, the flat form of older runs. Fast: nothing trains."""

from __future__ import annotations

import json

import pytest

from symog_jax.methods.symog import SymogConfig
from symog_jax.training.config import TrainConfig, config_from_file


def _write(tmp_path, data, name="c.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _complete(**changes) -> dict:
    """A complete config in sections, as a dict (a run's config.json)."""
    d = TrainConfig(method="symog", method_config={"bits": 2}, workdir="runs/x").to_dict()
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        d[section][key] = value
    return d


@pytest.mark.parametrize("dotted, value, words", [
    ("method__per_channel", "false", "method.per_channel must be true or false"),
    ("data__augment", "no", "data.augment must be true or false"),
    ("optim__lr", "0.1", "optim.lr must be a finite number"),
    ("optim__epochs", 2.5, "optim.epochs must be an integer"),
    ("run__progress", 1, "run.progress must be true or false"),
    ("optim__optimizer", "adamw", "optim.optimizer must be one of ('sgd', 'adam')"),
    ("acts__range", "full", "acts.range must be one of ('calibrated', 'unit', 'pact', 'pact-pow2')"),
    ("method__prior", "laplace", "method.prior must be one of"),
    ("optim__lrate", 0.1, "unknown field optim.lrate"),
    ("optim__epochs", 0, "optim.epochs must be a positive integer"),
    ("method__bits", 0, "method.bits must be"),
    ("method__bitz", 2, "method.bitz"),
])
def test_a_wrong_value_is_refused_naming_the_field_and_the_file(tmp_path, dotted, value, words):
    path = _write(tmp_path, _complete(**{dotted: value}))
    with pytest.raises(ValueError) as e:
        config_from_file(path)
    message = str(e.value)
    assert words in message and str(path) in message and "\n" not in message


def test_an_unknown_section_is_refused(tmp_path):
    d = _complete()
    d["optimiser"] = {"lr": 0.1}
    with pytest.raises(ValueError, match="unknown section 'optimiser'"):
        config_from_file(_write(tmp_path, d))


def test_a_complete_file_round_trips_and_has_the_documented_sections(tmp_path):
    c = TrainConfig(dataset="mnist", model="lenet5", method="ste", lr=0.2, augment=False,
                    act_bits=4, act_bits_per_layer="fc1=8", distill_weight=0.9, widths=None,
                    method_config={"bits": 3}, workdir="runs/y", seed=5)
    d = json.loads(c.to_json())
    assert sorted(d) == ["acts", "data", "distill", "method", "model", "optim", "run"]
    assert (d["optim"]["lr"], d["data"]["augment"], d["acts"]["bits"], d["acts"]["bits_per_layer"],
            d["distill"]["weight"], d["method"], d["run"]["seed"]) == \
        (0.2, False, 4, "fc1=8", 0.9, {**d["method"], "name": "ste", "bits": 3}, 5)
    assert config_from_file(_write(tmp_path, d)) == c


def test_a_partial_file_without_a_recipe_is_refused_naming_what_is_missing(tmp_path):
    with pytest.raises(ValueError) as e:
        config_from_file(_write(tmp_path, {"optim": {"lr": 0.1}}))
    assert "missing field(s) data.dataset" in str(e.value) and "method.name" in str(e.value)


def test_a_partial_file_takes_the_given_defaults_field_by_field(tmp_path):
    recipe = TrainConfig(dataset="mnist", model="lenet5", optimizer="adam", lr=1e-3, epochs=7,
                         method="symog", method_config=SymogConfig(bits=2, strength_end=0.1),
                         allow_bundled=True, workdir="runs/r")
    got = config_from_file(_write(tmp_path, {"optim": {"lr": 0.01}, "method": {"bits": 3}}),
                           defaults=recipe)
    want = recipe.flat()
    want["lr"] = 0.01
    want["method_config"]["bits"] = 3
    assert got.flat() == want


# The flat config.json of runs written before sections (fields as TrainConfig names them).
OLD_FLAT = {
    "act_bits": 4, "act_bits_per_layer": None, "act_float_last": True, "act_range": "unit",
    "allow_bundled": True, "augment": False, "batch_size": 64, "data_dir": "/data/mnist",
    "data_source": "auto", "dataset": "mnist", "distill_from": None, "distill_temperature": 4.0,
    "distill_weight": 0.5, "distributed": False, "epochs": 3, "init_from": "runs/f",
    "input_bits": 8, "keep_checkpoints": 2, "lr": 0.002, "max_train_examples": 1000,
    "method": "ste", "method_config": {"bits": 3, "per_channel": True}, "model": "lenet5",
    "momentum": 0.9, "optimizer": "adam", "plots": False, "precision": "float32",
    "progress": False, "seed": 4, "stop_after_epochs": None, "weight_decay": 0.0,
    "width": 0.5, "widths": None, "workdir": "runs/old",
}


def test_an_old_flat_config_json_still_loads_to_the_same_values(tmp_path):
    c = config_from_file(_write(tmp_path, OLD_FLAT, "config.json"))
    assert (c.dataset, c.model, c.width, c.epochs, c.lr, c.optimizer, c.batch_size, c.seed) == \
        ("mnist", "lenet5", 0.5, 3, 0.002, "adam", 64, 4)
    assert (c.act_bits, c.act_range, c.act_float_last, c.input_bits, c.augment) == \
        (4, "unit", True, 8, False)
    assert (c.method, c.method_config.bits, c.method_config.per_channel) == ("ste", 3, True)
    assert (c.init_from, c.data_dir, c.workdir, c.max_train_examples) == \
        ("runs/f", "/data/mnist", "runs/old", 1000)
    # The sections name the same values.
    d = c.to_dict()
    assert (d["acts"]["skip_last"], d["data"]["dir"], d["run"]["init_from"]) == \
        (True, "/data/mnist", "runs/f")


def test_an_old_flat_file_with_a_string_boolean_is_refused_too(tmp_path):
    with pytest.raises(ValueError, match="augment must be true or false"):
        config_from_file(_write(tmp_path, {**OLD_FLAT, "augment": "no"}))


def test_a_partial_flat_file_is_refused_without_a_recipe_and_completed_with_one(tmp_path):
    path = _write(tmp_path, {"lr": 0.01, "epochs": 5})
    with pytest.raises(ValueError, match="missing field"):
        config_from_file(path)
    recipe = TrainConfig(dataset="mnist", optimizer="adam", lr=1e-3, workdir="runs/r")
    got = config_from_file(path, defaults=recipe)
    assert got.flat() == {**recipe.flat(), "lr": 0.01, "epochs": 5}
