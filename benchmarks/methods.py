"""Method comparison on one data set and model: every run the same budget, results as they come.

Each run is ``name=method[:field=value,...][@aN]`` (``@aN``: N-bit activations). The default
list is the issue-6 table: float, SYQ ternary and binary weights with float and 8-bit
activations for the three granularities, and W2A2 / W2A4 with STE and SYMOG weights. Results are
appended to ``<out>/results.jsonl`` after every run (a killed benchmark keeps what it finished;
``--skip-done`` continues it) and printed as a markdown table at the end.

Usage (the budget recorded in RESULTS.md; about 1 min per epoch and run on 2 CPU cores)::

    python benchmarks/methods.py --dataset mnist --data-dir ../shared/data/mnist-png.tar.gz \\
        --epochs 5 --out runs/bench-methods --skip-done
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import jax

from symog_jax.files import append_line, json_text, write_text_atomic
from symog_jax.data import load_dataset
from symog_jax.quantizers.activations import ActivationQuantConfig
from symog_jax.training import TrainConfig, train

SYMOG_MNIST = "bits=2,warmup_epochs=1.0,strength_start=1e-5,strength_end=0.1"
DEFAULT_RUNS = [
    "float=float",
    "syq-ternary-pixel-a8=syq:granularity=pixel,float_first_last=false@a8",
    "syq-ternary-layer-a8=syq:granularity=layer,float_first_last=false@a8",
    "syq-ternary-channel-a8=syq:granularity=channel,float_first_last=false@a8",
    "ste-w2a2=ste:bits=2@a2",
    f"symog-w2a2=symog:{SYMOG_MNIST}@a2",
    "ste-w2a4=ste:bits=2@a4",
    f"symog-w2a4=symog:{SYMOG_MNIST}@a4",
    "syq-ternary-pixel=syq:granularity=pixel,float_first_last=false",
    "syq-ternary-layer=syq:granularity=layer,float_first_last=false",
    "syq-ternary-channel=syq:granularity=channel,float_first_last=false",
    "syq-binary-pixel-a8=syq:eta=0,granularity=pixel,float_first_last=false@a8",
    "syq-binary-layer-a8=syq:eta=0,granularity=layer,float_first_last=false@a8",
    "syq-binary-channel-a8=syq:eta=0,granularity=channel,float_first_last=false@a8",
    "syq-binary-pixel=syq:eta=0,granularity=pixel,float_first_last=false",
    "syq-binary-layer=syq:eta=0,granularity=layer,float_first_last=false",
    "syq-binary-channel=syq:eta=0,granularity=channel,float_first_last=false",
]
PRESETS = {
    "mnist": dict(optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=128),
    "cifar10": dict(optimizer="sgd", lr=0.05, weight_decay=5e-4, batch_size=128),
}


def _value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_run(spec: str) -> tuple[str, str, dict, int | None]:
    """``'name=method:k=v,k=v@a8'`` -> (name, method, method_config, act_bits)."""
    name, _, rest = spec.partition("=")
    rest, _, act = rest.partition("@a")
    method, _, fields = rest.partition(":")
    config = {k: _value(v) for k, v in (kv.split("=") for kv in fields.split(",") if kv)}
    return name, method, config, int(act) if act else None


def main(argv=None, *, default_runs=DEFAULT_RUNS, default_out: str = "runs/bench-methods",
         description: str | None = None, layer_details: bool = False) -> None:
    """Runs the benchmark; ``benchmarks/gdrq.py`` calls it with its own runs and
    ``layer_details=True`` (each layer's bits, SQNR, near-level fraction, group scales)."""
    p = argparse.ArgumentParser(description=description or __doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--model", default="lenet5")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", nargs="+", default=default_runs)
    p.add_argument("--max-train-examples", type=int, default=None)
    p.add_argument("--out", default=default_out)
    p.add_argument("--skip-done", action="store_true", help="skip runs already in results.jsonl")
    args = p.parse_args(argv)

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
                             method_config=method_config,
                             acts=ActivationQuantConfig(bits=act_bits),
                             epochs=args.epochs, width=args.width, seed=args.seed,
                             workdir=str(out / name), progress=False,
                             max_train_examples=args.max_train_examples, **preset)
        t0 = time.time()
        report = train(config, dataset=dataset)
        metrics = [json.loads(line) for line in
                   (Path(config.workdir) / report["files"]["metrics"]).read_text().splitlines()]
        entry = {"name": name, "method": method, "method_config": method_config,
                 "act_bits": act_bits, "seed": args.seed, "epochs": args.epochs,
                 "max_train_examples": args.max_train_examples,
                 "float": report["test_error_float"], "quantized": report["test_error_quantized"],
                 "images_per_second": statistics.median(m["images_per_second"] for m in metrics),
                 "seconds": time.time() - t0, "device": str(jax.devices()[0]),
                 "host": platform.node()}
        if layer_details:
            entry["layers"] = [
                {k: layer[k] for k in ("path", "bits", "sqnr_db", "near_level_fraction",
                                       "group_scales") if k in layer}
                for layer in report["layers"]]
        done[name] = entry
        append_line(results_path, json_text(entry, indent=None))
        print(f"{name}: quantized test error {100 * entry['quantized']:.2f} %", flush=True)

    lines = ["| run | weights | activations | test error (finalized) | latent/float weights |"
             " images/s |", "|---|---|---|---|---|---|"]
    for name, method, method_config, act_bits in runs:
        r = done.get(name)
        if r is None:
            continue
        lines.append(f"| {name} | {method} {method_config or ''} | "
                     f"{'float' if act_bits is None else f'{act_bits}-bit'} | "
                     f"{100 * r['quantized']:.2f} % | {100 * r['float']:.2f} % | "
                     f"{r['images_per_second']:.0f} |")
    print("\n".join(lines))
    write_text_atomic(out / "table.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
