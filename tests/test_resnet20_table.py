"""``benchmarks/resnet20_table.py``: every row's command is a valid experiments.cifar command
that gives the run the table promises (parsed up to the work function), and ``--smoke`` runs
end to end on a tiny CIFAR-10 archive in the original format (e2e tier)."""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
from pathlib import Path

import jax
import pytest

import experiments.cifar as cifar
from symog_jax.pipelines import cli
from symog_jax.pipelines.recipes import load_recipe

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "resnet20_table.py"


def _load():
    spec = importlib.util.spec_from_file_location("resnet20_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


table = _load()


def _parse(monkeypatch, argv: list[str]):
    """The configs ``python -m experiments.cifar ARGV`` would train (nothing is trained)."""
    got = []
    monkeypatch.setattr(cli, "train_stages", lambda stages, **kw: got.append(stages))
    rc = cli.main("d", cifar.RECIPE, "", argv, recipe_name=str(cifar.RECIPE))
    assert rc == 0, argv
    return [config for _, config in got[-1]]


def test_symog_recipe_row_is_the_recipe_stage():
    recipe = load_recipe(cifar.RECIPE)
    stage = {"name": "symog", "placement": "decoupled", **dict(recipe.method)}  # its default
    assert stage == {"name": "symog", **table.SYMOG_RECIPE}
    assert table.FINE_TUNE_LR == cifar.FINE_TUNE_LR
    assert table.FLOAT_LR == recipe.optim.lr


@pytest.mark.e2e
def test_every_row_command_parses_to_the_promised_run(monkeypatch, tmp_path):
    args = table.parse_args(["--settings", *table.SETTINGS, "--rows", *table.ROWS,
                             "--seeds", "1", "--runs-dir", str(tmp_path / "runs")])
    runs = table.plan(args)
    names = [r[0] for r in runs]
    assert len(names) == len(set(names))
    # start, float, the rest; a progressive setting runs two stages per row
    per_seed = 1 + 1 + (len(table.ROWS) - 1) * (len(table.SETTINGS) + len(table.PROGRESSIVE))
    assert len(runs) == per_seed
    for name, row, setting, seed, argv, workdir in runs:
        if setting in table.PROGRESSIVE:
            continue                    # test_a_progressive_row_trains_two_stages
        (config,) = _parse(monkeypatch, argv)
        assert (config.model, config.width, config.seed) == ("resnet20", 1.0, seed), name
        assert config.max_train_examples == 10000 and config.workdir == str(workdir)
        if row == "float-start":
            assert (config.method, config.epochs, config.lr) == ("float", 15, 0.05)
            assert config.init_from is None and config.distill.teacher is None
            continue
        float_dir = str(tmp_path / "runs" / f"float-start-s{seed}")
        assert (config.epochs, config.lr, config.init_from) == (3, 0.02, float_dir), name
        method, fields, taught = table.ROWS[row]
        assert config.method == method and taught == row.endswith(
            ("-taught", "symog-recipe")), name
        assert config.distill.teacher == (float_dir if taught else None), name
        mc = config.method_config
        for key, value in fields.items():
            assert getattr(mc, key) == value, (name, key)
        if method == "float":
            assert config.acts.bits is None
            continue
        assert mc.float_first_last, name
        act = table.SETTINGS[setting]
        if not act:
            assert config.acts.bits is None, name
        else:
            assert (config.acts.bits, config.acts.range) == (int(act[1]), act[3]), name
            assert config.acts.skip_last, name


def test_published_and_recipe_symog_differ_as_the_issue_asks(monkeypatch, tmp_path):
    args = table.parse_args(["--settings", "w2", "--rows", "symog-published", "symog-recipe",
                             "--runs-dir", str(tmp_path)])
    configs = {row: _parse(monkeypatch, argv)[0] for _, row, _, _, argv, _ in table.plan(args)}
    published, recipe = configs["symog-published"], configs["symog-recipe"]
    assert published.method_config.forward == "float" and published.distill.teacher is None
    assert recipe.method_config.forward == "quantized" and recipe.distill.teacher is not None


def test_smoke_budget_and_dry_run(capsys):
    args = table.parse_args(["--smoke", "--epochs", "2"])
    assert (args.width, args.float_epochs, args.epochs, args.max_train_examples,
            args.seeds) == (0.125, 1, 2, 1000, [0])
    assert len(args.rows) == 3
    assert table.main(["--smoke", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "6 runs, 6 epochs in all" in out


def test_docstring_commands_parse():
    text = table.__doc__.replace("\\\n", " ")
    commands = [shlex.split(line.strip())[2:] for line in text.splitlines()
                if line.strip().startswith("python benchmarks/resnet20_table.py")]
    # the CPU budget, the pilot's, the pilot's with 6 and with 12 epochs, the GPU's
    assert len(commands) == 5
    for argv in commands:
        args = table.parse_args(argv)
        assert args.width == 1.0 and args.seeds == [0, 1]
        assert len(args.rows) == (6 if args.epochs == 12 else 13)
    assert table.parse_args(commands[1]).settings == ["w2"]
    assert table.parse_args(commands[2]).epochs == 6
    twelve = table.parse_args(commands[3])
    assert (twelve.epochs, twelve.eval_every) == (12, 6)
    assert not any(table.ROWS[row][2] for row in twelve.rows)       # no teacher
    gpu = table.parse_args(commands[4])
    assert gpu.float_epochs >= 160 and gpu.max_train_examples == 0


def test_tables_compare_learned_and_calibrated_ranges():
    args = table.parse_args(["--rows", "float", "lsq", "--seeds", "0", "1"])
    rows = {}
    for s in (0, 1):
        rows[f"float-start-s{s}"] = {"error": 0.1}
        rows[f"float-s{s}"] = {"error": 0.09}
        for setting, err, rng in (("w2", 0.12, None), ("w2a2", 0.2, 1.0),
                                  ("w2a2-pact", 0.18 + 0.02 * s, 2.0)):
            rows[f"{setting}/lsq-s{s}"] = {"error": err, "act_ranges": {"a": rng}}
    text = table.tables(rows, args)
    assert "| lsq | 19.00 % | 18.00 / 20.00 | 1.00 |" in text
    assert "| lsq | 20.00 % | 19.00 % | -1.00 | 2.00 |" in text
    assert text.count("| float | 9.00 % |") == 3


@pytest.mark.e2e
def test_smoke_runs_end_to_end(tmp_path):
    from tests.test_data import write_cifar_original
    import subprocess
    data = tmp_path / "cifar-10-python.tar.gz"
    write_cifar_original(data, n=40)
    out = tmp_path / "rows.jsonl"
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--data-dir", str(data), "--rows", "float",
           "lsq-pow2", "--settings", "w2a2-pact", "--out", str(out),
           "--runs-dir", str(tmp_path / "runs")]
    printed = subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True).stdout
    # one progress line per run, the table's time left estimated from the 2nd run on
    assert "[1/3] float-start-s0 (1 epochs); table: time left known after the first run" \
        in printed
    assert "[3/3] w2a2-pact/lsq-pow2-s0 (1 epochs); table: ~" in printed
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["name"] for r in rows] == ["float-start-s0", "float-s0", "w2a2-pact/lsq-pow2-s0"]
    assert all(0 <= r["error"] <= 1 and r["seconds"] > 0 and r["cpus"] for r in rows)
    assert all(0 <= r["train_error_last_epoch"] <= 1 for r in rows)
    # every row says which data and which machine made it
    assert len({r["data_sha256"] for r in rows}) == 1 and len(rows[0]["data_sha256"]) == 64
    assert all(r["environment"]["packages"]["jax"] == jax.__version__ for r in rows)
    assert rows[-1]["act_ranges"] and rows[-1]["method"] == "lsq"
    assert "--init-from" in rows[-1]["run_command"]
    assert (tmp_path / "rows-table.md").exists()
    # --skip-done runs nothing again
    before = out.read_text()
    subprocess.run(cmd + ["--skip-done"], check=True, cwd=ROOT)
    assert out.read_text() == before


