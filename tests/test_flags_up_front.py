"""Every numeric flag is validated while the command line is parsed (issue 32).

Each bad value must end the command with argparse's one-line error naming the flag and exit
code 2, before any data is loaded or anything is trained: the work functions are replaced by
ones that fail the test if they are reached. In-process (``main(argv)``), no subprocesses.
"""

from __future__ import annotations

import pytest

import experiments.allocate_bits as allocate_cli
import experiments.evaluate as evaluate_cli
import experiments.export as export_cli
import experiments.plots as plots_cli
import experiments.prune as prune_cli
import symog_jax.pipelines.cli as train_cli
from symog_jax.export.integer_inference import check_program_settings


def _no_work(*args, **kwargs):
    raise AssertionError("work started although a flag was bad")


@pytest.fixture(autouse=True)
def no_work(monkeypatch):
    monkeypatch.setattr(allocate_cli, "run", _no_work)
    monkeypatch.setattr(export_cli, "export_run", _no_work)
    monkeypatch.setattr(prune_cli, "load_dataset", _no_work)
    monkeypatch.setattr(prune_cli, "prune", _no_work)
    monkeypatch.setattr(evaluate_cli, "evaluate_run", _no_work)
    monkeypatch.setattr(train_cli, "train_stages", _no_work)


def _mnist_main(argv):
    from experiments.mnist import EXPECTATIONS, RECIPE
    return train_cli.main("mnist", RECIPE, EXPECTATIONS, argv=argv, prog="mnist")


CASES = [
    # (name, main, argv, the flag, the refused value)
    ("allocate tolerance nan", allocate_cli.main, ["--tolerance", "nan"], "--tolerance", "nan"),
    ("allocate tolerance -1", allocate_cli.main, ["--tolerance", "-1"], "--tolerance", "-1"),
    ("allocate finetune-epochs -1", allocate_cli.main, ["--finetune-epochs", "-1"],
     "--finetune-epochs", "-1"),
    ("allocate finetune-lr inf", allocate_cli.main, ["--finetune-lr", "inf"], "--finetune-lr",
     "inf"),
    ("allocate budgets nan", allocate_cli.main, ["--budgets", "2", "nan"], "--budgets", "nan"),
    ("allocate calibration-size 0", allocate_cli.main, ["--calibration-size", "0"],
     "--calibration-size", "0"),
    ("allocate min-bits 0", allocate_cli.main, ["--min-bits", "0"], "--min-bits", "0"),
    ("allocate act-cost-weight 0", allocate_cli.main, ["--act-cost-weight", "0"],
     "--act-cost-weight", "0"),
    ("allocate float-epochs 0", allocate_cli.main, ["--float-epochs", "0"], "--float-epochs",
     "0"),
    ("export limit -5", export_cli.main, ["--limit", "-5"], "--limit", "-5"),
    ("export limit 0", export_cli.main, ["--limit", "0"], "--limit", "0"),
    ("export fine-frac-bits 60", export_cli.main, ["--fine-frac-bits", "60"],
     "--fine-frac-bits", "60"),
    ("export fine-frac-bits -1", export_cli.main, ["--fine-frac-bits", "-1"],
     "--fine-frac-bits", "-1"),
    ("export fine-bits 0", export_cli.main, ["--fine-bits", "0"], "--fine-bits", "0"),
    ("export fine-bits 57", export_cli.main, ["--fine-bits", "57"], "--fine-bits", "57"),
    ("export mult-bits 63", export_cli.main, ["--mult-bits", "63"], "--mult-bits", "63"),
    ("prune finetune-lr nan", prune_cli.main, ["--finetune-lr", "nan"], "--finetune-lr", "nan"),
    ("prune finetune-epochs -1", prune_cli.main, ["--finetune-epochs", "-1"],
     "--finetune-epochs", "-1"),
    ("evaluate recalibrate-bn -1", evaluate_cli.main, ["--recalibrate-bn", "-1"],
     "--recalibrate-bn", "-1"),
    ("plots dpi 0", plots_cli.main, ["--dpi", "0"], "--dpi", "0"),
    ("train float-start-epochs -1", _mnist_main, ["--float-start-epochs", "-1"],
     "--float-start-epochs", "-1"),
    ("train fine-tune-lr nan", _mnist_main, ["--fine-tune-lr", "nan"], "--fine-tune-lr", "nan"),
    ("train lr nan", _mnist_main, ["--lr", "nan"], "--lr", "nan"),
]


