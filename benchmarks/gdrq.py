"""GDRQ on one budget: W4A4, and W2A4 with/without Scale-Clip and with 1 vs 4 groups.

The runs use the same budget as ``benchmarks/methods.py`` (the "Methods on one budget" rows of
RESULTS.md: complete MNIST, LeNet5, 5 epochs, Adam 1e-3 with cosine decay, batch 128, seed 0,
no weight decay) and the same run syntax, ``name=method[:field=value,...][@aN]``. GDRQ keeps
the first and last layer in float (``float_first_last=true``): LeNet5's last layer has 10
outputs, which 4 groups do not divide; the G=1 rows do the same so that the rows compare only
what they vary. ``ste-w2a4-ffl`` is the straight-through baseline with the same float layers.
Results are appended to ``<out>/results.jsonl`` after every run (``--skip-done`` continues an
interrupted benchmark) and printed as a markdown table at the end.

Usage (about 6 min per run on 2 CPU cores)::

    nice -n 10 python benchmarks/gdrq.py --data-dir ../shared/data/mnist-png.tar.gz \\
        --epochs 5 --out runs/bench-gdrq --skip-done
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import time
from pathlib import Path

import jax

from symog_jax.data import load_dataset
from symog_jax.training import TrainConfig, train

_spec = importlib.util.spec_from_file_location("_bench_methods",
                                               Path(__file__).with_name("methods.py"))
_methods = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_methods)
PRESETS, parse_run = _methods.PRESETS, _methods.parse_run

FFL = "float_first_last=true"
DEFAULT_RUNS = [
    f"gdrq-w2a4-g4-clip=gdrq:bits=2,groups=4,clip_k=2.0,{FFL}@a4",
    f"gdrq-w2a4-g4-noclip=gdrq:bits=2,groups=4,scale_clip=false,{FFL}@a4",
    f"gdrq-w2a4-g1-clip=gdrq:bits=2,groups=1,clip_k=2.0,{FFL}@a4",
    f"gdrq-w4a4-g4-clip=gdrq:bits=4,groups=4,clip_k=3.0,{FFL}@a4",
    f"ste-w2a4-ffl=ste:bits=2,{FFL}@a4",
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--model", default="lenet5")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", nargs="+", default=DEFAULT_RUNS)
    p.add_argument("--max-train-examples", type=int, default=None)
    p.add_argument("--out", default="runs/bench-gdrq")
    p.add_argument("--skip-done", action="store_true", help="skip runs already in results.jsonl")
    args = p.parse_args()

    runs = [parse_run(s) for s in args.runs]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.jsonl"
    done = {}
    if results_path.exists():
        done = {r["name"]: r for r in map(json.loads, results_path.read_text().splitlines())}
    dataset = load_dataset(args.dataset, data_dir=args.data_dir)
    print(dataset.summary())
    preset = PRESETS.get(args.dataset, PRESETS["cifar10"])
    for name, method, method_config, act_bits in runs:
        if args.skip_done and name in done:
            continue
        config = TrainConfig(dataset=args.dataset, model=args.model, method=method,
                             method_config=method_config, act_bits=act_bits,
                             epochs=args.epochs, width=args.width, seed=args.seed,
                             workdir=str(out / name), progress=False,
                             max_train_examples=args.max_train_examples, **preset)
        t0 = time.time()
        report = train(config, dataset=dataset)
        metrics = [json.loads(line) for line in
                   Path(report["files"]["metrics"]).read_text().splitlines()]
        layers = [{k: layer[k] for k in ("path", "bits", "sqnr_db", "near_level_fraction")
                   if k in layer} | ({"group_scales": layer["group_scales"]}
                                     if "group_scales" in layer else {})
                  for layer in report["layers"]]
        entry = {"name": name, "method": method, "method_config": method_config,
                 "act_bits": act_bits, "seed": args.seed, "epochs": args.epochs,
                 "max_train_examples": args.max_train_examples,
                 "float": report["test_error_float"], "quantized": report["test_error_quantized"],
                 "images_per_second": statistics.median(m["images_per_second"] for m in metrics),
                 "seconds": time.time() - t0, "device": str(jax.devices()[0]),
                 "host": platform.node(), "layers": layers}
        done[name] = entry
        with open(results_path, "a") as f:
            f.write(json.dumps(entry) + "\n")
        print(f"{name}: quantized test error {100 * entry['quantized']:.2f} %", flush=True)

    lines = ["| run | weights | activations | test error (finalized) | images/s |",
             "|---|---|---|---|---|"]
    for name, method, method_config, act_bits in runs:
        r = done.get(name)
        if r is None:
            continue
        lines.append(f"| {name} | {method} {method_config or ''} | "
                     f"{'float' if act_bits is None else f'{act_bits}-bit'} | "
                     f"{100 * r['quantized']:.2f} % | {r['images_per_second']:.0f} |")
    print("\n".join(lines))
    (out / "table.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
