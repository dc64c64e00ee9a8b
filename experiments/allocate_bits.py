"""Per-layer bit allocation of a float run: ``python -m experiments.allocate_bits --workdir RUN``.

Lin, Talathi & Annapureddy (2016): measure each layer's SQNR at every bit-width on a calibration
batch, allocate bits per layer for several weight-memory budgets (average bits per quantized
weight), and compare test error vs weight memory with equal bit-widths for every layer, without
retraining and (``--finetune-epochs N``) after a short straight-through fine-tuning from the
float weights. Prints a table and writes to ``--out`` (default ``RUN/allocation``):

    allocation.json   every row, the SQNR table and the comparison
    allocation.md     the table in markdown
    bits/*.json       each optimized allocation, usable as --bits-per-layer FILE
    finetune/b*/      the fine-tuning runs, one per distinct allocation (reused when the
                      command runs again)
    error_vs_memory.png   if matplotlib is installed

    python -m experiments.mnist --method float --epochs 3 --workdir runs/float \\
        --data-dir ../shared/data/mnist-png.tar.gz
    python -m experiments.allocate_bits --workdir runs/float --finetune-epochs 1
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from symog_jax.allocation_pipeline import (FORMAT_RULES, FloatNetwork, LayerStatistics, allocate,
                                           bits_file, evaluate_bits, finetune, layer_statistics)

DEFAULT_BUDGETS = (2.5, 3.5, 4.5)
DEFAULT_EQUAL = (2, 3, 4, 5, 6, 8)


def compare(rows: list[dict], key: str, tolerance: float) -> list[dict]:
    """For each optimized row: the smallest equal-bit row whose ``key`` error is at most the
    optimized one's plus ``tolerance`` (a fraction), and how much smaller the optimized one is."""
    equal = sorted((r for r in rows if r["kind"] == "equal" and r.get(key) is not None),
                   key=lambda r: r["weight_memory_bits"])
    out = []
    for r in rows:
        if r["kind"] != "optimized" or r.get(key) is None:
            continue
        match = next((e for e in equal if e[key] <= r[key] + tolerance + 1e-12), None)
        out.append({"row": r["label"], "error": r[key],
                    "weight_memory_bits": r["weight_memory_bits"],
                    "equal_row": None if match is None else match["label"],
                    "equal_error": None if match is None else match[key],
                    "equal_weight_memory_bits": None if match is None
                    else match["weight_memory_bits"],
                    "smaller_by": None if match is None
                    else 1.0 - r["weight_memory_bits"] / match["weight_memory_bits"]})
    return out


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def markdown(rows: list[dict], stats: LayerStatistics, finetuned: bool) -> str:
    short = [n.rsplit("/", 1)[0] for n in stats.names]
    head = ["row", "bits " + "/".join(short), "avg bits", "weights KiB", "pred. SQNR dB",
            "meas. SQNR dB", "error %"] + (["error % fine-tuned"] if finetuned else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["label"], "/".join(str(r["bits"][n]) for n in stats.names),
                 f"{r['avg_bits']:.3f}", f"{r['weight_memory_bits'] / 8 / 1024:.1f}",
                 f"{r['predicted_sqnr_db']:.2f}", _num(r.get("output_sqnr_db")),
                 _pct(r["test_error"])] + ([_pct(r.get("test_error_finetuned"))]
                                           if finetuned else [])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _num(v) -> str:
    return "-" if v is None or isinstance(v, str) else f"{v:.2f}"


def comparison_text(comparisons: list[dict], what: str, tolerance: float) -> str:
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


def plot(rows: list[dict], path: Path, finetuned: bool) -> str:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot (pip install matplotlib for one)"
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, marker in (("equal", "o"), ("optimized", "s")):
        pts = sorted((r["weight_memory_bits"] / 8 / 1024, r) for r in rows if r["kind"] == kind)
        xs = [x for x, _ in pts]
        ax.plot(xs, [100 * r["test_error"] for _, r in pts], marker + "-",
                label=f"{kind}, no retraining")
        if finetuned:
            ax.plot(xs, [100 * r["test_error_finetuned"] for _, r in pts], marker + "--",
                    label=f"{kind}, fine-tuned")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("weight memory of quantized layers (KiB)")
    ax.set_ylabel("test error (%)")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"plot: {path}"