def test_act_range_lr_goes_to_the_learned_range_rows_only():
    args = table.parse_args(["--rows", "ste", "--settings", "w2", "w2a2", "w2a2-pact",
                             "--seeds", "0", "--act-range-lr", "0.03"])
    commands = {name: cmd for name, _, _, _, cmd, _ in table.plan(args)}
    pact = commands["w2a2-pact/ste-s0"]
    assert pact[pact.index("--act-range-lr") + 1] == "0.03"
    assert "--act-range-lr" not in commands["w2a2/ste-s0"]
    assert "--act-range-lr" not in commands["w2/ste-s0"]


def test_default_rows_are_the_issue_table_and_extra_rows_run_when_named(monkeypatch, tmp_path):
    assert len(table.parse_args([]).rows) == 13
    assert not set(table.EXTRA_ROWS) & set(table.parse_args([]).rows)
    args = table.parse_args(["--settings", "w2", "--rows", "ste-channel", "--seeds", "0",
                             "--runs-dir", str(tmp_path)])
    (*_, argv, _), = [r for r in table.plan(args) if r[1] == "ste-channel"]
    (config,) = _parse(monkeypatch, argv)
    assert config.method == "ste" and config.method_config.per_channel
    assert config.distill.teacher is None


def test_tables_say_how_far_each_row_is_behind_the_float_row_of_its_seed():
    args = table.parse_args(["--rows", "float", "ste", "--settings", "w2", "--seeds", "0", "1"])
    rows = {"float-s0": {"error": 0.40, "train_error_last_epoch": 0.3},
            "float-s1": {"error": 0.38, "train_error_last_epoch": 0.25},
            "w2/ste-s0": {"error": 0.41}, "w2/ste-s1": {"error": 0.395}}
    lines = table.tables(rows, args).splitlines()
    (ste,) = [line for line in lines if line.startswith("| ste |")]
    assert ste == "| ste | 40.25 % | 41.00 / 39.50 | 0.75 | +1.25 |  |"   # (1 + 1.5) / 2
    (flt,) = [line for line in lines if line.startswith("| float |")]
    assert flt.endswith("| 1.00 |  | 30.00 / 25.00 |")      # rows without it: empty
    del rows["float-s1"]                  # only the seeds that have both count
    (ste,) = [line for line in table.tables(rows, args).splitlines() if line.startswith("| ste")]
    assert ste.endswith("| +1.00 |  |")


