"""Recipes (experiments/recipes/*.py): they load, validate and round-trip; the command line's
short flags and dotted overrides set exactly the fields they name; a partial --config gets the
recipe's values. Fast (nothing trains) except the one e2e test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import ml_collections
import pytest

import symog_jax.pipelines.cli as cli
from symog_jax.pipelines.recipes import (float_stage_config, load_recipe, recipe_configs,
                                         recipe_dict)
from symog_jax.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "experiments" / "recipes").glob("*.py"))
CIFAR = ROOT / "experiments" / "recipes" / "cifar_symog.py"
MNIST = ROOT / "experiments" / "recipes" / "mnist_quickstart.py"


def test_the_five_headline_recipes_exist():
    assert {p.stem for p in RECIPES} >= {"mnist_quickstart", "cifar_symog", "cifar_study",
                                         "prune_mnist", "allocate_cifar"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_a_recipe_loads_validates_and_round_trips(path):
    recipe = load_recipe(path)
    assert isinstance(recipe, ml_collections.ConfigDict)
    configs = recipe_configs(recipe, str(path))
    again = recipe_configs(ml_collections.ConfigDict(json.loads(json.dumps(recipe_dict(recipe)))))
    assert again == configs
    for _, config in configs:
        assert TrainConfig.from_dict(json.loads(config.to_json())) == config
    docstring = path.read_text().split('"""')[1]
    assert "python -m experiments." in docstring                      # the command
    assert "CPU" in docstring or "GPU" in docstring                   # the machine
    assert "%" in docstring or "never measured" in docstring.lower()  # the result


def test_cifar_recipe_is_the_documented_two_stage_recipe():
    (n1, first), (n2, second) = recipe_configs(load_recipe(CIFAR))
    assert (n1, first.method, first.epochs, first.lr, first.init_from) == \
        ("float-start", "float", 70, 0.05, None)
    assert (second.method, second.method_config.bits, second.epochs, second.lr) == \
        ("symog", 2, 30, 0.02)
    assert second.init_from == second.distill.teacher == first.workdir
    assert first.workdir == str(Path(second.workdir) / "float-start")


def _stages_of(monkeypatch, module, argv):
    """The (name, TrainConfig) stages ``python -m experiments.<module> argv`` would train."""
    calls = []
    monkeypatch.setattr(cli, "train_stages", lambda stages, **kw: calls.append(stages))
    mod = __import__(f"experiments.{module}", fromlist=["RECIPE"])
    rc = cli.main("d", mod.RECIPE, "", argv,
                  recipe_name=str(mod.RECIPE))
    return rc, (calls[-1] if calls else None)


def test_the_short_form_trains_the_recipe_as_the_former_cli_did(monkeypatch):
    rc, stages = _stages_of(monkeypatch, "cifar", ["--bits", "2"])
    assert rc == 0 and stages == recipe_configs(load_recipe(CIFAR))
    # The former CLI: the method's config at the fine-tune lr, its float stage from
    # float_stage_config at --lr, both started from and taught by the float network.
    from experiments.cifar import DEFAULTS
    method = DEFAULTS.replace(lr=0.02, workdir="runs/cifar10-vgg7-symog-2bit-seed0")
    float_stage = float_stage_config(method, 70, float_lr=0.05)
    assert stages[0][1] == float_stage
    assert stages[1][1] == method.replace(init_from=float_stage.workdir,
                                          distill={"teacher": float_stage.workdir})


def _flat_diff(a: list, b: list) -> dict:
    out = {}
    for (_, x), (_, y) in zip(a, b):
        fx, fy = x.flat(), y.flat()
        out.update({k: (fx[k], fy[k]) for k in fx if fx[k] != fy[k]})
    return out


def test_a_dotted_override_changes_exactly_that_field(monkeypatch):
    _, plain = _stages_of(monkeypatch, "cifar", [])
    rc, bits3 = _stages_of(monkeypatch, "cifar", ["--config.method.bits=3", "--workdir", "w"])
    _, flag3 = _stages_of(monkeypatch, "cifar", ["--bits", "3", "--workdir", "w"])
    assert rc == 0 and bits3 == flag3                 # the short flag is the same field
    assert bits3[1][1].method_config.bits == 3 and bits3[0][1].method == "float"
    rc, lr = _stages_of(monkeypatch, "cifar", ["--config.optim.weight_decay", "0.001"])
    diff = _flat_diff(plain, lr)
    assert rc == 0 and diff == {"weight_decay": (5e-4, 1e-3)}
    rc, stage_lr = _stages_of(monkeypatch, "cifar", ["--config.stages.1.optim.lr=0.01"])
    assert rc == 0 and stage_lr[1][1].lr == 0.01 and stage_lr[0][1] == plain[0][1]
    assert _flat_diff(plain, stage_lr) == {"lr": (0.02, 0.01)}


