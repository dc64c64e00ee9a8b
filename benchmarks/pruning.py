"""Holistic filter pruning against the baselines at the same MAC budget, resumable.

Rows (every one the same total epochs, ``--epochs`` + ``--finetune-epochs``):

* ``unpruned``: the full float network.
* ``hfp@R``: holistic pruning to MAC reduction R (``experiments.prune``: gates + budget loss
  for ``--epochs``, channels removed, fine-tuned for ``--finetune-epochs``).
* ``uniform@R``: the uniformly thinner network with the same MACs (the largest uniform width
  multiplier reaching R, :func:`~symog_jax.pruning.baselines.uniform_width_for_macs`) trained
  from scratch for all the epochs.
* ``l1@R``: a float run for ``--epochs``, then per-layer L1-norm filter pruning with the same
  rate in every decision (the uniform network's channel counts), fine-tuned.
* ``hfp-symog@R`` and ``unpruned-symog``: the same with 2-bit SYMOG weights (the data set's
  experiment settings).

Each row is a run directory under ``--out`` (a stopped benchmark continues where it was);
results are appended to ``<out>/results.jsonl`` after every row (``--skip-done`` skips rows
already there) and printed as a markdown table.

    nice -n 10 python benchmarks/pruning.py --dataset mnist --model lenet5 \\
        --data-dir ../shared/data/mnist-png.tar.gz --epochs 3 --finetune-epochs 2 \\
        --rates 0.6 --out runs/bench-pruning-mnist --skip-done
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from symog_jax.files import append_line, json_text
from symog_jax.pipelines.prune import prune
from symog_jax.data import load_dataset
from symog_jax.pruning import architecture, complexity
from symog_jax.pruning.baselines import uniform_width_for_macs
from symog_jax.training import TrainConfig, train

ROWS = ("unpruned", "hfp", "uniform", "l1", "hfp-symog", "unpruned-symog")


def _symog_config(dataset: str) -> dict:
    import dataclasses
    if dataset == "mnist":
        from experiments.mnist import DEFAULTS
    else:
        from experiments.cifar import DEFAULTS
    return dataclasses.asdict(DEFAULTS.method_config)


def _train_row(config: TrainConfig, dataset) -> dict:
    workdir = Path(config.workdir)
    if (workdir / "report.json").is_file():
        return json.loads((workdir / "report.json").read_text())
    ckpts = workdir / "checkpoints"
    return train(config, dataset=dataset, resume=ckpts.is_dir() and any(ckpts.iterdir()))


def run_row(name: str, rate: float | None, base: TrainConfig, dataset, args) -> dict:
    """One row: its run(s) and ``{error, error_float, error_quantized, params, macs, ...}``."""
    total = args.epochs + args.finetune_epochs
    out = Path(args.out) / (name if rate is None else f"{name}-m{round(100 * rate)}")
    arch = architecture(base.model, dataset.num_classes, dataset.image_shape, width=base.width)
    full_p, full_m = complexity(arch, arch.full)
    symog = name.endswith("symog")
    if symog:
        base = base.replace(method="symog", method_config=_symog_config(base.dataset))
    if name.startswith("unpruned") or name == "uniform":
        widths = None
        if name == "uniform":
            widths = uniform_width_for_macs(arch, rate).widths
        report = _train_row(base.replace(epochs=total, widths=widths, workdir=str(out)), dataset)
        w = arch.full if widths is None else widths
        p, m = complexity(architecture(base.model, dataset.num_classes, dataset.image_shape,
                                       widths=w), w)
        ef, eq = report["test_error_float"], report["test_error_quantized"]
        row = {"widths": list(w)}
    else:
        report = prune(base.replace(epochs=args.epochs, workdir=str(out)), dataset,
                       prune_macs=rate, epochs=args.epochs, finetune_epochs=args.finetune_epochs,
                       selection="l1" if name == "l1" else "hfp",
                       hfp_fields={"min_keep": args.min_keep} if args.min_keep else None)
        p, m = report["thin"]["params"], report["thin"]["macs"]
        ef = report["errors"]["after_finetune"]["float"]
        eq = report["errors"]["after_finetune"]["quantized"]
        row = {"widths": report["thin"]["widths"],
               "error_after_removal": report["errors"]["after_removal"][
                   "quantized" if symog else "float"]}
    return {"row": name if rate is None else f"{name}@{rate}", "kind": name, "rate": rate,
            "params": int(p), "macs": int(m), "params_reduction": 1 - p / full_p,
            "macs_reduction": 1 - m / full_m, "error": eq if symog else ef,
            "error_float": ef, "error_quantized": eq, "epochs": total, **row}


def markdown(rows: list[dict]) -> str:
    head = "| row | MACs | MAC red. % | params | param red. % | error % | error after removal % " \
           "| widths |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        after = r.get("error_after_removal")
        lines.append(f"| {r['row']} | {r['macs']:,} | {100 * r['macs_reduction']:.1f} | "
                     f"{r['params']:,} | {100 * r['params_reduction']:.1f} | "
                     f"{100 * r['error']:.2f} | {'-' if after is None else f'{100 * after:.2f}'} "
                     f"| {','.join(map(str, r['widths']))} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--model", default="lenet5")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--epochs", type=int, default=3, help="training / pruning epochs")
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--rates", default="0.6", help="MAC reductions, comma-separated")
    p.add_argument("--rows", default=",".join(ROWS), help=f"subset of {','.join(ROWS)}")
    p.add_argument("--optimizer", default=None, help="default: adam for mnist, else sgd")
    p.add_argument("--lr", type=float, default=None, help="default: 1e-3 adam, 0.05 sgd")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-train-examples", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-keep", type=float, default=0.0,
                   help="hfp rows: fraction of every decision's channels that stays (default 0)")
    p.add_argument("--out", default="runs/bench-pruning")
    p.add_argument("--skip-done", action="store_true")
    args = p.parse_args(argv)
    rows = [r for r in args.rows.split(",") if r]
    bad = sorted(set(rows) - set(ROWS))
    if bad:
        p.error(f"unknown rows {bad}; choose from {ROWS}")
    optimizer = args.optimizer or ("adam" if args.dataset == "mnist" else "sgd")
    lr = args.lr or (1e-3 if optimizer == "adam" else 0.05)
    base = TrainConfig(dataset=args.dataset, model=args.model, method="float",
                       epochs=args.epochs, batch_size=args.batch_size, optimizer=optimizer,
                       lr=lr, weight_decay=0.0 if optimizer == "adam" else 5e-4,
                       width=args.width, seed=args.seed, data_dir=args.data_dir,
                       max_train_examples=args.max_train_examples, progress=False,
                       workdir=args.out)
    dataset = load_dataset(args.dataset, data_dir=args.data_dir)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    done = [json.loads(line) for line in results.read_text().splitlines()] \
        if results.is_file() else []
    names = {r["row"] for r in done}
    rates = [float(v) for v in args.rates.split(",")]
    for name in rows:
        for rate in ([None] if name.startswith("unpruned") else rates):
            label = name if rate is None else f"{name}@{rate}"
            if args.skip_done and label in names:
                continue
            t0 = time.time()
            row = run_row(name, rate, base, dataset, args)
            row.update(seconds=time.time() - t0, dataset=args.dataset, model=args.model,
                       source=dataset.source, machine=platform.node(),
                       date=time.strftime("%Y-%m-%d"))
            append_line(results, json_text(row, indent=None))
            done = [r for r in done if r["row"] != label] + [row]
            print(markdown([row]), flush=True)
    print(markdown(done))


if __name__ == "__main__":
    main()
