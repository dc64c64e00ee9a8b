"""Per-layer bit allocation of a float run: ``python -m experiments.allocate_bits --workdir RUN``.

Lin, Talathi & Annapureddy (2016): measure each layer's SQNR at every bit-width on a calibration
batch, allocate bits per layer for several weight-memory budgets (average bits per quantized
weight), and compare test error vs weight memory with equal bit-widths for every layer, without
retraining and (``--finetune-epochs N``) after a short straight-through fine-tuning from the
float weights. Prints a table and writes to ``--out`` (default ``RUN/allocation``):

    allocation.json   every row, the SQNR table and the comparison
    allocation.md     the table in markdown
    bits/*.json       each optimized allocation, usable as --bits-per-layer FILE
                      (with --allocate-activations also bits/*-act.json, usable as
                      --act-bits-per-layer FILE)
    finetune/b*/      the fine-tuning runs, one per distinct allocation (reused when the
                      command runs again)
    error_vs_memory.png   if matplotlib is installed

--allocate-activations: the input of every conv/dense layer but the first (and, with the run's
act_float_last, the last) is allocated bits too. Its cost is its number of elements for one
image times --act-cost-weight (default 1: the memory of one inference's activations, in the
same bits as the weights), so the memory of a row is weights + activations per image; equal
rows give weights and activations the same bits (W/A equal), budgets are average bits per unit
of cost. See symog_jax.allocation_pipeline.

With no run in --workdir, --float-epochs N first trains the float network there (the data and
model flags below, with the defaults of experiments.mnist / experiments.cifar for that data
set; an interrupted one is resumed; a finished one is reused).

    python -m experiments.allocate_bits --workdir runs/float --float-epochs 3 \\
        --dataset mnist --model lenet5 --data-dir ../shared/data/mnist-png.tar.gz
    python -m experiments.allocate_bits --workdir runs/float --finetune-epochs 1
    python -m experiments.allocate_bits --workdir runs/float --allocate-activations
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

from symog_jax.allocation_pipeline import (ACT_SUFFIX, FORMAT_RULES, FloatNetwork,
                                           LayerStatistics, allocate, bits_file, evaluate_bits,
                                           finetune, layer_statistics, split_bits)

#: TrainConfig fields that --float-epochs's float run takes from the command line.
FLOAT_RUN_FIELDS = ("dataset", "model", "width", "batch_size", "optimizer", "lr", "momentum",
                    "weight_decay", "seed", "max_train_examples", "allow_bundled", "augment")

DEFAULT_BUDGETS = (2.5, 3.5, 4.5)
DEFAULT_EQUAL = (2, 3, 4, 5, 6, 8)


def compare(rows: list[dict], key: str, tolerance: float,
            memory: str = "weight_memory_bits") -> list[dict]:
    """For each optimized row: the smallest equal-bit row (by ``memory``) whose ``key`` error is
    at most the optimized one's plus ``tolerance`` (a fraction), and how much smaller the
    optimized one is (``weight_memory_bits`` in the result are the ``memory`` values)."""
    equal = sorted((r for r in rows if r["kind"] == "equal" and r.get(key) is not None),
                   key=lambda r: r[memory])
    out = []
    for r in rows:
        if r["kind"] != "optimized" or r.get(key) is None:
            continue
        match = next((e for e in equal if e[key] <= r[key] + tolerance + 1e-12), None)
        out.append({"row": r["label"], "error": r[key],
                    "weight_memory_bits": r[memory],
                    "equal_row": None if match is None else match["label"],
                    "equal_error": None if match is None else match[key],
                    "equal_weight_memory_bits": None if match is None else match[memory],
                    "smaller_by": None if match is None
                    else 1.0 - r[memory] / match[memory]})
    return out


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def markdown(rows: list[dict], stats: LayerStatistics, finetuned: bool) -> str:
    weights, acts = stats.weight_names, stats.activation_names
    head = ["row", "bits " + "/".join(n.rsplit("/", 1)[0] for n in weights)]
    if acts:
        head += ["act. bits " + "/".join(n[:-len(ACT_SUFFIX)] for n in acts)]
    head += ["avg bits", "weights KiB"] + (["act. KiB/image", "cost KiB"] if acts else []) + \
        ["pred. SQNR dB", "meas. SQNR dB", "error %"] + \
        (["error % fine-tuned"] if finetuned else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["label"], "/".join(str(r["bits"][n]) for n in weights)]
        if acts:
            cells += ["/".join(str(r["bits"][n]) for n in acts)]
        cells += [f"{r['avg_bits']:.3f}", f"{r['weight_memory_bits'] / 8 / 1024:.1f}"]
        if acts:
            cells += [f"{r['activation_memory_bits'] / 8 / 1024:.2f}",
                      f"{r['cost_bits'] / 8 / 1024:.1f}"]
        cells += [f"{r['predicted_sqnr_db']:.2f}", _num(r.get("output_sqnr_db")),
                  _pct(r["test_error"])] + ([_pct(r.get("test_error_finetuned"))]
                                            if finetuned else [])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _num(v) -> str:
    return "-" if v is None or isinstance(v, str) else f"{v:.2f}"


def comparison_text(comparisons: list[dict], what: str, tolerance: float) -> str:
    """One line per optimized row: its memory (``weight_memory_bits`` of :func:`compare`) and
    error vs the smallest equal row that is as good."""
    lines = [f"{what}: optimized vs the smallest equal bit-width with error <= its own + "
             f"{100 * tolerance:g} points"]
    for c in comparisons:
        if c["equal_row"] is None:
            lines.append(f"  {c['row']}: error {_pct(c['error'])} %, no equal bit-width as good")
        else:
            lines.append(f"  {c['row']}: {c['weight_memory_bits'] / 8 / 1024:.1f} KiB, error "
                         f"{_pct(c['error'])} % vs {c['equal_row']} "
                         f"{c['equal_weight_memory_bits'] / 8 / 1024:.1f} KiB, error "
                         f"{_pct(c['equal_error'])} %: "
                         + (f"{100 * c['smaller_by']:.1f} % smaller" if c["smaller_by"] >= 0
                            else f"{-100 * c['smaller_by']:.1f} % larger"))
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, finetuned: bool,
         memory: str = "weight_memory_bits") -> str:
    """Error vs memory (``memory`` of each row) with :func:`symog_jax.plots.error_vs_memory`:
    equal and optimized rows, without retraining and (if done) fine-tuned."""
    try:
        from symog_jax.plots import error_vs_memory
    except ImportError:
        return "matplotlib is not installed: no plot (pip install matplotlib for one)"
    points = []
    for kind in ("equal", "optimized"):
        for r in rows:
            if r["kind"] != kind:
                continue
            # only the equal rows are labelled (2b, 3b, ...): the optimized ones crowd
            short = r["label"].replace("equal ", "").replace(" bit", "b") \
                if kind == "equal" else None
            points.append({"group": f"{kind}, no retraining", "label": short,
                           "weight_memory_bits": r[memory], "error": r["test_error"]})
            if finetuned and r.get("test_error_finetuned") is not None:
                points.append({"group": f"{kind}, fine-tuned",
                               "weight_memory_bits": r[memory],
                               "error": r["test_error_finetuned"]})
    try:
        fig = error_vs_memory(points, title="per-layer allocation vs equal bit-widths")
    except ImportError:
        return "matplotlib is not installed: no plot (pip install matplotlib for one)"
    if memory == "cost_bits":
        fig.axes[0].set_xlabel("weights + activations per image (KiB)")
    fig.savefig(path, dpi=120)
    return f"plot: {path}"


def float_run(args) -> None:
    """Trains the float run in ``args.workdir`` if it holds no finished one (``--float-epochs``).

    Raises:
      FileNotFoundError: no run there and no ``--float-epochs``.
    """
    workdir = Path(args.workdir)
    if args.float_epochs is None and not (workdir / "config.json").is_file():
        raise FileNotFoundError(f"{workdir} is not a run directory (no config.json): pass "
                                "--float-epochs N (and --dataset, --model, ...) to train a "
                                "float network there first")
    if (workdir / "report.json").is_file() or args.float_epochs is None:
        return             # finished (reused), or FloatNetwork.from_run says what is missing
    from symog_jax.training import train
    from symog_jax.training.loop import load_run_config
    given = {k: getattr(args, k) for k in FLOAT_RUN_FIELDS if getattr(args, k) is not None}
    has_checkpoints = (workdir / "checkpoints").is_dir() and any(
        (workdir / "checkpoints").iterdir())
    if has_checkpoints and (workdir / "config.json").is_file():
        config = load_run_config(workdir)        # an interrupted float run: resume it as it was
        if config.method != "float":
            raise ValueError(f"{workdir} holds an unfinished {config.method} run, not a float "
                             "one; use another --workdir")
    else:
        dataset = given.get("dataset", "mnist")
        defaults = _experiment_defaults(dataset)
        config = defaults.replace(method="float", method_config=None, **given)
    config = config.replace(epochs=args.float_epochs, workdir=str(workdir), init_from=None,
                            stop_after_epochs=None, progress=args.progress,
                            data_dir=args.data_dir if args.data_dir is not None
                            else config.data_dir,
                            data_source=args.data_source or config.data_source)
    print(f"training the float network in {workdir} ({config.dataset}, {config.model}, "
          f"{config.epochs} epochs{', resuming' if has_checkpoints else ''})")
    train(config, resume=has_checkpoints)


def _experiment_defaults(dataset: str):
    """The training command's defaults for ``dataset`` (experiments.mnist / .cifar)."""
    from symog_jax.training import TrainConfig
    if dataset == "mnist":
        from experiments.mnist import DEFAULTS
    elif dataset in ("cifar10", "cifar100"):
        from experiments.cifar import DEFAULTS
        DEFAULTS = DEFAULTS.replace(dataset=dataset)
    else:
        DEFAULTS = TrainConfig(dataset=dataset)
    return DEFAULTS


