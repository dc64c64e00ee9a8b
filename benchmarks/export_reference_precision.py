"""Integer-only inference vs the Flax fake-quantized model evaluated in float32 and in float64.

Tells whether the classes on which integer inference and the Flax model disagree come from the
Flax reference's float32 arithmetic (then the float64 reference would agree) or from the integer
pipeline itself (e.g. the fine 2**-F grid that holds the normalised input image).

Usage::

    python benchmarks/export_reference_precision.py runs/export-symog-vgg7 \
        ../shared/data/cifar10-jpeg.tar.gz
"""
import sys
import jax
import numpy as np
from symog_jax.pipelines.export import export_run
from symog_jax.export import integer_inference as ii
from symog_jax.quantizers.activations import quantize_activations

workdir, data_dir = sys.argv[1], sys.argv[2]
out = "/tmp/export_reference_precision.npz"
manifest, run = export_run(workdir, out, data_dir=data_dir)
ds = run["dataset"]
images = ds.test_images
model, prepare, hq = run["model"], run["prepare"], run["hq"]
stats = run["state"].batch_stats


def logits(dtype):
    def cast(t):
        return jax.tree_util.tree_map(
            lambda a: np.asarray(a, dtype) if np.asarray(a).dtype.kind == "f" else a, t)

    variables = {"params": cast(hq.params), **({"batch_stats": cast(stats)} if stats else {})}

    @jax.jit
    def apply(x):
        with quantize_activations(run["act_formats"]):
            return model.apply(variables, prepare(None, x, False).astype(dtype), train=False)

    return np.concatenate(
        [np.asarray(apply(images[i:i + 500])) for i in range(0, len(images), 500)])


program = ii.load_program(out)
_, li, _ = ii.run_integer(program, images, batch_size=200)
l32 = logits(np.float32)
jax.config.update("jax_enable_x64", True)
l64 = logits(np.float64)
for name, ref in (("float32", l32), ("float64", l64)):
    agree = ref.argmax(1) == li.argmax(1)
    print(f"integer vs Flax {name}: {int((~agree).sum())} of {len(agree)} classes differ, "
          f"max |logit diff| {np.abs(ref - li).max():.3g}, images with diff > 1e-4: "
          f"{int((np.abs(ref - li).max(1) > 1e-4).sum())}")
print("float32 vs float64 Flax: classes differ", int((l32.argmax(1) != l64.argmax(1)).sum()))
