"""The integer program of EVERY registry model agrees with its fake-quantized Flax forward.

Random data, no training: a tiny network (width 0.125, or small pruned widths), random weights
rounded to 4-bit fixed-point codes, random batch-norm parameters and statistics, an 8-bit
quantized image (``input_bits 8``) and 8-bit activations at every other conv/dense input,
their steps set by hand. The reference is the Flax model itself
(:func:`~symog_jax.quantizers.activations.quantize_activations`), which shares no code with the
numpy interpreter; the program goes through the export file (written, then reloaded without
the Flax model). Parameter shapes come from the model's recorded structure (no init), and the
Flax forward is jitted with XLA's optimisation passes off, so each case takes seconds.

The bound on the logits: the integer program holds tensors the Flax model keeps in float
(residual stream, concatenations, pooled sums) at the fine step 2**-20 and requantizes with
31-bit multipliers, so an 8-bit code differs where Flax's float32 value lies within ~1e-6 of a
rounding boundary; such a flip moves a logit by about one activation step times a weight.
``MAX_LOGIT_DIFF`` allows a few of those on these tiny networks.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symog_jax.export import integer_inference as ii
from symog_jax.export.integer import export_integer
from symog_jax.quantizers.hard_quantize import HardQuantized
from symog_jax.models import MODEL_NAMES, create_model
from symog_jax.numerics.formats import symmetric_format, unsigned_format
from symog_jax.quantizers.activations import quantize_activations

#: Smallest input each model allows (two pooling steps fewer would empty a map).
SHAPES = {"lenet5": (16, 16, 1), "vgg11": (32, 32, 3), "resnet18": (32, 32, 3),
          "resnet50": (32, 32, 3)}
MAX_LOGIT_DIFF = 0.05
CLASSES = 5


#: Deeper variants of architectures the fast tier already covers: end-to-end tier only.
SLOW_MODELS = ("densenet_bc100", "resnet32", "resnet50")


def _cases():
    for name in MODEL_NAMES:
        yield (pytest.param(name, None, marks=pytest.mark.e2e) if name in SLOW_MODELS
               else (name, None))
    yield "resnet20", (3, 2, 0, 2, 1, 3, 2, 1, 2, 3, 1, 2)      # pruned: stream3 adds nothing
    yield "densenet40", "pruned"


def _model(name, widths):
    model = create_model(name, CLASSES, width=0.125)
    if widths == "pruned":
        widths = tuple(max(1, w - i % 2) for i, w in enumerate(model.channel_widths()))
    if widths is not None:
        model = create_model(name, CLASSES, widths=widths)
    return model


def _nest(flat: dict) -> dict:
    out: dict = {}
    for path, value in flat.items():
        node = out
        *parents, leaf = path.split("/")
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return out


def _random_network(structure, rng):
    """Random 4-bit kernels (per-tensor symmetric codes), float biases and BN, BN statistics;
    the shapes are the structure's traced parameter shapes."""
    params, codes, formats = {}, {}, {}
    for path, shape in structure.params.items():
        if path.endswith("/kernel"):
            fan_in = math.prod(shape[:-1])
            w = rng.normal(0, math.sqrt(2 / fan_in), shape)
            frac = int(math.floor(math.log2(7 / np.abs(w).max())))
            q = np.clip(np.rint(w * 2.0 ** frac), -7, 7).astype(np.int32)
            params[path] = (q * np.float32(2.0 ** -frac)).astype(np.float32)
            codes[path], formats[path] = q, symmetric_format(4, frac)
        else:
            lo, hi = (0.5, 1.5) if path.endswith("/scale") else (-0.3, 0.3)
            params[path] = rng.uniform(lo, hi, shape).astype(np.float32)
            codes[path], formats[path] = None, None
    stats = {}
    for node in structure.nodes:
        if node.op == "batch_norm":
            c = node.shape[-1]
            stats[node.path + "/mean"] = rng.normal(0, 0.5, c).astype(np.float32)
            stats[node.path + "/var"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
    hq = HardQuantized(_nest(params), _nest(codes), _nest(formats), [])
    return hq, _nest(stats)


def _act_formats(structure):
    """8-bit formats by hand: the image signed (step 1/32, |x| < 4), the inputs of the other
    conv/dense layers unsigned with step 1/16 (values up to ~16; larger ones saturate, in
    Flax and in the program alike)."""
    paths = [n.path for n in structure.nodes if n.op in ("conv", "dense")]
    return {p: symmetric_format(8, 5) if i == 0 else unsigned_format(8, 4)
            for i, p in enumerate(paths)}


_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _random_case(name, widths, tmp_path, *, seed: int, images: int, **export_settings):
    """A random network of ``name`` (``_random_network``, ``_act_formats``), random uint8
    images, the normalised float32 input and the exported integer program's logits:
    ``(model, hq, stats, acts, x, logits)``."""
    shape = SHAPES.get(name, (8, 8, 3))
    model = _model(name, widths)
    rng = np.random.default_rng(seed)
    structure = model.structure(shape)
    hq, stats = _random_network(structure, rng)
    acts = _act_formats(structure)
    pixels = rng.integers(0, 256, (images,) + shape, dtype=np.uint8)
    mean = np.full(shape[-1], 0.45, np.float32)
    std = np.full(shape[-1], 0.25, np.float32)
    x = np.asarray((jnp.asarray(pixels, jnp.float32) / 255.0 - mean) / std)   # float32, as run
    export_integer(hq, stats, acts, name, tmp_path / "n.npz", num_classes=CLASSES,
                   width=0.125, widths=getattr(model, "widths", None), image_shape=shape,
                   input_mean=mean, input_std=std, **export_settings)
    program = ii.load_program(tmp_path / "n.npz")          # no Flax model from here on
    _, logits, _ = ii.run_integer(program, pixels)
    return model, hq, stats, acts, x, logits


def _flax_logits(model, acts, variables, x) -> np.ndarray:
    """The fake-quantized Flax model (activations quantized to ``acts``), jit-compiled."""
    def forward(variables, x):
        with quantize_activations(acts):
            return model.apply(variables, x, train=False)
    return np.asarray(jax.jit(forward, compiler_options=_FAST_COMPILE)(variables, x))


@pytest.mark.parametrize("name,widths", list(_cases()))
def test_integer_program_matches_fake_quantized_flax(name, widths, tmp_path):
    model, hq, stats, acts, x, logits = _random_case(name, widths, tmp_path, seed=0, images=4)
    variables = {"params": hq.params, **({"batch_stats": stats} if stats else {})}
    ref = _flax_logits(model, acts, variables, x)
    diff = float(np.abs(ref - logits).max())
    print(f"{name} widths={widths}: max |logit difference| {diff:.3g} "
          f"(logits up to {np.abs(ref).max():.3g})")
    assert np.array_equal(ref.argmax(1), logits.argmax(1))
    assert diff <= MAX_LOGIT_DIFF


@pytest.mark.parametrize("name", ["resnet20", pytest.param("densenet40", marks=pytest.mark.e2e),
                                  pytest.param("vgg7", marks=pytest.mark.e2e)])
def test_wide_program_reproduces_the_float64_flax_model(name, tmp_path):
    """With a 2**-36 fine step in 48-bit codes and 46-bit multipliers (31-bit on DenseNet's
    fine-stream batch norms, multiplied exactly by ``requantize_wide``), every code equals
    the Flax model's evaluated in float64: the logits agree to ~1e-9, far below one flipped
    activation code (a flip moves a logit by ~1e-2 here)."""
    model, hq, stats, acts, x, logits = _random_case(
        name, None, tmp_path, seed=1, images=8, fine_frac_bits=36, fine_bits=48, mult_bits=46)
    with jax.enable_x64(True):
        variables = jax.tree.map(lambda a: np.asarray(a, np.float64),
                                 {"params": hq.params, "batch_stats": stats})
        ref = _flax_logits(model, acts, variables, x.astype(np.float64))
    assert ref.dtype == np.float64
    np.testing.assert_allclose(logits, ref, rtol=0, atol=1e-8)
