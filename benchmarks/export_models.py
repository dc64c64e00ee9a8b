"""Integer export of every architecture: train a short run, export it, check it against Flax.

For each model: ``python -m experiments.{mnist,cifar} ... --act-bits 8 --input-bits 8`` (a short
straight-through W2A8 run: the check needs integer weights and quantized activations, not a good
network), then ``python -m experiments.export --workdir RUN --check --json ...``, which runs the
integer-only program on every test image and compares it with the fake-quantized Flax model.
One JSON row per model is appended to ``--out`` as soon as it is done (``--skip-done`` continues
a killed benchmark).

Usage (the rows recorded in RESULTS.md)::

    python benchmarks/export_models.py --cifar-dir ../shared/data/cifar10-jpeg.tar.gz \\
        --mnist-dir ../shared/data/mnist-png.tar.gz --out benchmarks/results/export-models.jsonl

``--fine-frac-bits 36 --fine-bits 48 --mult-bits 46`` checks the wide integer program (int64
fine stream and multipliers), which reproduces the float64 Flax model's codes; the default
settings are the 32-bit deployment form.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from symog_jax.files import append_line, json_text

MODELS = ("lenet5", "vgg7", "vgg11", "resnet20", "resnet56", "densenet40")


def train_command(model: str, workdir: Path, args) -> list[str]:
    experiment, data = (("mnist", args.mnist_dir) if model == "lenet5"
                        else ("cifar", args.cifar_dir))
    cmd = [sys.executable, "-m", f"experiments.{experiment}", "--model", model,
           "--method", "ste", "--bits", "2", "--act-bits", "8", "--input-bits", "8",
           "--float-start-epochs", "0", "--epochs", str(args.epochs),
           "--max-train-examples", str(args.max_train_examples), "--seed", "0",
           "--no-progress", "--workdir", str(workdir)]
    if model != "lenet5":
        cmd += ["--width", str(args.width)]
    if data:
        cmd += ["--data-dir", data]
    return cmd


def run_one(model: str, root: Path, args) -> dict:
    workdir = root / model
    t0 = time.time()
    subprocess.run(train_command(model, workdir, args), check=True)
    t1 = time.time()
    summary = root / f"{model}-check.json"
    subprocess.run([sys.executable, "-m", "experiments.export", "--workdir", str(workdir),
                    "--check", "--json", str(summary), "--fine-frac-bits",
                    str(args.fine_frac_bits), "--fine-bits", str(args.fine_bits),
                    "--mult-bits", str(args.mult_bits)], check=True)
    row = json.loads(summary.read_text())
    row.pop("accumulators", None)
    row.pop("workdir", None)
    return {"model": model, "width": 1.0 if model == "lenet5" else args.width,
            "method": "ste W2A8, 8-bit input", "epochs": args.epochs,
            "max_train_examples": args.max_train_examples, **row,
            "fine_bits": args.fine_bits, "mult_bits": args.mult_bits,
            "seconds_train": round(t1 - t0, 1), "seconds_export_check": round(time.time() - t1, 1),
            "host": platform.node(), "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--cifar-dir", default=None, help="CIFAR-10 data (tfds if not given)")
    p.add_argument("--mnist-dir", default=None, help="MNIST data (tfds, else the 5k subset)")
    p.add_argument("--width", type=float, default=0.125, help="width of the CIFAR models")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-train-examples", type=int, default=5000)
    p.add_argument("--fine-frac-bits", type=int, default=20, help="export setting")
    p.add_argument("--fine-bits", type=int, default=31, help="export setting")
    p.add_argument("--mult-bits", type=int, default=31, help="export setting")
    p.add_argument("--out", required=True, help="JSON lines file the rows are appended to")
    p.add_argument("--skip-done", action="store_true", help="skip models already in --out")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.max_train_examples < 1 or not args.width > 0:
        p.error("--epochs and --max-train-examples must be >= 1 and --width > 0")
    out = Path(args.out)
    done = set()
    if args.skip_done and out.exists():
        done = {json.loads(line)["model"] for line in out.read_text().splitlines() if line}
    with tempfile.TemporaryDirectory(prefix="export-models-") as tmp:
        for model in args.models:
            if model in done:
                continue
            row = run_one(model, Path(tmp), args)
            append_line(out, json_text(row, indent=None))
            print(f"{model}: same class as Flax float64 {100 * row['agreement']:.2f} %, as "
                  f"float32 {100 * row['agreement_float32']:.2f} % of {row['test_images']}, "
                  f"max |logit diff| {row['max_abs_logit_diff']:.3g}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