def test_teacher_float_row_teaches_with_the_float_row_of_the_same_seed(monkeypatch, tmp_path):
    args = table.parse_args(["--settings", "w2", "--rows", "float", "ste-taught", "ste",
                             "--seeds", "1", "--teacher", "float-row",
                             "--runs-dir", str(tmp_path)])
    configs = {row: _parse(monkeypatch, argv)[0] for _, row, _, _, argv, _ in table.plan(args)}
    assert configs["ste-taught"].distill.teacher == str(tmp_path / "float-s1")
    assert configs["ste-taught"].init_from == str(tmp_path / "float-start-s1")
    assert configs["ste"].distill.teacher is None
    with pytest.raises(SystemExit):
        table.parse_args(["--rows", "ste-taught", "--teacher", "float-row"])


def test_docstring_examples_run():
    import doctest
    failed, attempted = doctest.testmod(table, verbose=False)
    assert attempted >= 5 and failed == 0


@pytest.mark.parametrize("rates,epochs,expected", [
    ([60.0], 10, "~10 min left for 10 more epochs"),     # 60 s/epoch x 10 = 10 min
    ([20.0, 40.0, 90.0], 6, "~5 min left for 6 more epochs"),   # mean 50 s x 6 = 300 s
    ([], 3, "time left known after the first run"),
    ([5.0], 0, "nothing left"),
])
def test_time_left_is_the_mean_rate_times_the_epochs_left(rates, epochs, expected):
    assert table.time_left(rates, epochs) == expected


