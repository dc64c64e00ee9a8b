"""ONNX export of trained runs, checked in onnxruntime against the numpy integer program and Flax.

For each case: a short training run (``python -m experiments.{mnist,cifar} ...``), then
``python -m experiments.export --workdir RUN --format onnx --check --json ...`` on every test
image. One JSON row per case is appended to ``--out`` when it is done (``--skip-done``
continues a killed benchmark). The cases are issue 30's: SYMOG W2A4 LeNet5 (MNIST), SYMOG W2A4
VGG7 x0.125 (CIFAR-10), GDRQ W4A4 LeNet5 and ResNet-20 x0.125 W2A8, every run with an 8-bit
image (``--input-bits 8``: the ONNX form needs 8-bit codes at every conv/dense input), with the
default kernels (``--onnx-kernels exact``: QLinearConv for every channel whose requantization
it is proven to reproduce, ConvInteger for the others) and with ``--onnx-kernels qlinear``
(QLinearConv on every layer that writes 8-bit codes), plus a W2A8 VGG7 (8-bit outputs: 255
switch points per channel to fit). Each row's ``ops`` counts say which kernels ran.

Usage (the rows recorded in RESULTS.md)::

    python benchmarks/onnx_checks.py --cifar-dir ../shared/data/cifar10-jpeg.tar.gz \\
        --mnist-dir ../shared/data/mnist-png.tar.gz --out benchmarks/results/onnx-checks.jsonl
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


def _vgg7_symog_flags(act_bits: int) -> list[str]:
    """SYMOG 2-bit VGG7 x0.125 with an 8-bit image, 1 float + 1 epoch on 20,000 images."""
    return ["--model", "vgg7", "--width", "0.125", "--method", "symog", "--bits", "2",
            "--act-bits", str(act_bits), "--input-bits", "8", "--float-start-epochs", "1",
            "--epochs", "1", "--max-train-examples", "20000"]


#: name -> (experiment, training flags, export flags)
CASES = {
    "symog-w2a4-lenet5": ("mnist", ["--model", "lenet5", "--method", "symog", "--bits", "2",
                                    "--act-bits", "4", "--input-bits", "8",
                                    "--float-start-epochs", "1", "--epochs", "2"], []),
    "symog-w2a4-lenet5-qlinear": ("symog-w2a4-lenet5", None, ["--onnx-kernels", "qlinear"]),
    "symog-w2a4-in8-vgg7x0.125": ("cifar", _vgg7_symog_flags(act_bits=4), []),
    "symog-w2a4-in8-vgg7x0.125-qlinear": ("symog-w2a4-in8-vgg7x0.125", None,
                                          ["--onnx-kernels", "qlinear"]),
    "symog-w2a8-in8-vgg7x0.125": ("cifar", _vgg7_symog_flags(act_bits=8), []),
    "symog-w2a8-in8-vgg7x0.125-qlinear": ("symog-w2a8-in8-vgg7x0.125", None,
                                          ["--onnx-kernels", "qlinear"]),
    "gdrq-w4a4-lenet5": ("mnist", ["--model", "lenet5", "--method", "gdrq", "--bits", "4",
                                   "--groups", "2",
                                   "--act-bits", "4", "--input-bits", "8",
                                   "--float-start-epochs", "1", "--epochs", "2"], []),
    "gdrq-w4a4-lenet5-qlinear": ("gdrq-w4a4-lenet5", None, ["--onnx-kernels", "qlinear"]),
    "ste-w2a8-in8-resnet20x0.125": ("cifar", ["--model", "resnet20", "--width", "0.125",
                                              "--method", "ste", "--bits", "2", "--act-bits",
                                              "8", "--input-bits", "8",
                                              "--float-start-epochs", "0", "--epochs", "1",
                                              "--max-train-examples", "20000"], []),
    "ste-w2a8-in8-resnet20x0.125-qlinear": ("ste-w2a8-in8-resnet20x0.125", None,
                                            ["--onnx-kernels", "qlinear"]),
}


def run_case(name: str, root: Path, args) -> dict:
    experiment, flags, export_flags = CASES[name]
    t0 = time.time()
    if flags is None:                       # another export of an earlier case's run
        workdir = root / experiment
    elif (root / name / "report.json").is_file():   # trained by an earlier invocation
        workdir = root / name
    else:
        workdir = root / name
        data = args.mnist_dir if experiment == "mnist" else args.cifar_dir
        cmd = [sys.executable, "-m", f"experiments.{experiment}", *flags, "--seed", "0",
               "--no-progress", "--workdir", str(workdir)]
        subprocess.run(cmd + (["--data-dir", data] if data else []), check=True)
    t1 = time.time()
    summary = root / f"{name}-onnx.json"
    subprocess.run([sys.executable, "-m", "experiments.export", "--workdir", str(workdir),
                    "--format", "onnx", "--check", "--json", str(summary), *export_flags],
                   check=True)
    row = json.loads(summary.read_text())
    row.pop("path", None)
    return {"case": name, "train_flags": flags, "export_flags": export_flags, **row,
            "seconds_train": round(t1 - t0, 1), "seconds_export_check": round(time.time() - t1, 1),
            "host": platform.node(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--cifar-dir", default=None, help="CIFAR-10 data (tfds if not given)")
    p.add_argument("--mnist-dir", default=None, help="MNIST data (tfds, else the 5k subset)")
    p.add_argument("--out", required=True, help="JSON lines file the rows are appended to")
    p.add_argument("--skip-done", action="store_true", help="skip cases already in --out")
    p.add_argument("--runs-dir", default=None,
                   help="keep the trained runs here (default: a temporary directory); a run "
                        "already finished there is exported again, not retrained")
    args = p.parse_args(argv)
    out = Path(args.out)
    done = set()
    if args.skip_done and out.exists():
        done = {json.loads(line)["case"] for line in out.read_text().splitlines() if line}
    with tempfile.TemporaryDirectory(prefix="onnx-checks-") as tmp:
        root = Path(args.runs_dir) if args.runs_dir else Path(tmp)
        for name in args.cases:
            if name in done:
                continue
            row = run_case(name, root, args)
            append_line(out, json_text(row, indent=None))
            print(f"{name}: onnxruntime vs program same class {100 * row['agreement_program']:.2f}"
                  f" % ({row['codes_differing']} codes differ), vs Flax "
                  f"{100 * row['agreement_flax']:.2f} % of {row['test_images']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
