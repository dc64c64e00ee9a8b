"""Inference speed and size of integer networks: Flax float32, the JAX integer path, onnxruntime.

Usage::

    python benchmarks/inference.py --out benchmarks/results/inference-2026-12-06.json
    python benchmarks/inference.py --nets lenet5-w2a8 --rounds 3       # a quick look

What it measures, in one process, per network: images/s at batch 1 and batch 100 (the median
over ``--rounds`` >= 5 rounds; a round times ``--repeats`` calls after warm-up) for

* ``flax_f32``: the Flax model, float32 parameters, ``jax.jit`` of ``apply`` (normalisation
  inside), no activation quantization -- the float deployment;
* ``jax_int``: :func:`symog_jax.export.integer_jax.integer_function` (int8 x int8 -> int32
  convs/matmuls, int64 requantization);
* ``ort_f32``: onnxruntime on :func:`symog_jax.export.onnx.program_to_float_onnx` (the same
  network in float32 ONNX);
* ``ort_int``: onnxruntime on :func:`symog_jax.export.onnx.program_to_onnx` (``qlinear=True``:
  QLinearConv on every layer writing 8-bit codes);
* ``ort_int_exact``: the same with ``qlinear="exact"`` (the CLI's default: QLinearConv only on
  the channels with a proven-exact fit, ConvInteger for the others);

and the on-disk sizes: the ``.npz`` export (packed weight codes) vs float32 parameters, and the
two ONNX files. Networks are random (random weight codes and batch norm, 8-bit image and
activations; speed does not depend on training): LeNet5 W2A8 (28x28x1), VGG7 W2A8 and W8A8 at
width 0.25 and 1.0, ResNet-20 W2A8 (32x32x3). onnxruntime gets ``intra_op_num_threads`` =
the CPU count and graph optimisation level ``ORT_ENABLE_ALL``; XLA uses its defaults.

Also reported per ONNX network: the time per op type (onnxruntime's profiler, batch 100), to
show where the time goes. Peak memory at batch 100: for onnxruntime, the peak resident set of a
fresh process that imports only numpy and onnxruntime, loads the model and runs one batch,
above what its imports hold (``ort_*_peak_rss_mb``); for the two jitted JAX functions, XLA's
compiled memory analysis (arguments + outputs + temporaries, ``*_xla_bytes``; parameters that
XLA embeds as constants are not in it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from symog_jax.files import write_json_atomic  # noqa: E402
from symog_jax.export import integer_inference as ii  # noqa: E402
from symog_jax.export.integer import export_integer  # noqa: E402
from symog_jax.export.integer_jax import integer_function  # noqa: E402
from symog_jax.export.onnx import (onnx_op_counts, program_to_float_onnx,  # noqa: E402
                                   program_to_onnx, save_onnx)
from symog_jax.models import create_model  # noqa: E402
from symog_jax.numerics.formats import symmetric_format, unsigned_format  # noqa: E402
from symog_jax.quantizers.hard_quantize import HardQuantized  # noqa: E402

NETS = {"lenet5-w2a8": ("lenet5", 2, 1.0, (28, 28, 1)),
        "vgg7-w2a8-x0.25": ("vgg7", 2, 0.25, (32, 32, 3)),
        "vgg7-w8a8-x0.25": ("vgg7", 8, 0.25, (32, 32, 3)),
        "vgg7-w2a8-x1": ("vgg7", 2, 1.0, (32, 32, 3)),
        "vgg7-w8a8-x1": ("vgg7", 8, 1.0, (32, 32, 3)),
        "resnet20-w2a8": ("resnet20", 2, 1.0, (32, 32, 3))}


def _nest(flat: dict) -> dict:
    out: dict = {}
    for path, value in flat.items():
        node = out
        *parents, leaf = path.split("/")
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return out


def random_network(model, shape, bits: int, rng):
    """``(hq, batch_stats, act_formats)``: random ``bits``-bit symmetric weight codes (per
    tensor), random BN, an 8-bit signed image format and 8-bit unsigned activations."""
    structure = model.structure(shape)
    params, codes, formats = {}, {}, {}
    qmax = 2 ** (bits - 1) - 1
    for path, pshape in structure.params.items():
        if path.endswith("/kernel"):
            w = rng.normal(0, math.sqrt(2 / math.prod(pshape[:-1])), pshape)
            frac = int(math.floor(math.log2(qmax / np.abs(w).max())))
            q = np.clip(np.rint(w * 2.0 ** frac), -qmax, qmax).astype(np.int32)
            params[path] = (q * np.float32(2.0 ** -frac)).astype(np.float32)
            codes[path], formats[path] = q, symmetric_format(bits, frac)
        else:
            lo, hi = (0.5, 1.5) if path.endswith("/scale") else (-0.3, 0.3)
            params[path] = rng.uniform(lo, hi, pshape).astype(np.float32)
            codes[path], formats[path] = None, None
    stats = {}
    for node in structure.nodes:
        if node.op == "batch_norm":
            c = node.shape[-1]
            stats[node.path + "/mean"] = rng.normal(0, 0.5, c).astype(np.float32)
            stats[node.path + "/var"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
    layers = [n.path for n in structure.nodes if n.op in ("conv", "dense")]
    acts = {p: symmetric_format(8, 5) if i == 0 else unsigned_format(8, 4)
            for i, p in enumerate(layers)}
    return HardQuantized(_nest(params), _nest(codes), _nest(formats), []), _nest(stats), acts


def _median_rate(fn, batch: int, rounds: int, repeats: int) -> float:
    fn()
    fn()                                                   # warm-up (and compile)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        times.append((time.perf_counter() - t0) / repeats)
    return batch / statistics.median(times)


def _session(path, profile: bool = False):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count() or 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(path).with_suffix(""))
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


_RSS_SCRIPT = """
import sys
import numpy as np, onnxruntime as ort
def hwm():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")                       # reset the peak to the current resident set
before = hwm()
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
s.run(None, {"images": np.zeros((100,) + tuple(map(int, sys.argv[2:])), np.uint8)})
print(hwm() - before)
"""


def _peak_rss_mb(path, shape) -> float | None:
    """Peak resident memory (MB) that loading ``path`` and running one batch of 100 adds to a
    bare numpy + onnxruntime process (Linux: peak reset through ``/proc/self/clear_refs``
    after the imports); None where that is not available."""
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(path), *map(str, shape)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return None
    return round(int(out.stdout.split()[-1]) / 1024.0, 1)


def _xla_bytes(fn, images) -> int:
    """Arguments + outputs + temporaries of ``fn`` compiled for ``images`` (XLA's analysis)."""
    m = fn.lower(images).compile().memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)


