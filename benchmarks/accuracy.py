"""Accuracy benchmark: float vs SYMOG vs straight-through vs post-training quantization.

Runs the methods on one data set and model with the same epochs and seeds, then prints a
markdown table (and writes ``<out>/summary.json``). Each run is a ``TrainConfig`` with
``method`` and ``method_config``: ``float`` and ``ste`` get ``{"bits": --bits}``, ``symog``
gets ``bits`` plus the data set's warm-up and prior strengths (``SYMOG_PRESETS``). ``ptq`` is
float training followed by rounding to MSE-optimal ``--bits``-bit formats, which is what the
``float`` method's ``finalize`` does: it is the ``test_error_quantized`` of the float runs (same
training, same seeds), not a separate training run.

Usage (the budgets recorded in RESULTS.md)::

    python benchmarks/accuracy.py --dataset mnist --data-dir ../shared/data/mnist-png.tar.gz \
        --model lenet5 --epochs 5 --seeds 0 1 --ste-seeds 0 --out runs/bench-mnist
    python benchmarks/accuracy.py --dataset cifar10 --data-dir ../shared/data/cifar10-jpeg.tar.gz \
        --model vgg7 --width 0.125 --epochs 8 --seeds 0 --out runs/bench-cifar
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import jax

from symog_jax.files import write_json_atomic
from symog_jax.data import load_dataset
from symog_jax.training import TrainConfig, train
from symog_jax.training.config import DATA_SOURCES

#: Per data set: the run's TrainConfig fields, and SYMOG's own fields (its ``method_config``).
PRESETS = {
    "mnist": dict(optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=128),
    "cifar10": dict(optimizer="sgd", lr=0.05, weight_decay=5e-4, batch_size=128),
}
SYMOG_PRESETS = {
    "mnist": dict(warmup_epochs=1.0, strength_start=1e-5, strength_end=0.1),
    "cifar10": dict(warmup_epochs=1.0),
}


def method_config(method: str, bits: int, dataset: str) -> dict:
    """The ``method_config`` of ``method``: the weight bits (float: those of its post-training
    rounding, i.e. ptq), plus SYMOG's warm-up and strengths from the data set's preset."""
    if method == "symog":
        return {"bits": bits, **SYMOG_PRESETS.get(dataset, SYMOG_PRESETS["cifar10"])}
    return {"bits": bits}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--data-source", default="auto", choices=DATA_SOURCES,
                   help="where load_dataset reads the data set from")
    p.add_argument("--model", default="lenet5")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--bits", type=int, default=2)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                   help="seeds for float (and ptq) and symog")
    p.add_argument("--ste-seeds", type=int, nargs="+", default=[0])
    p.add_argument("--max-train-examples", type=int, default=None)
    p.add_argument("--out", default="runs/bench")
    args = p.parse_args()

    t0 = time.time()
    dataset = load_dataset(args.dataset, source=args.data_source, data_dir=args.data_dir)
    load_seconds = time.time() - t0
    t0 = time.time()
    load_dataset(args.dataset, source=args.data_source, data_dir=args.data_dir)
    cached_seconds = time.time() - t0
    print(f"{dataset.summary()}\nload: {load_seconds:.2f} s (then {cached_seconds:.2f} s cached)")

    preset = PRESETS.get(args.dataset, PRESETS["cifar10"])
    runs = [("float", s) for s in args.seeds] + [("symog", s) for s in args.seeds] + \
           [("ste", s) for s in args.ste_seeds]
    out = Path(args.out)
    results: dict[str, list[dict]] = {}
    for method, seed in runs:
        config = TrainConfig(dataset=args.dataset, model=args.model, method=method,
                             method_config=method_config(method, args.bits, args.dataset),
                             epochs=args.epochs, width=args.width, seed=seed,
                             data_source=args.data_source, data_dir=args.data_dir,
                             workdir=str(out / f"{method}-seed{seed}"), progress=False,
                             max_train_examples=args.max_train_examples, **preset)
        report = train(config, dataset=dataset)
        metrics = [json.loads(line) for line in
                   (Path(config.workdir) / report["files"]["metrics"]).read_text().splitlines()]
        entry = {"seed": seed, "method_config": report["config"]["method_config"],
                 "float": report["test_error_float"],
                 "quantized": report["test_error_quantized"],
                 "images_per_second": statistics.median(m["images_per_second"] for m in metrics),
                 "train_seconds": report["train_seconds_this_invocation"]}
        results.setdefault(method, []).append(entry)
        if method == "float":  # the float method's finalize is post-training rounding (ptq)
            results.setdefault("ptq", []).append({**entry, "float": None})

    def mean(method, key):
        values = [r[key] for r in results[method] if r[key] is not None]
        return statistics.mean(values) if values else None

    lines = [f"| method | seeds | float test error | {args.bits}-bit test error "
             "| images/s (train) |",
             "|---|---|---|---|---|"]
    for method in ("float", "symog", "ste", "ptq"):
        if method not in results:
            continue
        seeds = ",".join(str(r["seed"]) for r in results[method])
        fe = mean(method, "float")
        qe = mean(method, "quantized") if method != "float" else None
        per_seed = " / ".join(f"{100 * r['quantized']:.2f}" for r in results[method])
        lines.append(
            f"| {method} | {seeds} | {'-' if fe is None else f'{100 * fe:.2f} %'} | "
            f"{'-' if qe is None else f'{100 * qe:.2f} % ({per_seed})'} | "
            f"{mean(method, 'images_per_second'):.0f} |")
    table = "\n".join(lines)
    print(table)
    summary = {"args": vars(args), "device": str(jax.devices()[0]), "host": platform.node(),
               "load_seconds": load_seconds, "cached_load_seconds": cached_seconds,
               "results": results, "table": table}
    write_json_atomic(out / "summary.json", summary)


if __name__ == "__main__":
    main()