def test_a_fine_tuning_rate_names_its_runs_and_its_teacher(tmp_path):
    base = ["--settings", "w2a2", "--rows", "float", "ste-taught", "--seeds", "0",
            "--teacher", "float-row", "--runs-dir", str(tmp_path)]
    default = {r[0]: r for r in table.plan(table.parse_args(base))}
    tuned = {r[0]: r for r in table.plan(table.parse_args(base + ["--fine-tune-lr", "0.05"]))}
    assert set(default) == {"float-start-s0", "float-s0", "w2a2/ste-taught-s0"}
    # one float start for both rates; the rows after it carry the rate in their names
    assert set(tuned) == {"float-start-s0", "float-lr0.05-s0", "w2a2/ste-taught-lr0.05-s0"}
    argv = tuned["w2a2/ste-taught-lr0.05-s0"][4]
    assert argv[argv.index("--distill-from") + 1] == str(tmp_path / "float-lr0.05-s0")
    assert argv[argv.index("--init-from") + 1] == str(tmp_path / "float-start-s0")
    assert argv[argv.index("--lr") + 1] == "0.05"
    started = {r[0] for r in table.plan(table.parse_args(base + ["--float-lr", "0.1"]))}
    assert started == {"float-start-flr0.1-s0", "float-flr0.1-s0", "w2a2/ste-taught-flr0.1-s0"}


def test_tables_compare_rows_with_the_float_row_of_their_rate():
    args = table.parse_args(["--settings", "w2a2", "--rows", "float", "ste", "--seeds", "0",
                             "--fine-tune-lr", "0.05"])
    rows = {"float-start-s0": {"error": 0.5}, "float-s0": {"error": 0.40},
            "float-lr0.05-s0": {"error": 0.30}, "w2a2/ste-lr0.05-s0": {"error": 0.35},
            "w2a2/ste-s0": {"error": 0.99}}
    text = table.tables(rows, args)
    assert "| ste | 35.00 % | 35.00 | 0.00 | +5.00 |" in text
    assert "| float | 30.00 % |" in text and "99.00" not in text and "40.00" not in text


@pytest.mark.parametrize("flag", ["--fine-tune-lr", "--float-lr"])
def test_a_rate_that_is_not_positive_is_refused(flag, capsys):
    with pytest.raises(SystemExit):
        table.parse_args([flag, "0"])
    assert "must be" in capsys.readouterr().err


def test_a_progressive_row_trains_two_stages(monkeypatch, tmp_path):
    args = table.parse_args(["--settings", "w2a2-progressive", "--rows", "float", "ste-taught",
                             "--seeds", "0", "--epochs", "5", "--teacher", "float-row",
                             "--fine-tune-lr", "0.05", "--runs-dir", str(tmp_path)])
    runs = {r[0]: r for r in table.plan(args)}
    first_name = "w2a2-progressive/ste-taught-stage1-lr0.05-s0"
    assert list(runs) == ["float-start-s0", "float-lr0.05-s0", first_name,
                          "w2a2-progressive/ste-taught-lr0.05-s0"]
    (first,) = _parse(monkeypatch, runs[first_name][4])
    (second,) = _parse(monkeypatch, runs["w2a2-progressive/ste-taught-lr0.05-s0"][4])
    # the first 5 // 2 = 2 epochs at 4-bit activations from the float start, the other 3 at
    # 2 bits from the first stage; one teacher, one rate
    assert (first.epochs, first.acts.bits, first.init_from) == (
        2, 4, str(tmp_path / "float-start-s0"))
    assert (second.epochs, second.acts.bits, second.init_from) == (
        3, 2, str(tmp_path / first_name))
    for config in (first, second):
        assert config.method == "ste" and config.lr == 0.05
        assert config.acts.range == "calibrated" and config.acts.skip_last
        assert config.distill.teacher == str(tmp_path / "float-lr0.05-s0")
    rows = {"float-start-s0": {"error": 0.5}, "float-lr0.05-s0": {"error": 0.30},
            first_name: {"error": 0.40},
            "w2a2-progressive/ste-taught-lr0.05-s0": {"error": 0.33}}
    (line,) = [x for x in table.tables(rows, args).splitlines() if x.startswith("| ste-taught")]
    assert line.startswith("| ste-taught | 33.00 % |") and "| +3.00 |" in line


def test_a_progressive_setting_needs_two_epochs(capsys):
    with pytest.raises(SystemExit):
        table.parse_args(["--settings", "w2a2-progressive", "--epochs", "1"])
    assert "--epochs must be >= 2" in capsys.readouterr().err
