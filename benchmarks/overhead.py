"""Step-time overhead of each training method over float training, on the trainer's own step.

Usage::

    python benchmarks/overhead.py                       # CPU-sized defaults (batch 64)
    python benchmarks/overhead.py --act-bits 4          # every method with 4-bit activations
    python benchmarks/overhead.py --vgg-width 1 --batch-size 128 --repeats 50   # GPU

What it measures: the median wall time of one call of the jit-compiled train step that
``symog_jax.training.train()`` runs (``make_train_step``: on-device normalisation and, for
3-channel images, crop/flip augmentation; forward; backward; the method's optimizer transform
around the run's base optimizer), timed with ``jax.block_until_ready`` on the returned state and
metrics, after compilation and warm-up. The state, optimizer and step are built exactly as
``train()`` builds them, from the same library functions (``probe_model``, ``RunInfo``,
``make_method``, ``base_optimizer``, ``method.transform``, ``TrainState``, ``make_prepare``,
``make_train_step``) and a ``TrainConfig`` with the trainer's defaults (SGD with Nesterov
momentum 0.9, lr 0.05 cosine, weight decay 5e-4 where the method puts it). Nets: LeNet5 on
28x28x1 and VGG7 (width ``--vgg-width``, 0.25 by default) on 32x32x3, random uint8 images
already on the device (host-to-device copies are the same for every method and left out).
Methods: ``float``; ``symog`` (``--bits``, 2 by default; prior active from the first step);
``ste`` (``--bits``); ``syq`` (ternary, one learned scale per kernel position: ``pixel``); with
``--act-bits N`` every method also quantizes its activations (N bits, calibrated ranges).

Each method's step is compiled once per net; then ``--rounds`` rounds run ``--repeats`` steps
of every method in turn (interleaved, to average out drift), and the median over all rounds is
printed with its ratio to float's.

Targets: SYMOG <= 1.05x float step time; STE (straight-through fake quantization) <= 1.15x.
SYQ has no target (reported for comparison).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import numpy as np

from symog_jax.files import write_json_atomic
from symog_jax.data import ImageDataset
from symog_jax.models import count_params
from symog_jax.quantizers.activations import ActivationQuantConfig
from symog_jax.training import TrainConfig
from symog_jax.training import CALIBRATION_BATCH, build_run

TARGETS = {"symog": 1.05, "ste": 1.15}
#: (net, data set it trains on, image shape, training examples: sets steps per epoch).
NETS = [("lenet5", "mnist", (28, 28, 1), 60000), ("vgg7", "cifar10", (32, 32, 3), 50000)]
WARMUP_STEPS = 3


def method_configs(bits: int) -> dict[str, dict]:
    return {"float": {"bits": bits}, "symog": {"bits": bits}, "ste": {"bits": bits},
            "syq": {"eta": 0.05, "granularity": "pixel", "float_first_last": False}}


def synthetic_dataset(name: str, shape: tuple[int, int, int], n: int, seed: int = 0):
    """Random uint8 images and labels (only their statistics and shapes matter here)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n,) + shape, dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.int32)
    return ImageDataset(name=name, train_images=images, train_labels=labels,
                        test_images=images[:1], test_labels=labels[:1],
                        class_names=tuple(str(i) for i in range(10)),
                        source="random uint8 (benchmarks/overhead.py)")


def build_step(config: TrainConfig, dataset: ImageDataset, steps_per_epoch: int):
    """The train step and initial state of ``config``: the trainer's own ``build_run``."""
    built = build_run(config, dataset, dataset.train_images, steps_per_epoch)
    return built.train_step, built.state, count_params(built.state.params)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--vgg-width", type=float, default=0.25)
    p.add_argument("--repeats", type=int, default=30, help="timed steps per method and round")
    p.add_argument("--rounds", type=int, default=3,
                   help="interleaved rounds per method (median over all), to average out drift")
    p.add_argument("--bits", type=int, default=2, help="weight bits of symog, ste (and float's "
                                                       "post-training report)")
    p.add_argument("--act-bits", type=int, default=None,
                   help="quantize the activations of every method to N bits (default: float)")
    p.add_argument("--methods", nargs="+", default=list(method_configs(2)),
                   help="methods to time (float is always timed: it is the reference)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()

    configs = method_configs(args.bits)
    unknown = sorted(set(args.methods) - set(configs))
    if unknown:
        p.error(f"unknown method(s) {unknown}; choose from {sorted(configs)}")
    methods = ["float"] + [m for m in args.methods if m != "float"]
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
          f"host {platform.processor() or platform.machine()}, batch {args.batch_size}, "
          f"activations {'float' if args.act_bits is None else f'{args.act_bits}-bit'}")
    results = {}
    for net, data_name, shape, n_train in NETS:
        width = args.vgg_width if net == "vgg7" else 1.0
        dataset = synthetic_dataset(data_name, shape, max(CALIBRATION_BATCH, args.batch_size))
        rng = np.random.default_rng(1)
        x = jax.device_put(rng.integers(0, 256, (args.batch_size,) + shape, dtype=np.uint8))
        y = jax.device_put(rng.integers(0, 10, args.batch_size).astype(np.int32))
        steps, states, tags = {}, {}, {}
        for m in methods:
            config = TrainConfig(dataset=data_name, model=net, width=width, method=m,
                                 method_config=configs[m],
                                 acts=ActivationQuantConfig(bits=args.act_bits),
                                 batch_size=args.batch_size, progress=False)
            steps[m], state, num_params = build_step(config, dataset, n_train // args.batch_size)
            tags[m] = config.describe()
            for _ in range(WARMUP_STEPS):  # compile and warm up
                state, metrics = steps[m](state, x, y)
            states[m] = jax.block_until_ready(state)
            if not np.isfinite(float(metrics["loss"])):
                raise RuntimeError(f"{tags[m]} on {net}: non-finite loss after warm-up")
        times = {m: [] for m in methods}
        for _ in range(args.rounds):
            for m in methods:
                step, state = steps[m], states[m]
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    state, metrics = step(state, x, y)
                    jax.block_until_ready((state, metrics))
                    times[m].append(time.perf_counter() - t0)
                states[m] = state
        med = {m: statistics.median(t) for m, t in times.items()}
        ratio = {m: med[m] / med["float"] for m in methods}
        results[f"{net}@{width}"] = {"num_params": num_params, "tags": tags,
                                     "median_ms": {m: 1e3 * v for m, v in med.items()},
                                     "ratio": ratio, "steps_timed": len(times["float"])}
        parts = [f"float {1e3 * med['float']:.2f} ms"] + [
            f"{m} {1e3 * med[m]:.2f} ms ({ratio[m]:.3f}x"
            + (f", target <= {TARGETS[m]:.2f}x" if m in TARGETS else "") + ")"
            for m in methods if m != "float"]
        print(f"{net} (width {width}, {num_params:,} params): " + ", ".join(parts))
    if args.json:
        write_json_atomic(args.json, {"device": str(device), "args": vars(args),
                                      "targets": TARGETS, "results": results})


if __name__ == "__main__":
    main()