def run(args) -> dict:
    t0 = time.time()
    float_run(args)
    net = FloatNetwork.from_run(args.workdir, data_dir=args.data_dir,
                                data_source=args.data_source)
    out = Path(args.out) if args.out else Path(args.workdir) / "allocation"
    out.mkdir(parents=True, exist_ok=True)
    layers = net.quantized_layers()
    with_acts = args.allocate_activations
    for b in args.budgets:
        if not args.min_bits <= b:
            raise ValueError(f"budget {b:g} bits per weight is below --min-bits {args.min_bits}: "
                             "no allocation fits it")
    for b in args.equal_bits:
        if not 2 <= b <= (16 if with_acts else 24):
            raise ValueError(f"--equal-bits {b} is outside 2..{16 if with_acts else 24}")
    print(f"{net.workdir.name} (epoch {net.epoch}, {net.config.model}, {net.dataset.source}): "
          f"quantized layers {', '.join(f'{k} ({v:,})' for k, v in layers.items())}")
    if with_acts:
        print("quantized layer inputs (elements per image): " + ", ".join(
            f"{k} ({v:,})" for k, v in net.activation_layers().items())
            + f"; cost weight {args.act_cost_weight:g}")
    stats = layer_statistics(net, min_bits=args.min_bits, max_bits=args.max_bits,
                             kind=args.sqnr, formats=args.formats,
                             calibration_size=args.calibration_size,
                             activations=with_acts, act_cost_weight=args.act_cost_weight)
    total = stats.total_cost          # the parameter count without activations
    calib = net.calibration_images(args.calibration_size)
    print(f"SQNR ({stats.kind}, dB) at {stats.min_bits}..{stats.max_bits} bits:")
    for name, row in zip(stats.names, stats.table_db):
        print(f"  {name:<16} " + " ".join(f"{v:6.1f}" for v in row))

    unit = "b/e" if with_acts else "b/w"      # bits per unit of cost, or per weight
    goals = [("equal", f"equal {b} bit", {"bits": b}) for b in args.equal_bits]
    goals += [("optimized", f"budget {b:g} {unit}", {"budget_bits": b * total,
                                                     "budget_avg_bits": b})
              for b in args.budgets]
    goals += [("optimized", f"target {t:g} dB", {"target_sqnr_db": t}) for t in args.targets]
    if args.match_equal:      # the least memory with the predicted SQNR of each equal row
        for b in args.equal_bits:
            if args.min_bits <= b < args.max_bits:
                sqnr = stats.predicted_sqnr_db({n: b for n in stats.names})
                goals.append(("optimized", f"SQNR of {b} bit", {"target_sqnr_db": sqnr}))
    rows, evaluated = [], {}
    for kind, label, goal in goals:
        if kind == "equal":
            bits = {n: goal["bits"] for n in stats.names}
        else:
            alloc = allocate(stats, target_sqnr_db=goal.get("target_sqnr_db"),
                             budget_bits=goal.get("budget_bits"))
            bits = alloc.as_dict()
        key = tuple(bits[n] for n in stats.names)
        weights, acts = split_bits(bits)
        if key not in evaluated:          # the same allocation for several goals: once
            evaluated[key] = evaluate_bits(net, weights, act_bits=acts if with_acts else None,
                                           formats=args.formats, calibration_images=calib)
        ev = evaluated[key]
        in_range = all(stats.min_bits <= b <= stats.max_bits for b in bits.values())
        row = {"kind": kind, "label": label, "goal": goal, "bits": bits,
               "avg_bits": stats.cost_bits(bits) / total,
               "weight_memory_bits": ev["weight_memory_bits"],
               "activation_memory_bits": ev.get("activation_memory_bits", 0),
               "cost_bits": stats.cost_bits(bits),
               "model_memory_bits": ev["model_memory_bits"],
               "predicted_sqnr_db": stats.predicted_sqnr_db(bits) if in_range else math.nan,
               "output_sqnr_db": ev.get("output_sqnr_db"), "test_error": ev["test_error"]}
        if kind == "optimized":
            name = _label_file(label)
            row["bits_file"] = str(bits_file(weights, out / "bits" / f"{name}.json"))
            if with_acts:
                row["act_bits_file"] = str(bits_file(acts, out / "bits" / f"{name}-act.json"))
        rows.append(row)
        shown = "/".join(str(bits[n]) for n in stats.weight_names)
        if with_acts:
            shown += " a " + "/".join(str(bits[n]) for n in stats.activation_names)
        print(f"  {label:<18} bits {shown:<22} {row['cost_bits'] / 8 / 1024:8.1f} KiB  error "
              f"{100 * row['test_error']:.2f} %")
    finetuned = args.finetune_epochs > 0
    if finetuned:
        for row in rows:
            print(f"fine-tuning {row['label']} ({args.finetune_method}, "
                  f"{args.finetune_epochs} epoch(s))")
            key = "b" + "-".join(str(row["bits"][n]) for n in stats.weight_names)
            weights, acts = split_bits(row["bits"])
            if with_acts:
                key += "-a" + "-".join(str(row["bits"][n]) for n in stats.activation_names)
            report = finetune(net, weights, out / "finetune" / key,
                              act_bits=acts if with_acts else None,
                              epochs=args.finetune_epochs, lr=args.finetune_lr,
                              method=args.finetune_method,
                              max_train_examples=args.finetune_max_examples)
            row["test_error_finetuned"] = report["test_error_quantized"]
            row["finetune_workdir"] = report["files"]["workdir"]
    tol = args.tolerance / 100
    memory = "cost_bits" if with_acts else "weight_memory_bits"
    comparisons = {"no_retraining": compare(rows, "test_error", tol, memory)}
    if finetuned:
        comparisons["finetuned"] = compare(rows, "test_error_finetuned", tol, memory)
    md = markdown(rows, stats, finetuned)
    what = " (memory: weights + activations per image)" if with_acts else ""
    texts = [comparison_text(comparisons["no_retraining"], "without retraining" + what, tol)]
    if finetuned:
        texts.append(comparison_text(comparisons["finetuned"], "after fine-tuning" + what, tol))
    print("\n" + md + "\n\n" + "\n".join(texts))
    result = {"workdir": str(net.workdir), "epoch": net.epoch,
              "dataset_source": net.dataset.source, "model": net.config.model,
              "float_test_error": evaluate_float(net, with_acts),
              "quantized_params": stats.total_params, "total_cost": total,
              "statistics": stats.as_dict(), "rows": rows, "comparisons": comparisons,
              "settings": {k: v for k, v in vars(args).items()},
              "seconds": time.time() - t0}
    (out / "allocation.json").write_text(json.dumps(_json_safe(result), indent=2))
    (out / "allocation.md").write_text(md + "\n\n" + "\n".join(texts) + "\n")
    print(plot(rows, out / "error_vs_memory.png", finetuned, memory))
    print(f"float error {100 * result['float_test_error']:.2f} %; written to "
          f"{out / 'allocation.json'} and {out / 'allocation.md'}")
    return result