@pytest.mark.parametrize("name,main,argv,flag,value", CASES, ids=[c[0] for c in CASES])
def test_bad_flag_is_refused_before_any_work(name, main, argv, flag, value, tmp_path, capsys):
    needs = {allocate_cli.main: ["--workdir", str(tmp_path)],
             export_cli.main: ["--workdir", str(tmp_path)],
             evaluate_cli.main: ["--workdir", str(tmp_path)],
             plots_cli.main: ["--workdir", str(tmp_path)],
             prune_cli.main: ["--dataset", "mnist", "--prune-macs", "0.5",
                              "--workdir", str(tmp_path / "p")],
             _mnist_main: ["--workdir", str(tmp_path / "t")]}[main]
    with pytest.raises(SystemExit) as e:
        main(needs + argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(tuple(f"{p}: error: argument {flag}" for p in ("mnist", ""))) or (
        f"error: argument {flag}" in err), err
    assert repr(value) in err or value in err, err


def test_good_values_still_parse(tmp_path, monkeypatch):
    seen = {}

    def reached(*a, **k):
        seen.update(k)
        raise ValueError("stop here")

    monkeypatch.setattr(export_cli, "export_run", reached)
    assert export_cli.main(["--workdir", str(tmp_path), "--fine-frac-bits", "36",
                            "--fine-bits", "48", "--mult-bits", "46"]) == 2   # reaches the work
    assert (seen["fine_frac_bits"], seen["fine_bits"], seen["mult_bits"]) == (36, 48, 46)


def test_export_refuses_a_fine_step_without_integer_bits_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        export_cli.main(["--workdir", str(tmp_path), "--fine-frac-bits", "30"])
    assert e.value.code == 2
    assert "fine_frac_bits must be in 0..29" in capsys.readouterr().err


def test_library_export_refuses_the_same_settings():
    for frac, bits, mult, field in ((40, 31, 31, "fine_frac_bits"), (20, 1, 31, "fine_bits"),
                                    (-1, 31, 31, "fine_frac_bits"), (0, 57, 31, "fine_bits"),
                                    (20, 31, 63, "mult_bits"), (20.0, 31, 31, "fine_frac_bits")):
        with pytest.raises(ValueError, match=field):
            check_program_settings(frac, bits, mult)
    check_program_settings(20, 31, 31)
    check_program_settings(36, 48, 46)


def test_a_later_stage_the_model_refuses_fails_before_the_first_stage_trains(
        tmp_path, monkeypatch):
    """GDRQ with ``groups=3`` on LeNet5 x0.125 (4 channels in conv1): the float start would
    train first and the GDRQ stage fail after it; the recipe now refuses before any stage."""
    from symog_jax.pipelines import recipes
    from symog_jax.training import TrainConfig
    from tests.test_training import synthetic_digits

    monkeypatch.setattr(recipes, "train_run", _no_work)
    data = synthetic_digits(n_train=32, n_test=16)
    common = dict(dataset="synthetic", model="lenet5", width=0.125, epochs=1, progress=False)
    stages = [("float-start", TrainConfig(method="float", workdir=str(tmp_path / "f"), **common)),
              ("gdrq", TrainConfig(method="gdrq", method_config={"bits": 2, "groups": 3},
                                   workdir=str(tmp_path / "q"), **common))]
    with pytest.raises(ValueError, match=r"^gdrq: layer conv1 has 4 output channels, which "
                                         r"groups=3 does not divide"):
        recipes.train_stages(stages, dataset=data)
    assert not (tmp_path / "f").exists()


@pytest.mark.e2e
def test_resuming_a_recipe_into_a_run_of_another_config_fails_before_the_first_stage(tmp_path):
    """The last stage's workdir holds a run trained with another learning rate: resuming the
    two-stage recipe there used to train the float stage first and refuse after it."""
    from symog_jax.pipelines import recipes
    from symog_jax.training import TrainConfig, train
    from tests.test_training import synthetic_digits

    data = synthetic_digits(n_train=64, n_test=16)
    common = dict(dataset="synthetic", model="lenet5", width=0.125, epochs=1, batch_size=32,
                  progress=False)
    final = tmp_path / "run"
    train(TrainConfig(method="ste", lr=0.1, workdir=str(final), **common), dataset=data)
    stages = [("float-start", TrainConfig(method="float", workdir=str(final / "float-start"),
                                          **common)),
              ("ste", TrainConfig(method="ste", lr=0.05, workdir=str(final), **common))]
    with pytest.raises(ValueError, match=r"cannot resume: the run was started with a different "
                                         r"config \(lr: checkpoint 0\.1 vs now 0\.05\)"):
        recipes.train_stages(stages, dataset=data, resume=True)
    with pytest.raises(FileExistsError, match="already holds checkpoints; pass --resume"):
        recipes.train_stages(stages, dataset=data, resume=False)
    assert not (final / "float-start").exists()