@pytest.mark.parametrize("override, words", [
    ("--config.optim.lr=fast", "--config.optim.lr=fast: optim.lr must be a finite number"),
    ("--config.data.augment=no", "data.augment must be true or false"),
    ("--config.method.per_channel=0", "method.per_channel must be true or false"),
    ("--config.optim.lrate=0.1", "--config.optim.lrate: unknown field optim.lrate"),
    ("--config.method.bitz=2", "method 'symog' has no parameter 'bitz'"),
])
def test_a_type_wrong_override_is_a_one_line_error_naming_the_field(monkeypatch, capsys,
                                                                    override, words):
    rc, stages = _stages_of(monkeypatch, "cifar", [override])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and stages is None and words in err and "\n" not in err


def test_a_partial_config_file_gets_the_recipe_defaults(monkeypatch, tmp_path, capsys):
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"optim": {"batch_size": 64}, "method": {"bits": 3},
                                   "run": {"workdir": "runs/p"}}))
    rc, got = _stages_of(monkeypatch, "mnist", ["--config", str(partial)])
    assert rc == 0 and "gives 3 field(s)" in capsys.readouterr().err
    recipe = load_recipe(MNIST)
    recipe.optim.batch_size = 64
    recipe.method.bits = 3
    recipe.run.workdir = "runs/p"
    want = recipe_configs(recipe)
    assert len(got) == len(want) == 2
    for (name, g), (_, w) in zip(got, want):      # field by field, every stage
        assert g.flat() == w.flat(), name
    assert got[0][1].optimizer == "adam" and got[0][1].lr == 1e-3   # not the library's SGD


def test_a_wrong_value_in_a_config_file_is_refused_naming_field_and_file(
        monkeypatch, tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"method": {"per_channel": "false"}}))
    rc, stages = _stages_of(monkeypatch, "cifar", ["--config", str(path)])
    err = capsys.readouterr().err
    assert rc == 2 and stages is None
    assert "method.per_channel must be true or false" in err and str(path) in err


def test_a_run_config_json_is_that_run_alone(monkeypatch, tmp_path):
    run = TrainConfig(dataset="mnist", model="lenet5", method="ste", epochs=2,
                      method_config={"bits": 2}, init_from="runs/f", workdir="runs/one")
    (tmp_path / "config.json").write_text(run.to_json())
    rc, stages = _stages_of(monkeypatch, "cifar", ["--config", str(tmp_path / "config.json")])
    # A relative path in a config file is relative to the file's directory.
    assert rc == 0 and stages == [("run", run.replace(init_from=str(tmp_path / "runs" / "f")))]


@pytest.mark.e2e
def test_cifar_help_lists_what_applies():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-m", "experiments.cifar", "--help"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0
    out = res.stdout
    assert out.startswith("usage: python -m experiments.cifar")
    # hfp is one of the training methods (--method hfp --prune-macs 0.5); the architecture and
    # image shape it needs come from the run, so they are no flags here.
    assert "--arch" not in out and "--input-shape" not in out and "--prune-macs" in out
    epochs_help = out.split("\n  --epochs EPOCHS", 1)[1].split("--batch-size", 1)[0]
    assert "float epochs come first" in " ".join(epochs_help.split())
    assert "--config" in out and "(default 70)" in out


@pytest.mark.e2e
def test_rerunning_a_runs_config_json_from_another_directory_is_bit_identical(tmp_path):
    """A 1-epoch run on the bundled MNIST subset, then its config.json again elsewhere."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), SYMOG_JAX_CACHE=str(tmp_path / "cache"))
    partial = tmp_path / "tiny.json"
    partial.write_text(json.dumps({
        "stages": [], "optim": {"epochs": 1}, "model": {"width": 0.25},
        "data": {"max_train_examples": 512, "source": "bundled"},
        "method": {"warmup_epochs": 0.0},
        "run": {"workdir": str(tmp_path / "a" / "run"), "progress": False}}))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = subprocess.run([sys.executable, "-m", "experiments.mnist", "--config", str(partial)],
                           cwd=tmp_path / "a", env=env, capture_output=True, text=True,
                           timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    again = subprocess.run([sys.executable, "-m", "experiments.mnist", "--config",
                            str(tmp_path / "a" / "run" / "config.json"), "--workdir",
                            str(tmp_path / "b" / "run")],
                           cwd=tmp_path / "b", env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    a = json.loads((tmp_path / "a" / "run" / "report.json").read_text())
    b = json.loads((tmp_path / "b" / "run" / "report.json").read_text())
    keys = [k for k in a if k.startswith("test_error")]
    assert keys and all(a[k] == b[k] for k in keys), {k: (a[k], b[k]) for k in keys}


def test_a_partial_flat_config_file_gets_the_recipe_defaults_too(monkeypatch, tmp_path):
    partial = tmp_path / "old-style.json"
    partial.write_text(json.dumps({"lr": 0.01, "epochs": 5}))
    rc, got = _stages_of(monkeypatch, "mnist", ["--config", str(partial)])
    recipe = load_recipe(MNIST)
    recipe.optim.lr = 0.01
    recipe.optim.epochs = 5
    assert rc == 0 and [c.flat() for _, c in got] == [c.flat() for _, c in recipe_configs(recipe)]


def _docstring_commands(path: Path) -> list[list[str]]:
    """The ``python -m experiments.X ...`` commands of a recipe's docstring, as argv lists."""
    import ast
    import shlex
    text = ast.get_docstring(ast.parse(path.read_text())).replace("\\\n", " ")
    return [shlex.split(line.strip())[2:] for line in text.splitlines()
            if line.strip().startswith("python -m experiments.")]