def evaluate_float(net: FloatNetwork, float_activations: bool = False) -> float:
    """Test error of the float weights (with the run's activation formats, or float ones)."""
    from symog_jax.training.loop import evaluate
    return evaluate(net.eval_step(), net.params, net.batch_stats,
                    {} if float_activations else net.act_formats,
                    net.dataset.test_images, net.dataset.test_labels)["error"]


def _label_file(label: str) -> str:
    return label.replace(" ", "-").replace("/", "").replace(".", "p")


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--workdir", required=True, help="a float run directory (holds config.json "
                                                    "and checkpoints), or where --float-epochs "
                                                    "trains one")
    p.add_argument("--out", default=None, help="output directory (default WORKDIR/allocation)")
    p.add_argument("--data-dir", default=None, help="where the data is now, if it moved")
    p.add_argument("--data-source", default=None,
                   choices=("auto", "tfds", "folder", "archive", "bundled"))
    p.add_argument("--budgets", type=float, nargs="*", default=list(DEFAULT_BUDGETS),
                   help="weight-memory budgets in average bits per quantized weight (default "
                        f"{' '.join(map(str, DEFAULT_BUDGETS))})")
    p.add_argument("--targets", type=float, nargs="*", default=[],
                   help="target output SQNRs in dB (least memory meeting each)")
    p.add_argument("--match-equal", action=argparse.BooleanOptionalAction, default=True,
                   help="also allocate for the predicted SQNR of every equal bit-width below "
                        "--max-bits (default on)")
    p.add_argument("--equal-bits", type=int, nargs="*", default=list(DEFAULT_EQUAL),
                   help=f"equal bit-widths to compare with (default "
                        f"{' '.join(map(str, DEFAULT_EQUAL))})")
    p.add_argument("--min-bits", type=int, default=2, help="fewest bits a layer may get")
    p.add_argument("--max-bits", type=int, default=8, help="most bits a layer may get")
    p.add_argument("--sqnr", choices=("output", "tensor"), default="output",
                   help="per-layer SQNR: of the logits with only that layer quantized, or of "
                        "the weights themselves (default output)")
    p.add_argument("--formats", choices=FORMAT_RULES, default="search",
                   help="power-of-two steps: exact MSE search (as training does) or a "
                        "distribution model (default search)")
    p.add_argument("--calibration-size", type=int, default=512,
                   help="training images for the SQNR measurement (default 512)")
    p.add_argument("--finetune-epochs", type=int, default=0,
                   help="fine-tune every row this many epochs (0: no fine-tuning)")
    p.add_argument("--finetune-lr", type=float, default=None,
                   help="fine-tuning learning rate (default a tenth of the float run's)")
    p.add_argument("--finetune-method", choices=("ste", "symog"), default="ste")
    p.add_argument("--finetune-max-examples", type=int, default=None,
                   help="fine-tune on a seeded subset of this many training images")
    p.add_argument("--tolerance", type=float, default=0.1,
                   help="error tolerance in points for 'the same error' (default 0.1)")
    p.add_argument("--allocate-activations", action="store_true",
                   help="allocate bits to the layer inputs too (cost: elements per image x "
                        "--act-cost-weight); equal rows are W/A equal")
    p.add_argument("--act-cost-weight", type=float, default=1.0,
                   help="cost of one activation element relative to one weight (default 1: "
                        "the activations of one image; e.g. the batch size for a batch's)")
    float_group = p.add_argument_group(
        "float run", "with no run in --workdir, --float-epochs N trains a float network there "
        "first; the flags below are the training command's (defaults: experiments.mnist or "
        "experiments.cifar for --dataset)")
    float_group.add_argument("--float-epochs", type=int, default=None,
                             help="train (or finish) the float run in --workdir for N epochs")
    float_group.add_argument("--progress", action=argparse.BooleanOptionalAction,
                             default=False, help="progress bar while training (default off)")
    from experiments.cli import _add
    from symog_jax.training import TrainConfig
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for name in FLOAT_RUN_FIELDS:
        f = fields[name]
        _add(float_group, f, f.default, f.metadata.get("help", ""), suppress_default=True)
    args = p.parse_args(argv)
    if args.float_epochs is not None and args.float_epochs < 1:
        p.error(f"--float-epochs must be >= 1, got {args.float_epochs}")
    if not (math.isfinite(args.act_cost_weight) and args.act_cost_weight > 0):
        p.error(f"--act-cost-weight must be a finite number > 0, got {args.act_cost_weight}")
    try:
        run(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, ImportError,
            RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
