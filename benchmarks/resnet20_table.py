"""CIFAR-10 ResNet-20 table (issue 31): every method from one float start on one budget.

Stage 1 trains one float network per seed for ``--float-epochs N`` epochs at peak learning rate
``--float-lr`` (``python -m experiments.cifar --method float``). Every row of every setting then
starts from it (``--init-from FLOATRUN --float-start-epochs 0``) and trains ``--epochs M`` more
epochs on the same data, with the same seed and the same cosine schedule from peak learning
rate ``--fine-tune-lr``; so every row has seen ``N + M`` epochs. Rows (the names are keys):

======================  ==========================================================================
row                     the run after the float start
======================  ==========================================================================
float                   float again for M epochs (the float reference, N + M epochs in all)
ste                     straight-through 2-bit weights, calibrated power-of-two step
lsq                     LSQ (learned step per tensor, the paper's gradient and gradient scale)
lsq-pow2                LSQ with the step kept on powers of two (``--power-of-two``, fixed point)
symog-published         SYMOG as published: float forward, the annealed mixture prior pulling
                        the float weights (1e-4 -> 0.1 per step over 90 % of the stage, as the
                        issue-10 study's ``symog-mixture``), rounded at the end, no teacher
symog-recipe            our CIFAR recipe's SYMOG stage (``experiments/recipes/cifar_symog.py``:
                        the loss on the rounded weights, the pull 1e-6 -> 0.01 released at 3/4
                        of the stage) taught by the float start
syq-ternary             SYQ ternary weights (threshold 0.05 max|W|, one learned scale per kernel
                        position)
<row>-taught            the same with the float start as teacher (``--distill-from FLOATRUN``,
                        weight 0.5, temperature 4), for ste, lsq, lsq-pow2, symog-published,
                        syq-ternary: distillation does not separate the rows (``--teacher
                        float-row``: the float row of the same seed teaches instead)
symog-recipe-untaught   the recipe without its teacher
ste-channel             not in the issue's table (``--rows`` only): STE with one power-of-two
                        step per output channel (``--per-channel``, still fixed point)
======================  ==========================================================================

Settings: ``w2`` (2-bit weights, float activations), ``w2a2`` (2-bit activations, power-of-two
step calibrated per layer on a training batch, ``--act-range calibrated``), ``w2a2-pact``
(2-bit activations with a learned PACT clip kept on a power-of-two step, ``--act-range
pact-pow2``, so the row stays fixed point; the clip trains with Adam on ``log2(alpha)``, see
``docs/methods.md``); also ``w2a2-pact-free`` (``pact``: a free clip), ``w2a2-lsq``
(``lsq-pow2``: the power-of-two clip trained with LSQ's step gradient, whose in-range rounding
term can also shrink it), ``w2a4`` / ``w2a4-pact`` (if W2A2 collapses) and
``w2a2-progressive`` (progressive quantization, as Zhuang et al., CVPR 2018, lower the
bit-width in stages: the first ``M // 2`` epochs at ``w2a4``, run
``<setting>/<row>-stage1-s<seed>``, then the other epochs at ``w2a2`` from that network, its
activation steps calibrated again; each stage restarts the cosine schedule at
``--fine-tune-lr``; the same ``M`` epochs as every row, the same teacher). The first and
last conv/dense layers keep float weights and the last layer a float input in every quantized
row, as in the field's ResNet-20 tables (TTQ, LSQ, APoT); ``--quantize-first-last`` quantizes
them too. The float row is the same in every setting.

Each finished run appends one JSON row to ``--out`` (``--skip-done`` continues a killed table):
the date, host, CPUs, the benchmark's command and the run's own, the wall time, the seed, the
final float and hard-quantized test errors (``error`` is the one that counts: float for the
float rows, hard-quantized for the others), the median training images per second, the data's
SHA-256 and the machine (library versions, CPU and its SIMD level: float results can differ in
their last bits from one CPU to another, so compare rows made on one machine) and, with quantized
activations, each layer's activation range (PACT's learned clip or the calibrated top
level ``(2**B - 1) * 2**-frac_bits``). At the end: one markdown table per setting (mean error,
per seed, half the seeds' spread) and, where both W2A2 settings ran, the learned range against
the calibrated one. Run directories go to ``--runs-dir``; a ``--fine-tune-lr`` or
``--float-lr`` other than the table's (0.02, 0.05) names the runs it makes
(``w2a2/ste-taught-lr0.05-s0``, ``float-lr0.05-s0``), so one directory holds tables at
several rates and ``--teacher float-row`` takes the float row of the same rates.

Usage on a 2-core CPU (the budget that fits: 10,000 training images, a 15-epoch float start and
3 quantizing epochs per row: 76 runs, 252 epochs. Measured at full width on 2 idle cores: about
100 training images/s for float and for LSQ W2A2 taught, about 30 s per evaluation of the 10,000
test images and 35 s of start-up per run, so about 130 s per epoch and 10 h in all; ``--settings
w2`` alone about 4 h)::

    python benchmarks/resnet20_table.py --data-dir ../shared/data/cifar10-jpeg.tar.gz \\
        --max-train-examples 10000 --float-epochs 15 --epochs 3 --seeds 0 1 \\
        --out benchmarks/results/resnet20-table-cpu.jsonl --runs-dir runs/resnet20-table-cpu \\
        --skip-done

A smaller budget that fits one 3-hour session per setting (5,000 images, an 8-epoch float start
and 2 epochs per row; ``--settings w2``: 28 runs, 68 epochs, about 85 min on 2 cores shared with
light work; this is what RESULTS.md's "ResNet-20 at the pilot budget" ran)::

    python benchmarks/resnet20_table.py --data-dir ../shared/data/cifar10-jpeg.tar.gz \
        --max-train-examples 5000 --float-epochs 8 --epochs 2 --seeds 0 1 --settings w2 \
        --out runs/resnet20-w2-5k.jsonl --runs-dir runs/resnet20-w2-5k --skip-done

Three times the quantizing epochs on the same float starts (``--epochs 6``: about 300 s per row
on 2 idle cores, ``--settings w2`` 26 runs in about 2.2 h; RESULTS.md's "ResNet-20 W2 with 6
quantizing epochs" ran 10 of its 13 rows, where STE came within 1.26 points of float)::

    python benchmarks/resnet20_table.py --data-dir ../shared/data/cifar10-jpeg.tar.gz \
        --max-train-examples 5000 --float-epochs 8 --epochs 6 --seeds 0 1 --settings w2 \
        --out runs/resnet20-w2-5k-e6.jsonl --runs-dir runs/resnet20-w2-5k-e6 --skip-done

Six times the pilot's quantizing epochs (``--epochs 12``), evaluating only after epochs 6 and
12 (``--eval-every 6``: the rows' numbers do not change, about 6.5 min per row on 2 idle cores
instead of 9; RESULTS.md's "ResNet-20 W2 with 12 quantizing epochs" ran these rows but
``symog-published``, and STE taught by the float row, ``--teacher float-row``)::

    python benchmarks/resnet20_table.py --data-dir ../shared/data/cifar10-jpeg.tar.gz \
        --max-train-examples 5000 --float-epochs 8 --epochs 12 --seeds 0 1 --settings w2 \
        --rows float ste lsq lsq-pow2 symog-published symog-recipe-untaught \
        --out runs/resnet20-w2-5k-e12.jsonl --runs-dir runs/resnet20-w2-5k-e12 --skip-done \
        --eval-every 6

On a GPU, the field's budget (all 50,000 images, a 160-epoch float start and 40 quantizing
epochs per row: 3,280 epochs in all)::

    python benchmarks/resnet20_table.py --data-dir ../shared/data/cifar10-jpeg.tar.gz \\
        --max-train-examples 0 --float-epochs 160 --epochs 40 --seeds 0 1 \\
        --out benchmarks/results/resnet20-table-gpu.jsonl --runs-dir runs/resnet20-table-gpu \\
        --skip-done

``--smoke`` checks the pipeline in minutes (width 0.125, 1 + 1 epochs, 1,000 images, seed 0,
rows float, lsq-pow2 and symog-recipe at w2a2 and w2a2-pact; its errors mean nothing);
``--dry-run`` prints the commands without running them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from symog_jax.files import append_line, json_text, write_text_atomic
from symog_jax.quantizers.activations import LEARNED_RANGES

#: SYMOG as published (float forward, the prior on the float weights, rounded at the end): the
#: issue-10 study's ``symog-mixture`` from a float start.
SYMOG_PUBLISHED = dict(bits=2, prior="mixture", forward="float", release_fraction=1.0,
                       placement="decoupled", warmup_epochs=0.0, strength_start=1e-4,
                       strength_end=0.1, anneal_fraction=0.9)
#: The SYMOG stage of ``experiments/recipes/cifar_symog.py`` (a test checks they agree).
SYMOG_RECIPE = dict(bits=2, prior="mixture", forward="quantized", release_fraction=0.75,
                    placement="decoupled", warmup_epochs=0.0, strength_start=1e-6,
                    strength_end=0.01, anneal_fraction=1.0)
#: row -> (method, method fields, taught by the float start).
BASE_ROWS = {
    "ste": ("ste", dict(bits=2), False),
    "lsq": ("lsq", dict(bits=2, power_of_two=False), False),
    "lsq-pow2": ("lsq", dict(bits=2, power_of_two=True), False),
    "symog-published": ("symog", SYMOG_PUBLISHED, False),
    "symog-recipe": ("symog", SYMOG_RECIPE, True),
    "syq-ternary": ("syq", dict(eta=0.05, granularity="pixel"), False),
    "ste-channel": ("ste", dict(bits=2, per_channel=True), False),
}
#: Rows beyond issue 31's table: run only when named in ``--rows``.
EXTRA_ROWS = ("ste-channel", "ste-channel-taught")
#: Every row, in table order.
ROWS = {"float": ("float", {}, False)}
for _name, (_method, _fields, _taught) in BASE_ROWS.items():
    if _name == "symog-recipe":
        ROWS["symog-recipe-untaught"] = (_method, _fields, False)
        ROWS[_name] = (_method, _fields, True)
    else:
        ROWS[_name] = (_method, _fields, False)
        ROWS[f"{_name}-taught"] = (_method, _fields, True)
#: setting -> activation flags of the experiments.
SETTINGS = {
    "w2": [],
    "w2a2": ["--act-bits", "2", "--act-range", "calibrated"],
    "w2a2-pact": ["--act-bits", "2", "--act-range", "pact-pow2"],
    "w2a2-pact-free": ["--act-bits", "2", "--act-range", "pact"],
    "w2a2-lsq": ["--act-bits", "2", "--act-range", "lsq-pow2"],
    "w2a4": ["--act-bits", "4", "--act-range", "calibrated"],
    "w2a4-pact": ["--act-bits", "4", "--act-range", "pact-pow2"],
}
SETTINGS["w2a2-progressive"] = SETTINGS["w2a2"]     # its second stage is a w2a2 run
#: A progressive setting -> the setting of its first stage, which trains the first half of the
#: epochs (rounded down); the second stage starts from it (``--init-from``) at the setting's
#: own activation bits, calibrated again, for the rest.
PROGRESSIVE = {"w2a2-progressive": "w2a4"}
#: Budgets: the defaults (a real run) and ``--smoke``.
FULL = dict(width=1.0, float_epochs=15, epochs=3, max_train_examples=10000, seeds=[0, 1],
            rows=[r for r in ROWS if r not in EXTRA_ROWS], settings=["w2", "w2a2", "w2a2-pact"])
SMOKE = dict(width=0.125, float_epochs=1, epochs=1, max_train_examples=1000, seeds=[0],
             rows=["float", "lsq-pow2", "symog-recipe"], settings=["w2a2", "w2a2-pact"])
FLOAT_LR = 0.05       # the float start's peak learning rate (experiments.cifar's --lr)
FINE_TUNE_LR = 0.02   # the recipe's fine-tuning peak learning rate (its --fine-tune-lr)


def _flag_values(fields: dict) -> list[str]:
    """Method fields as flags of the experiments (``power_of_two=True`` -> ``--power-of-two``)."""
    out = []
    for key, value in fields.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        else:
            out += [flag, str(value)]
    return out


def rate_tags(float_lr: float, fine_tune_lr: float) -> tuple[str, str]:
    """The name tags of the float start and of the rows after it: empty at the table's rates
    (``FLOAT_LR``, ``FINE_TUNE_LR``), else the rates that differ, so runs at two rates share one
    ``--runs-dir`` and ``--teacher float-row`` takes the float row of the same rates.

    Example:
      >>> rate_tags(FLOAT_LR, FINE_TUNE_LR)
      ('', '')
      >>> rate_tags(FLOAT_LR, 0.05)
      ('', '-lr0.05')
      >>> rate_tags(0.1, 0.05)
      ('-flr0.1', '-flr0.1-lr0.05')
    """
    start = "" if float_lr == FLOAT_LR else f"-flr{float_lr:g}"
    return start, start + ("" if fine_tune_lr == FINE_TUNE_LR else f"-lr{fine_tune_lr:g}")


def run_name(row: str, setting: str | None, seed: int, tag: str = "") -> str:
    """The key of one run: ``float-start-s0`` (stage 1), ``float-s0`` (the float row, the same
    in every setting) or ``<setting>/<row>-s<seed>``; ``tag`` (``rate_tags``) goes before the
    seed: ``w2a2/ste-taught-lr0.05-s0``.

    Example:
      >>> run_name("ste-taught", "w2a2", 0, "-lr0.05"), run_name("float", "w2a2", 1)
      ('w2a2/ste-taught-lr0.05-s0', 'float-s1')
    """
    if row in ("float-start", "float") or setting is None:
        return f"{row}{tag}-s{seed}"
    return f"{setting}/{row}{tag}-s{seed}"


def _tags(args) -> tuple[str, str]:
    return rate_tags(args.float_lr, args.fine_tune_lr)


def float_start_command(args, seed: int, workdir: Path) -> list[str]:
    """``experiments.cifar`` arguments of the shared float start of ``seed``."""
    return ["--model", "resnet20", "--method", "float", "--epochs", str(args.float_epochs),
            "--float-start-epochs", "0", "--lr", str(args.float_lr), *_common(args, seed),
            "--workdir", str(workdir)]


def row_command(args, row: str, setting: str, seed: int, float_dir: Path,
                workdir: Path, *, epochs: int | None = None,
                init_dir: Path | None = None) -> list[str]:
    """``experiments.cifar`` arguments of one row: from the float start ``float_dir`` (or
    ``init_dir``, a progressive row's first stage) for ``--epochs`` (or ``epochs``) at
    ``--fine-tune-lr``, with the row's method flags, teacher and setting."""
    method, fields, taught = ROWS[row]
    cmd = ["--model", "resnet20", "--method", method,
           "--epochs", str(args.epochs if epochs is None else epochs),
           "--float-start-epochs", "0", "--init-from", str(init_dir or float_dir),
           "--lr", str(args.fine_tune_lr), *_common(args, seed)]
    if method != "float":
        cmd += _flag_values(fields)
        cmd.append("--no-float-first-last" if args.quantize_first_last else "--float-first-last")
        cmd += SETTINGS[setting]
        act_range = dict(zip(SETTINGS[setting][::2], SETTINGS[setting][1::2])).get("--act-range")
        if args.act_range_lr is not None and act_range in LEARNED_RANGES:
            cmd += ["--act-range-lr", str(args.act_range_lr)]
        if SETTINGS[setting]:
            cmd.append("--no-act-float-last" if args.quantize_first_last
                       else "--act-float-last")
    if taught:
        teacher = (float_dir if args.teacher == "float-start"
                   else float_dir.parent / run_name("float", None, seed, _tags(args)[1]))
        cmd += ["--distill-from", str(teacher)]
    return cmd + ["--workdir", str(workdir)]


def _common(args, seed: int) -> list[str]:
    cmd = ["--width", str(args.width), "--seed", str(seed), "--no-progress"]
    if args.max_train_examples:
        cmd += ["--max-train-examples", str(args.max_train_examples)]
    if args.eval_every != 1:
        cmd += ["--eval-every", str(args.eval_every)]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    return cmd


def portable(argv: list[str]) -> list[str]:
    """``argv`` with absolute paths made relative to the working directory (committed rows
    name no machine path).

    Example:
      >>> portable(["--data-dir", os.path.join(os.getcwd(), "data", "c.tar.gz"), "-x"])
      ['--data-dir', 'data/c.tar.gz', '-x']
    """
    return [os.path.relpath(a) if os.path.isabs(a) else a for a in argv]


def act_ranges(report: dict) -> dict[str, float]:
    """Each quantized layer input's range in a run's ``report.json``: PACT's learned clip, or
    the calibrated format's top level ``(2**bits - 1) * 2**-frac_bits``.

    Example:
      >>> act_ranges({"activations": [{"path": "a", "bits": 2, "pact_alpha": 1.5},
      ...                             {"path": "b", "bits": 2, "frac_bits": 1}]})
      {'a': 1.5, 'b': 1.5}
    """
    out = {}
    for a in report.get("activations", []):
        if "pact_alpha" in a:
            out[a["path"]] = float(a["pact_alpha"])
        else:
            out[a["path"]] = (2 ** a["bits"] - 1) * 2.0 ** -a["frac_bits"]
    return out


def run_one(args, name: str, row: str, setting: str | None, seed: int,
            experiment_args: list[str], workdir: Path) -> dict:
    """Trains one run (a subprocess of ``python -m experiments.cifar``); its JSON row."""
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "experiments.cifar", *experiment_args], check=True)
    seconds = time.time() - t0
    report = json.loads((workdir / "report.json").read_text())
    metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()
               if line.strip()]
    method = ROWS[row][0] if row in ROWS else "float"
    entry = {"name": name, "row": row, "setting": setting, "seed": seed, "method": method,
             "taught": bool(ROWS.get(row, (0, 0, False))[2]),
             "error": report["test_error_float" if method == "float"
                             else "test_error_quantized"],
             "test_error_float": report["test_error_float"],
             "test_error_quantized": report["test_error_quantized"],
             "epochs": _epochs(experiment_args),    # this run's (a progressive stage's)
             "float_epochs": args.float_epochs, "width": args.width,
             "max_train_examples": args.max_train_examples,
             "images_per_second": statistics.median(m["images_per_second"] for m in metrics),
             # error on the augmented training batches of the last epoch (training mode):
             # against the test error, it tells underfitting from overfitting
             "train_error_last_epoch": metrics[-1]["train_error"],
             "seconds": round(seconds, 1), "date": time.strftime("%Y-%m-%d"),
             "host": platform.node(), "cpus": os.cpu_count(),
             "command": "python benchmarks/resnet20_table.py " + " ".join(portable(sys.argv[1:])),
             "run_command": "python -m experiments.cifar " + " ".join(portable(experiment_args))}
    data = json.loads((workdir / "data.json").read_text())
    entry["data_sha256"] = data["fingerprint"]["sha256"]
    if "environment" in data:   # the versions and CPU the run trained with (run_record)
        entry["environment"] = data["environment"]
    ranges = act_ranges(report)
    if ranges:
        entry["act_ranges"] = ranges
    latent = {a["path"]: a["latent_alpha"] for a in report.get("activations", [])
              if "latent_alpha" in a}
    if latent:                  # PACT's learned parameter (a power-of-two clip may hide it)
        entry["latent_alphas"] = latent
    return entry