def run(args) -> dict:
    t0 = time.time()
    net = FloatNetwork.from_run(args.workdir, data_dir=args.data_dir,
                                data_source=args.data_source)
    out = Path(args.out) if args.out else Path(args.workdir) / "allocation"
    out.mkdir(parents=True, exist_ok=True)
    layers = net.quantized_layers()
    total = sum(layers.values())
    for b in args.budgets:
        if not args.min_bits <= b:
            raise ValueError(f"budget {b:g} bits per weight is below --min-bits {args.min_bits}: "
                             "no allocation fits it")
    for b in args.equal_bits:
        if not 2 <= b <= 24:
            raise ValueError(f"--equal-bits {b} is outside 2..24")
    print(f"{net.workdir.name} (epoch {net.epoch}, {net.config.model}, {net.dataset.source}): "
          f"quantized layers {', '.join(f'{k} ({v:,})' for k, v in layers.items())}")
    stats = layer_statistics(net, min_bits=args.min_bits, max_bits=args.max_bits,
                             kind=args.sqnr, formats=args.formats,
                             calibration_size=args.calibration_size)
    calib = net.calibration_images(args.calibration_size)
    print(f"SQNR ({stats.kind}, dB) at {stats.min_bits}..{stats.max_bits} bits:")
    for name, row in zip(stats.names, stats.table_db):
        print(f"  {name:<16} " + " ".join(f"{v:6.1f}" for v in row))

    goals = [("equal", f"equal {b} bit", {"bits": b}) for b in args.equal_bits]
    goals += [("optimized", f"budget {b:g} b/w", {"budget_bits": b * total,
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
        if key not in evaluated:          # the same allocation for several goals: once
            evaluated[key] = evaluate_bits(net, bits, formats=args.formats,
                                           calibration_images=calib)
        ev = evaluated[key]
        row = {"kind": kind, "label": label, "goal": goal, "bits": bits,
               "avg_bits": ev["weight_memory_bits"] / total,
               "weight_memory_bits": ev["weight_memory_bits"],
               "model_memory_bits": ev["model_memory_bits"],
               "predicted_sqnr_db": stats.predicted_sqnr_db(bits) if all(
                   stats.min_bits <= b <= stats.max_bits for b in bits.values()) else math.nan,
               "output_sqnr_db": ev.get("output_sqnr_db"), "test_error": ev["test_error"]}
        if kind == "optimized":
            row["bits_file"] = str(bits_file(bits, out / "bits" / f"{_label_file(label)}.json"))
        rows.append(row)
        print(f"  {label:<18} bits {'/'.join(str(bits[n]) for n in stats.names):<14} "
              f"{row['weight_memory_bits'] / 8 / 1024:8.1f} KiB  error "
              f"{100 * row['test_error']:.2f} %")
    finetuned = args.finetune_epochs > 0
    if finetuned:
        for row in rows:
            print(f"fine-tuning {row['label']} ({args.finetune_method}, "
                  f"{args.finetune_epochs} epoch(s))")
            key = "b" + "-".join(str(row["bits"][n]) for n in stats.names)
            report = finetune(net, row["bits"], out / "finetune" / key,
                              epochs=args.finetune_epochs, lr=args.finetune_lr,
                              method=args.finetune_method,
                              max_train_examples=args.finetune_max_examples)
            row["test_error_finetuned"] = report["test_error_quantized"]
            row["finetune_workdir"] = report["files"]["workdir"]
    tol = args.tolerance / 100
    comparisons = {"no_retraining": compare(rows, "test_error", tol)}
    if finetuned:
        comparisons["finetuned"] = compare(rows, "test_error_finetuned", tol)
    md = markdown(rows, stats, finetuned)
    texts = [comparison_text(comparisons["no_retraining"], "without retraining", tol)]
    if finetuned:
        texts.append(comparison_text(comparisons["finetuned"], "after fine-tuning", tol))
    print("\n" + md + "\n\n" + "\n".join(texts))
    result = {"workdir": str(net.workdir), "epoch": net.epoch,
              "dataset_source": net.dataset.source, "model": net.config.model,
              "float_test_error": evaluate_float(net), "quantized_params": total,
              "statistics": stats.as_dict(), "rows": rows, "comparisons": comparisons,
              "settings": {k: v for k, v in vars(args).items()},
              "seconds": time.time() - t0}
    (out / "allocation.json").write_text(json.dumps(_json_safe(result), indent=2))
    (out / "allocation.md").write_text(md + "\n\n" + "\n".join(texts) + "\n")
    print(plot(rows, out / "error_vs_memory.png", finetuned))
    print(f"float error {100 * result['float_test_error']:.2f} %; written to "
          f"{out / 'allocation.json'} and {out / 'allocation.md'}")
    return result


def evaluate_float(net: FloatNetwork) -> float:
    from symog_jax.training.loop import evaluate
    return evaluate(net.eval_step(), net.params, net.batch_stats, net.act_formats,
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
                                                    "and checkpoints)")
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
    args = p.parse_args(argv)
    try:
        run(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, ImportError,
            RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
