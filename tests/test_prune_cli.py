"""``experiments.prune`` end to end on a tiny image folder, impossible budgets, and the trainer's
``widths`` (a thin network is an ordinary run: trains, resumes, evaluates, starts from a
variables file)."""

from __future__ import annotations
from symog_jax.training.config import config_from_file

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from symog_jax.methods import RunInfo, make_method
from symog_jax.pruning import architecture, complexity
from symog_jax.training import TrainConfig, train
from symog_jax.training import evaluate_run, load_variables, restore_run
from tests.test_training import _write_image_folder, synthetic_digits

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset():
    return synthetic_digits()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, dataset):
    root = tmp_path_factory.mktemp("quads")
    _write_image_folder(root, dataset, n_train=128, n_test=64)
    return root


def _flags(folder, workdir):
    return ["--dataset", "quads", "--data-source", "folder", "--data-dir", str(folder),
            "--model", "lenet5", "--width", "0.25", "--batch-size", "16", "--optimizer", "adam",
            "--lr", "3e-3", "--weight-decay", "0", "--no-progress", "--workdir", str(workdir)]


@pytest.mark.e2e
def test_prune_cli_end_to_end_and_resume(tmp_path, folder, capsys):
    from experiments.prune import main
    work = tmp_path / "p"
    argv = _flags(folder, work) + ["--prune-macs", "0.5", "--epochs", "1",
                                   "--finetune-epochs", "1", "--gate-lr", "0.1"]
    assert main(argv) == 0
    report = json.loads((work / "prune_report.json").read_text())
    assert (work / "kept_channels.png").stat().st_size > 1000
    # the exact counts of the thin network, within 1 point above the requested rate
    assert 0.5 <= report["achieved"]["prune_macs"] <= 0.51
    widths = tuple(report["thin"]["widths"])
    arch = architecture("lenet5", 4, (28, 28, 1), widths=widths)
    assert complexity(arch, widths) == (report["thin"]["params"], report["thin"]["macs"])
    assert report["thin"]["params_counted"] == report["thin"]["params"]
    assert report["thin"]["macs_traced"] == report["thin"]["macs"]    # the thin Flax model
    assert [v["kept"] for v in report["kept_channels"].values()] == list(widths)
    assert [v["total"] for v in report["kept_channels"].values()] == [8, 16, 128]
    for stage in ("before_pruning", "gated", "after_removal", "after_finetune"):
        assert 0.0 <= report["errors"][stage]["float"] <= 1.0, stage
    # stage A's log has the method's epoch metrics: the kept fractions the budget loss sees
    logged = json.loads((work / "prune" / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0.0 < logged["macs_kept"] <= 1.0 and 0.0 < logged["params_kept"] <= 1.0
    assert 0.0 < logged["gates_open"] <= 1.0
    if report["selection_is_gates"]:     # removal is exact: the gated network's error
        assert report["errors"]["after_removal"]["float"] == report["errors"]["gated"]["float"]
    # the fine-tuned thin network is an ordinary run: loadable by name plus widths
    ft = work / report["stages"]["finetune"]      # stored relative to the report's directory
    config, built, state, _ = restore_run(ft, _quads(folder))
    assert config.widths == widths and built.model.channel_widths() == widths
    thin = load_variables(work / "thin" / "variables.msgpack")
    assert thin["params"]["fc1"]["kernel"].shape == (4 * 4 * widths[1], widths[2])
    # ... and exportable: the manifest names its widths, the codes have the thin shapes
    from symog_jax.export import load_integer
    from symog_jax.pipelines import export_run
    manifest, run = export_run(ft, tmp_path / "thin.npz", dataset=_quads(folder))
    assert manifest["model"]["widths"] == list(widths)
    net = load_integer(tmp_path / "thin.npz")
    assert net.model["widths"] == list(widths)
    assert net.hq.params["fc1"]["kernel"].shape == (4 * 4 * widths[1], widths[2])
    assert run["model"].channel_widths() == widths
    # again: every stage is reused, nothing retrained
    mtime = (ft / "report.json").stat().st_mtime
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("finished run reused") == 2 and (ft / "report.json").stat().st_mtime == mtime
    assert json.loads((work / "prune_report.json").read_text())["errors"] == report["errors"]


def _quads(folder):
    from symog_jax.data import load_dataset
    return load_dataset("quads", source="folder", data_dir=str(folder))


@pytest.mark.e2e
def test_l1_selection_runs_and_keeps_the_same_rate_everywhere(tmp_path, dataset):
    from symog_jax.pipelines.prune import prune
    base = TrainConfig(dataset="synthetic", model="lenet5", method="float", epochs=1,
                       batch_size=32, optimizer="adam", lr=3e-3, weight_decay=0.0, width=0.25,
                       workdir=str(tmp_path), progress=False)
    report = prune(base, dataset, prune_macs=0.6, epochs=1, finetune_epochs=0,
                   selection="l1", plots=False)
    fractions = [v["kept"] / v["total"] for v in report["kept_channels"].values()]
    assert max(fractions) - min(fractions) <= 1 / 8 + 1e-9        # one channel of the smallest
    assert report["achieved"]["prune_macs"] >= 0.6
    assert report["errors"]["after_finetune"]["float"] is None
    assert report["errors"]["gated"]["float"] is None


def test_impossible_budget_is_a_one_line_error_before_training(tmp_path, folder):
    env = dict(os.environ, PYTHONPATH=str(ROOT), SYMOG_JAX_CACHE=str(tmp_path / "cache"))
    res = subprocess.run([sys.executable, "-m", "experiments.prune",
                          *_flags(folder, tmp_path / "w"), "--prune-macs", "0.99999"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "out of reach for lenet5" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "w" / "prune").exists()          # nothing trained


@pytest.mark.parametrize("flags, message", [
    (["--prune-macs", "1.0"], "prune_macs must be in (0, 1)"),
    (["--prune-params", "0.9999"], "prune_params=0.9999 is out of reach"),
    ([], "give --prune-macs and/or --prune-params"),
    (["--prune-macs", "0.5", "--method", "hfp"], "not hfp"),
    (["--prune-macs", "0.5", "--inner-method", "ste"], "--inner-method is set by this command"),
])
def test_bad_budgets_and_flags_are_one_line_errors(tmp_path, folder, capsys, flags, message):
    from experiments.prune import main
    assert main(_flags(folder, tmp_path / "w") + flags) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "w" / "prune").exists()


@pytest.mark.e2e
def test_widths_train_resume_and_evaluate(tmp_path, dataset):
    cfg = TrainConfig(dataset="synthetic", model="lenet5", method="ste",
                      method_config={"bits": 2}, epochs=2, batch_size=32, optimizer="adam",
                      lr=3e-3, weight_decay=0.0, widths=[3, 5, 7], workdir=str(tmp_path),
                      progress=False, stop_after_epochs=1)
    assert cfg.widths == (3, 5, 7)
    train(cfg, dataset=dataset)
    saved = config_from_file(tmp_path / "config.json").flat()
    assert list(saved["widths"]) == [3, 5, 7]
    report = train(cfg.replace(stop_after_epochs=None), dataset=dataset, resume=True)
    assert report["num_params"] == complexity(
        architecture("lenet5", 4, (28, 28, 1), widths=(3, 5, 7)), (3, 5, 7))[0]
    result = evaluate_run(tmp_path, dataset)
    assert result["test_error_quantized"] == report["test_error_quantized"]
    with pytest.raises(ValueError, match="cannot resume.*widths"):
        train(cfg.replace(widths=(3, 5, 8), stop_after_epochs=None), dataset=dataset,
              resume=True)


def test_widths_config_and_flag_errors():
    with pytest.raises(ValueError, match="LeNet5 widths must have 3 entries") as e:
        TrainConfig(model="lenet5", widths=(4, 8))
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="comma-separated"):
        TrainConfig(model="lenet5", widths="4,x,8")
    from experiments import mnist
    from experiments.cli import build_parser, config_from_args
    args = build_parser("d", mnist.DEFAULTS, "").parse_args(["--widths", "4,8,16"])
    assert config_from_args(args, mnist.DEFAULTS).widths == (4, 8, 16)
    with pytest.raises(SystemExit):
        build_parser("d", mnist.DEFAULTS, "").parse_args(["--widths", "4,,x"])


def test_hfp_takes_the_architecture_from_the_run():
    run = RunInfo(steps_per_epoch=1, epochs=1, model="lenet5", input_shape=(28, 28, 1))
    method = make_method("hfp", {"prune_macs": 0.5}, run)
    assert (method.arch_name, method.input_shape) == ("lenet5", (28, 28, 1))
    with pytest.raises(ValueError, match="is not the run's model"):
        make_method("hfp", {"arch": "vgg7", "prune_macs": 0.5}, run)
    from symog_jax.models import create_model, init_variables
    params = init_variables(create_model("lenet5", 10, width=0.125), 0, (28, 28, 1))["params"]
    with pytest.raises(ValueError, match="hfp needs the architecture"):
        make_method("hfp", {"prune_macs": 0.5}).init_variables(params)
    assert np.isclose(float(method.relative_complexity(
        {"params": params, "method": method.init_variables(params)})[1]), 1.0)