def time_left(seconds_per_epoch: list[float], epochs_left: int) -> str:
    """The table's time left, from the seconds per epoch (start-up included) of the runs this
    invocation finished, as a phrase for the progress line.

    Example:
      >>> time_left([], 24)
      'time left known after the first run'
      >>> time_left([30.0, 40.0], 24)
      '~14 min left for 24 more epochs'
      >>> time_left([30.0], 0)
      'nothing left'
    """
    if epochs_left <= 0:
        return "nothing left"
    if not seconds_per_epoch:
        return "time left known after the first run"
    minutes = statistics.mean(seconds_per_epoch) * epochs_left / 60
    return f"~{minutes:.0f} min left for {epochs_left} more epochs"


def _epochs(cmd: list[str]) -> int:
    return int(cmd[cmd.index("--epochs") + 1])


def plan(args) -> list[tuple[str, str, str | None, int, list[str], Path]]:
    """Every run in order: ``(name, row, setting, seed, experiments.cifar args, workdir)``."""
    runs_dir = Path(args.runs_dir)
    start_tag, row_tag = _tags(args)
    runs = []
    for seed in args.seeds:
        start_name = run_name("float-start", None, seed, start_tag)
        float_dir = runs_dir / start_name
        runs.append((start_name, "float-start", None, seed,
                     float_start_command(args, seed, float_dir), float_dir))
        for setting in args.settings:
            for row in args.rows:
                name = run_name(row, setting, seed, row_tag)
                if any(r[0] == name for r in runs):
                    continue                          # the float row: once per seed
                workdir = runs_dir / name
                epochs = init_dir = None
                if row != "float" and setting in PROGRESSIVE:     # its first stage first
                    first_name = run_name(f"{row}-stage1", setting, seed, row_tag)
                    init_dir = runs_dir / first_name
                    epochs = args.epochs - args.epochs // 2
                    runs.append((first_name, row, setting, seed,
                                 row_command(args, row, PROGRESSIVE[setting], seed, float_dir,
                                             init_dir, epochs=args.epochs // 2), init_dir))
                runs.append((name, row, None if row == "float" else setting, seed,
                             row_command(args, row, setting, seed, float_dir, workdir,
                                         epochs=epochs, init_dir=init_dir), workdir))
    return runs


def _per_seed(fractions: list[float]) -> str:
    """Percentages of the seeds, ``' / '``-joined: ``[0.41, 0.395]`` -> ``'41.00 / 39.50'``."""
    return " / ".join(f"{100 * f:.2f}" for f in fractions)


def tables(rows: dict[str, dict], args) -> str:
    """Markdown: one table per setting (mean error, per seed, half the spread, the mean over
    seeds of the error minus the float row's of the same seed, and per seed the training error
    of the last epoch where the rows record it), then the learned
    activation range against the calibrated one where both W2A2 settings ran."""
    lines = []
    budget = (f"ResNet-20 x{args.width:g}, float start {args.float_epochs} + {args.epochs} "
              f"epochs, {args.max_train_examples or 'all'} training images, peak rates "
              f"{args.float_lr:g} + {args.fine_tune_lr:g}")
    start_tag, tag = _tags(args)
    floats = {s: run_name("float", None, s, tag) for s in args.seeds}
    for setting in args.settings:
        lines += ["", f"### {setting} ({budget})", "",
                  "| row | mean error | per seed | +- (half spread) | behind float "
                  "| train error, last epoch |",
                  "|---|---|---|---|---|---|"]
        for row in ["float-start"] + list(args.rows):
            names = {s: run_name(row, setting, s, start_tag if row == "float-start" else tag)
                     for s in args.seeds}
            errors = [rows[n]["error"] for n in names.values() if n in rows]
            if not errors:
                continue
            half = (max(errors) - min(errors)) / 2
            behind = [rows[n]["error"] - rows[floats[s]]["error"]
                      for s, n in names.items() if n in rows and floats[s] in rows]
            train = [rows[n]["train_error_last_epoch"] for n in names.values()
                     if "train_error_last_epoch" in rows.get(n, {})]
            lines.append(f"| {row} | {100 * statistics.mean(errors):.2f} % | {_per_seed(errors)}"
                         f" | {100 * half:.2f} | "
                         + (f"{100 * statistics.mean(behind):+.2f}" if behind and row != "float"
                            else "") + f" | {_per_seed(train)} |")
    for calibrated, learned in (("w2a2", "w2a2-pact"), ("w2a2", "w2a2-lsq"),
                                ("w2a2", "w2a2-pact-free"), ("w2a4", "w2a4-pact")):
        if calibrated not in args.settings or learned not in args.settings:
            continue
        lines += ["", f"### learned ({learned}) vs calibrated ({calibrated}) activation range",
                  "", "| row | error calibrated | error learned | learned - calibrated | "
                  "learned / calibrated range (mean over layers and seeds) |",
                  "|---|---|---|---|---|"]
        for row in args.rows:
            pairs = [(rows.get(run_name(row, calibrated, s, tag)),
                      rows.get(run_name(row, learned, s, tag))) for s in args.seeds]
            pairs = [(c, lr) for c, lr in pairs if c and lr and row != "float"]
            if not pairs:
                continue
            ec = statistics.mean(c["error"] for c, _ in pairs)
            el = statistics.mean(lr["error"] for _, lr in pairs)
            ratios = [lr["act_ranges"][p] / c["act_ranges"][p] for c, lr in pairs
                      for p in c.get("act_ranges", {}) if p in lr.get("act_ranges", {})]
            ratio = f"{statistics.mean(ratios):.2f}" if ratios else "-"
            lines.append(f"| {row} | {100 * ec:.2f} % | {100 * el:.2f} % | "
                         f"{100 * (el - ec):+.2f} | {ratio} |")
    return "\n".join(lines).strip() + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    """The benchmark's flags; unset budget flags take ``SMOKE``'s values with ``--smoke``,
    else ``FULL``'s."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None, help="CIFAR-10 (tfds if not given)")
    p.add_argument("--width", type=float, default=None, help="ResNet-20 width (default 1)")
    p.add_argument("--float-epochs", type=int, default=None, help="epochs N of the float start")
    p.add_argument("--epochs", type=int, default=None, help="epochs M of every row after it")
    p.add_argument("--max-train-examples", type=int, default=None,
                   help="training images (0: all; default 10000)")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--rows", nargs="+", default=None, choices=list(ROWS))
    p.add_argument("--settings", nargs="+", default=None, choices=list(SETTINGS))
    p.add_argument("--float-lr", type=float, default=FLOAT_LR,
                   help="peak learning rate of the float start (a rate other than the "
                        "default names the runs: float-start-flr0.1-s0)")
    p.add_argument("--fine-tune-lr", type=float, default=FINE_TUNE_LR,
                   help="peak learning rate of every row after the float start (a rate other "
                        "than the default names the runs, e.g. w2a2/ste-lr0.05-s0, so one "
                        "--runs-dir holds several rates)")
    p.add_argument("--quantize-first-last", action="store_true",
                   help="quantize the first and last layers' weights and the last layer's "
                        "input too (default: float, as the field's ResNet-20 tables)")
    p.add_argument("--act-range-lr", type=float, default=None,
                   help="learning rate of the learned activation clips of the pact settings "
                        "(experiments' --act-range-lr; default: theirs)")
    p.add_argument("--eval-every", type=int, default=1,
                   help="every run evaluates on the test split every N epochs and after its last "
                        "(the rows' numbers are the same; it saves time, default 1)")
    p.add_argument("--teacher", choices=["float-start", "float-row"], default="float-start",
                   help="the taught rows' teacher: the float start they fine-tune (default), or "
                        "the float row of the same seed (N + M float epochs: a stronger "
                        "teacher; then --rows must include float, which runs first)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny budget for a test (width 0.125, 1 + 1 epochs, 1000 images, seed "
                        "0, 3 rows, w2a2 and w2a2-pact)")
    p.add_argument("--out", default="runs/resnet20-table/results.jsonl",
                   help="JSON lines file the rows are appended to")
    p.add_argument("--runs-dir", default="runs/resnet20-table", help="run directories")
    p.add_argument("--skip-done", action="store_true", help="skip runs already in --out")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = p.parse_args(argv)
    for key, value in (SMOKE if args.smoke else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.teacher == "float-row" and "float" not in args.rows \
            and any(ROWS[row][2] for row in args.rows):
        p.error("--teacher float-row: the taught rows learn from the float row, so --rows must "
                "include float")
    if args.epochs < 2 and any(s in PROGRESSIVE for s in args.settings):
        p.error("--settings w2a2-progressive trains two stages of half the epochs each: "
                "--epochs must be >= 2")
    if args.float_epochs < 1 or args.epochs < 1 or not args.width > 0 \
            or args.max_train_examples < 0 or args.eval_every < 1 \
            or not args.float_lr > 0 or not args.fine_tune_lr > 0:
        p.error("--float-epochs, --epochs and --eval-every must be >= 1, --width, --float-lr "
                "and --fine-tune-lr > 0, --max-train-examples >= 0")
    return args


def main(argv=None) -> int:
    """Runs (or with ``--dry-run`` prints) the table's runs, then writes ``table.md`` beside
    ``--out``."""
    args = parse_args(argv)
    out = Path(args.out)
    runs = plan(args)
    if args.dry_run:
        for name, *_, cmd, _ in runs:
            print(f"{name}: python -m experiments.cifar {' '.join(cmd)}")
        print(f"{len(runs)} runs, {sum(_epochs(c) for *_, c, _ in runs)} epochs in all")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if out.exists():
        done = {r["name"]: r for r in map(json.loads, out.read_text().splitlines()) if r}
    todo = [r for r in runs if not (args.skip_done and r[0] in done)]
    epochs_left = sum(_epochs(r[4]) for r in todo)
    rates: list[float] = []
    for i, (name, row, setting, seed, cmd, workdir) in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {name} ({_epochs(cmd)} epochs); table: "
              f"{time_left(rates, epochs_left)}", flush=True)
        entry = run_one(args, name, row, setting, seed, cmd, workdir)
        done[name] = entry
        epochs_left -= _epochs(cmd)
        rates.append(entry["seconds"] / _epochs(cmd))
        append_line(out, json_text(entry, indent=None))
        print(f"{name}: error {100 * entry['error']:.2f} % ({entry['seconds']:.0f} s)",
              flush=True)
    text = tables(done, args)
    print(text)
    write_text_atomic(out.with_name(out.stem + "-table.md"), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
