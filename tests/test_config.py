"""Config files: sections, strict types with the field's dotted name and the file, partial
files on top of an experiment's recipe, the flat form of older runs. Fast: nothing trains."""

from __future__ import annotations

import json

import pytest

from symog_jax.methods.symog import SymogConfig
from symog_jax.pipelines.cli import build_parser, config_from_args
from symog_jax.quantizers.activations import ActivationQuantConfig
from symog_jax.training.config import DistillConfig, TrainConfig, config_from_file


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
    ("acts__range", "full", "acts.range must be one of"),
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
                    acts=ActivationQuantConfig(bits=4, bits_per_layer="fc1=8"),
                    distill=DistillConfig(weight=0.9), widths=None,
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
    assert (c.acts.bits, c.acts.range, c.acts.skip_last, c.acts.input_bits, c.augment) == \
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


# config.json of a run with activation and distillation settings, as written before the acts and
# distill sections were stored as their config objects (TrainConfig.to_json() of main at b9a8bd3).
SECTIONED_BEFORE = """{
  "acts": {
    "bits": 4,
    "bits_per_layer": "conv2=6,fc1=8",
    "input_bits": 8,
    "range": "unit",
    "skip_last": true
  },
  "data": {
    "allow_bundled": false,
    "augment": true,
    "dataset": "mnist",
    "dir": null,
    "max_train_examples": null,
    "source": "auto"
  },
  "distill": {
    "teacher": "runs/teacher",
    "temperature": 2.0,
    "weight": 0.3
  },
  "method": {
    "bits": 3,
    "bits_per_layer": null,
    "first_last_bits": null,
    "float_first_last": false,
    "name": "ste",
    "per_channel": false,
    "reestimate_epochs": 1
  },
  "model": {
    "name": "lenet5",
    "precision": "float32",
    "width": 1.0,
    "widths": null
  },
  "optim": {
    "batch_size": 128,
    "epochs": 2,
    "lr": 0.05,
    "momentum": 0.9,
    "optimizer": "sgd",
    "weight_decay": 0.0005
  },
  "run": {
    "distributed": false,
    "init_from": null,
    "keep_checkpoints": 3,
    "plots": false,
    "progress": true,
    "seed": 0,
    "stop_after_epochs": null,
    "workdir": "runs/x"
  }
}"""


def _with_acts_and_teacher() -> TrainConfig:
    return TrainConfig(dataset="mnist", model="lenet5", method="ste", method_config={"bits": 3},
                       epochs=2, workdir="runs/x",
                       acts=ActivationQuantConfig(bits=4, range="unit", skip_last=True,
                                                  bits_per_layer="conv2=6, fc1=8", input_bits=8),
                       distill=DistillConfig(teacher="runs/teacher", weight=0.3,
                                             temperature=2.0))


def test_config_json_with_acts_and_distill_is_byte_identical_to_the_one_written_before(tmp_path):
    c = _with_acts_and_teacher()
    # the changes since: acts.range_lr and run.eval_every (FIELDS_ADDED_LATER), which the file
    # before lacks
    assert c.to_json() == SECTIONED_BEFORE.replace(
        '"range": "unit",\n', '"range": "unit",\n    "range_lr": null,\n').replace(
        '"distributed": false,\n', '"distributed": false,\n    "eval_every": 1,\n')
    path = tmp_path / "config.json"
    path.write_text(c.to_json())
    assert TrainConfig.from_dict(json.loads(SECTIONED_BEFORE)) == c
    # Read from the file, the teacher is relative to its directory.
    assert config_from_file(path).distill.teacher == str(tmp_path / "runs/teacher")


def test_the_flat_form_keeps_the_old_names_and_reads_back():
    c = _with_acts_and_teacher()
    flat = c.flat()
    assert {k: flat[k] for k in ("act_bits", "act_range", "act_float_last", "act_bits_per_layer",
                                 "input_bits", "distill_from", "distill_weight",
                                 "distill_temperature")} == \
        {"act_bits": 4, "act_range": "unit", "act_float_last": True,
         "act_bits_per_layer": "conv2=6,fc1=8", "input_bits": 8, "distill_from": "runs/teacher",
         "distill_weight": 0.3, "distill_temperature": 2.0}
    assert "acts" not in flat and "distill" not in flat
    assert TrainConfig.from_flat(flat) == c
    assert TrainConfig.from_dict(json.loads(json.dumps(flat))) == c     # an old flat file