def _jax_int_xla_bytes(jax_int, images) -> int:
    with jax.enable_x64(True):
        return _xla_bytes(jax_int.jitted, jnp.asarray(images, jnp.uint8))


def _op_profile(path, images) -> dict:
    """``{op_type: ms per batch}`` from onnxruntime's profiler (5 runs, mean)."""
    sess = _session(path, profile=True)
    sess.run(None, {"images": images})
    for _ in range(5):
        sess.run(None, {"images": images})
    trace = json.loads(Path(sess.end_profiling()).read_text())
    per_op: dict = {}
    for ev in trace:
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
            op = ev.get("args", {}).get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + ev["dur"] / 1000.0 / 6
    return {k: round(v, 3) for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])}


def bench_net(key: str, rounds: int, repeats: dict, tmp: Path) -> dict:
    name, bits, width, shape = NETS[key]
    rng = np.random.default_rng(0)
    model = create_model(name, 10, width=width)
    hq, stats, acts = random_network(model, shape, bits, rng)
    mean, std = np.full(shape[-1], 0.45, np.float32), np.full(shape[-1], 0.25, np.float32)
    manifest = export_integer(hq, stats, acts, name, tmp / f"{key}.npz", num_classes=10,
                              width=width, image_shape=shape, input_mean=mean, input_std=std)
    program = ii.load_program(tmp / f"{key}.npz")
    q_path, f_path = tmp / f"{key}.onnx", tmp / f"{key}-f32.onnx"
    q_model = program_to_onnx(program, shape)
    q_bytes = save_onnx(q_model, q_path)
    e_path = tmp / f"{key}-exact.onnx"
    e_model = program_to_onnx(program, shape, qlinear="exact")
    save_onnx(e_model, e_path)
    f_bytes = save_onnx(program_to_float_onnx(program, shape, input_mean=mean, input_std=std),
                        f_path)
    variables = {"params": hq.params, **({"batch_stats": stats} if stats else {})}

    @jax.jit
    def flax_f32(images):
        x = (images.astype(np.float32) / 255.0 - mean) / std
        return model.apply(variables, x, train=False)

    jax_int = integer_function(program)
    q_sess, f_sess, e_sess = _session(q_path), _session(f_path), _session(e_path)
    row = {"net": key, "model": name, "weight_bits": bits, "act_bits": 8, "width": width,
           "image_shape": list(shape),
           "bytes": {"npz_packed": manifest["file_bytes"],
                     "float32_params": manifest["float32_bytes"],
                     "onnx_int": q_bytes, "onnx_f32": f_bytes},
           "onnx_int_ops": onnx_op_counts(q_model),
           "onnx_int_exact_ops": onnx_op_counts(e_model), "images_per_s": {}}
    for batch in (1, 100):
        images = rng.integers(0, 256, (batch,) + shape, dtype=np.uint8)
        fns = {"flax_f32": lambda: flax_f32(images).block_until_ready(),
               "jax_int": lambda: jax_int(images).block_until_ready(),
               "ort_f32": lambda: f_sess.run(None, {"images": images}),
               "ort_int": lambda: q_sess.run(None, {"images": images}),
               "ort_int_exact": lambda: e_sess.run(None, {"images": images})}
        row["images_per_s"][f"batch{batch}"] = {
            k: round(_median_rate(fn, batch, rounds, repeats[batch]), 1) for k, fn in fns.items()}
        if batch == 100:
            row["ort_int_ms_per_op_batch100"] = _op_profile(q_path, images)
            row["ort_f32_ms_per_op_batch100"] = _op_profile(f_path, images)
            row["memory_batch100"] = {
                "ort_int_peak_rss_mb": _peak_rss_mb(q_path, shape),
                "ort_int_exact_peak_rss_mb": _peak_rss_mb(e_path, shape),
                "ort_f32_peak_rss_mb": _peak_rss_mb(f_path, shape),
                "flax_f32_xla_bytes": _xla_bytes(flax_f32, images),
                "jax_int_xla_bytes": _jax_int_xla_bytes(jax_int, images)}
    r = row["images_per_s"]["batch100"]
    row["ort_int_time_over_flax_f32_batch100"] = round(r["flax_f32"] / r["ort_int"], 3)
    row["jax_int_time_over_flax_f32_batch100"] = round(r["flax_f32"] / r["jax_int"], 3)
    row["ort_int_exact_time_over_flax_f32_batch100"] = round(r["flax_f32"] / r["ort_int_exact"],
                                                             3)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats-batch1", type=int, default=20)
    p.add_argument("--repeats-batch100", type=int, default=3)
    p.add_argument("--out", default=None, help="write the JSON here")
    args = p.parse_args(argv)
    if args.rounds < 1:
        raise SystemExit("--rounds must be >= 1")
    import onnxruntime as ort
    result = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or
              platform.machine(), "cpu_count": os.cpu_count(),
              "load_average_start": list(os.getloadavg()), "jax": jax.__version__,
              "jax_backend": jax.default_backend(), "onnxruntime": ort.__version__,
              "rounds": args.rounds, "nets": []}
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.nets:
            row = bench_net(key, args.rounds, {1: args.repeats_batch1,
                                               100: args.repeats_batch100}, Path(tmp))
            print(json.dumps({k: row[k] for k in ("net", "images_per_s", "bytes",
                                                  "ort_int_time_over_flax_f32_batch100")}),
                  flush=True)
            result["nets"].append(row)
    result["load_average_end"] = list(os.getloadavg())
    if args.out:
        write_json_atomic(args.out, result, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