def _parse_only(monkeypatch, argv: list[str]):
    """Runs the command ``argv`` (``["experiments.X", ...]``) up to its work function;
    returns ``(rc, what the work function was given)``."""
    import experiments.allocate_bits as allocate
    import experiments.prune as prune_cli
    module, args = argv[0], argv[1:]
    got = []
    monkeypatch.setattr(cli, "train_stages", lambda stages, **kw: got.append(stages))
    monkeypatch.setattr(prune_cli, "load_dataset", lambda *a, **kw: None)
    monkeypatch.setattr(prune_cli, "prune", lambda base, dataset, **kw: got.append((base, kw)))
    monkeypatch.setattr(allocate, "run", lambda a, recipe=None: got.append((a, recipe)))
    if module == "experiments.prune":
        rc = prune_cli.main(args)
    elif module == "experiments.allocate_bits":
        rc = allocate.main(args)
    else:
        mod = __import__(module, fromlist=["RECIPE"])
        rc = cli.main("d", mod.RECIPE, "", args, recipe_name=str(mod.RECIPE))
    return rc, (got[-1] if got else None)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_docstring_command_parses(monkeypatch, path):
    commands = _docstring_commands(path)
    assert commands
    monkeypatch.chdir(ROOT)                       # the commands name recipes from the root
    for argv in commands:
        rc, work = _parse_only(monkeypatch, argv)
        assert rc == 0 and work is not None, argv


def test_prune_reads_its_recipe_as_the_flags_say(monkeypatch):
    monkeypatch.chdir(ROOT)
    path = "experiments/recipes/prune_mnist.py"
    rc, (base, kw) = _parse_only(monkeypatch, ["experiments.prune", "--config", path,
                                               "--finetune-epochs", "2"])
    rc2, (flags_base, flags_kw) = _parse_only(monkeypatch, [
        "experiments.prune", "--dataset", "mnist", "--model", "lenet5", "--prune-macs", "0.6",
        "--epochs", "3", "--finetune-epochs", "2", "--optimizer", "adam", "--lr", "1e-3",
        "--weight-decay", "0", "--workdir", "runs/prune-mnist-lenet5", "--no-allow-bundled"])
    assert rc == rc2 == 0 and kw == flags_kw
    assert (kw["prune_macs"], kw["epochs"], base.method) == (0.6, 3, "float")
    assert base == flags_base
    # a dotted override and a flag on top of the file
    rc, (base, kw) = _parse_only(monkeypatch, ["experiments.prune", "--config", path,
                                               "--config.optim.lr=0.002", "--prune-macs", "0.5",
                                               "--workdir", "w"])
    assert rc == 0 and (base.lr, kw["prune_macs"], base.workdir) == (0.002, 0.5, "w")


def test_allocate_bits_takes_its_float_run_from_config(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    path = "experiments/recipes/allocate_cifar.py"
    rc, (args, recipe) = _parse_only(monkeypatch, [
        "experiments.allocate_bits", "--config", path, "--config.model.width=0.25"])
    assert rc == 0 and (args.workdir, args.float_epochs) == ("runs/float-vgg7-w0125", 8)
    assert (recipe.method, recipe.model, recipe.width) == ("float", "vgg7", 0.25)
    rc, _ = _parse_only(monkeypatch, ["experiments.allocate_bits", "--config", path,
                                      "--config.optim.lr=fast"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--config.optim.lr=fast: optim.lr must be" in err and "\n" not in err
    rc, _ = _parse_only(monkeypatch, ["experiments.allocate_bits", "--config", str(CIFAR)])
    assert rc == 2 and "trains its own stages" in capsys.readouterr().err