@pytest.mark.parametrize("name, where", [
    ("act_bits", "acts=ActivationQuantConfig(bits=...)"),
    ("act_float_last", "acts=ActivationQuantConfig(skip_last=...)"),
    ("input_bits", "acts=ActivationQuantConfig(input_bits=...)"),
    ("distill_from", "distill=DistillConfig(teacher=...)"),
    ("distill_temperature", "distill=DistillConfig(temperature=...)"),
])
def test_an_old_flat_keyword_is_refused_naming_its_new_place(name, where):
    with pytest.raises(TypeError) as e:
        TrainConfig(**{name: 4})
    assert str(e.value) == f"TrainConfig: {name} moved: use {where}"
    with pytest.raises(TypeError, match=f"{name} moved"):
        TrainConfig().replace(**{name: 4})


def test_sections_take_a_dict_and_replace_merges_one():
    c = TrainConfig(acts={"bits": 4}, distill={"teacher": "runs/f"})
    assert c.acts == ActivationQuantConfig(bits=4) and c.distill == DistillConfig(teacher="runs/f")
    d = c.replace(acts={"input_bits": 8}, distill={"teacher": None})
    assert (d.acts.bits, d.acts.input_bits, d.distill.enabled) == (4, 8, False)
    with pytest.raises(ValueError, match="unknown field acts.bitz"):
        TrainConfig(acts={"bitz": 4})
    with pytest.raises(ValueError, match="acts must be a ActivationQuantConfig"):
        TrainConfig(acts=4)
    with pytest.raises(ValueError, match="acts.skip_first must be True"):
        TrainConfig(acts=ActivationQuantConfig(skip_first=False))


@pytest.mark.parametrize("dotted, value, words", [
    ("acts__bits", 0, "acts.bits must be None or an integer in 1..16"),
    ("acts__input_bits", 1, "acts.input_bits must be None or an integer in 2..16"),
    ("acts__bits_per_layer", "fc1=0", "acts.bits_per_layer: 'fc1' has 0 bits"),
    ("distill__weight", 0, "distill.weight must be in (0, 1]"),
    ("distill__temperature", -1.0, "distill.temperature must be a finite number > 0"),
    ("distill__teacher", 3, "distill.teacher must be a string"),
])
def test_a_wrong_section_value_is_refused_naming_it_dotted(tmp_path, dotted, value, words):
    path = _write(tmp_path, _complete(**{dotted: value}))
    with pytest.raises(ValueError) as e:
        config_from_file(path)
    assert words in str(e.value) and str(path) in str(e.value)


@pytest.mark.parametrize("flags, words", [
    (["--act-bits", "0"], "act_bits must be None or an integer in 1..16, got 0"),
    (["--distill-weight", "2"], "distill_weight must be in (0, 1], got 2.0"),
    (["--input-bits", "1"], "input_bits must be None or an integer in 2..16"),
])
def test_a_wrong_section_flag_is_named_by_its_flag_name(flags, words):
    defaults = TrainConfig(dataset="mnist", model="lenet5", method="ste")
    with pytest.raises(ValueError) as e:
        config_from_args(build_parser("x", defaults, "").parse_args(flags), defaults)
    assert str(e.value) == words or str(e.value).startswith(words)


def test_the_section_flags_set_the_sections():
    defaults = TrainConfig(dataset="mnist", model="lenet5", method="ste")
    flags = ["--act-bits", "4", "--act-range", "unit", "--act-float-last", "--input-bits", "8",
             "--act-bits-per-layer", "fc1=8", "--distill-from", "runs/f", "--distill-weight",
             "0.3", "--distill-temperature", "2"]
    c = config_from_args(build_parser("x", defaults, "").parse_args(flags), defaults)
    assert c.acts == ActivationQuantConfig(bits=4, range="unit", skip_last=True, input_bits=8,
                                           bits_per_layer="fc1=8")
    assert c.distill == DistillConfig(teacher="runs/f", weight=0.3, temperature=2.0)
