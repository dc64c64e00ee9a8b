"""Step-time overhead of SYMOG transforms and straight-through fake quantization.

Times one jit-compiled train step (forward, backward, optimizer update) of LeNet5 and a VGG-style
net in three variants, on the same random batch:

* float: SGD with momentum;
* symog: the same optimizer chained with ``symog(bits=2)`` (prior pull + clipping);
* ste: float optimizer, kernels fake-quantized with straight-through rounding in the forward pass.

Prints the median step time of each and the ratios to float. Usage::

    python benchmarks/overhead.py                       # CPU-sized defaults
    python benchmarks/overhead.py --vgg-width 1 --batch-size 128 --repeats 50   # GPU
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import optax

import symog_jax
from symog_jax.models import create_model, init_variables


def make_step(model, tx, formats=None):
    def loss_fn(params, batch_stats, x, y):
        if formats is not None:
            params = symog_jax.fake_quantize(params, formats)
        variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
        logits, new = model.apply(variables, x, train=True, mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, new.get("batch_stats", {})

    @jax.jit
    def step(params, batch_stats, opt_state, x, y):
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, batch_stats, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    return step


def time_variant(model, variables, x, y, variant: str, repeats: int, bits: int) -> list[float]:
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    base = optax.sgd(0.01, momentum=0.9)
    formats = None
    if variant == "symog":
        tx = optax.chain(base, symog_jax.symog(bits, strength=0.01, sigma=1.0,
                                               sigma_in_steps=False))
    else:
        tx = base
        if variant == "ste":
            formats = symog_jax.init_formats(params, bits)
    step = make_step(model, tx, formats)
    opt_state = tx.init(params)
    state = (params, batch_stats, opt_state)
    for _ in range(3):  # compile and warm up
        *state, loss = step(*state, x, y)
    jax.block_until_ready(loss)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        *state, loss = step(*state, x, y)
        jax.block_until_ready((state, loss))
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--vgg-width", type=float, default=0.25)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3,
                   help="interleaved rounds per variant (median over all), to average out drift")
    p.add_argument("--bits", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()

    nets = [("lenet5", 1.0, (28, 28, 1)), ("vgg7", args.vgg_width, (32, 32, 3))]
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
          f"host {platform.processor() or platform.machine()}, batch {args.batch_size}")
    results = {}
    for name, width, shape in nets:
        model = create_model(name, 10, width=width)
        key = jax.random.PRNGKey(0)
        x = jax.random.normal(key, (args.batch_size,) + shape)
        y = jax.random.randint(key, (args.batch_size,), 0, 10)
        variables = init_variables(model, key, shape)
        times = {v: [] for v in ("float", "symog", "ste")}
        for _ in range(args.rounds):
            for variant in times:
                times[variant] += time_variant(model, variables, x, y, variant, args.repeats,
                                               args.bits)
        med = {v: statistics.median(t) for v, t in times.items()}
        results[f"{name}@{width}"] = {
            "median_ms": {v: 1e3 * m for v, m in med.items()},
            "ratio_symog": med["symog"] / med["float"], "ratio_ste": med["ste"] / med["float"]}
        print(f"{name} (width {width}): float {1e3 * med['float']:.2f} ms, symog "
              f"{1e3 * med['symog']:.2f} ms ({med['symog'] / med['float']:.3f}x), ste "
              f"{1e3 * med['ste']:.2f} ms ({med['ste'] / med['float']:.3f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
