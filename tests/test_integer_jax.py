"""The jit-compiled JAX integer path gives the numpy integer program's codes bit for bit.

Random tiny registry networks (the setup of tests/test_integer_program_models.py: 4-bit
weight codes, random biases and batch norm, an 8-bit image, 8-bit activations), through the
export file; the numpy interpreter (:mod:`symog_jax.export.integer_inference`) is the reference.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from symog_jax.export import integer_inference as ii
from symog_jax.export.integer import export_integer
from symog_jax.export.integer_jax import integer_function, run_integer_jax
from symog_jax.models import MODEL_NAMES

from test_integer_program_models import (CLASSES, SHAPES, _act_formats, _model,
                                         _random_network)

FAST = ("lenet5", "vgg7", "resnet20")


def _program(name, tmp_path, *, act_formats=True, images=16):
    shape = SHAPES.get(name, (32, 32, 3) if name == "vgg7" else (8, 8, 3))
    model = _model(name, None)
    rng = np.random.default_rng(1)
    structure = model.structure(shape)
    hq, stats = _random_network(structure, rng)
    acts = _act_formats(structure) if act_formats else {}
    mean = np.full(shape[-1], 0.45, np.float32)
    std = np.full(shape[-1], 0.25, np.float32)
    export_integer(hq, stats, acts, name, tmp_path / "n.npz", num_classes=CLASSES,
                   width=0.125, image_shape=shape, input_mean=mean, input_std=std)
    imgs = rng.integers(0, 256, (images,) + shape, dtype=np.uint8)
    return ii.load_program(tmp_path / "n.npz"), imgs


def _check(name, tmp_path, **kw):
    program, images = _program(name, tmp_path, **kw)
    ref_codes, ref_logits, _ = ii.run_integer(program, images, exact_int=True)
    codes, logits = run_integer_jax(program, images, batch_size=8)
    assert codes.dtype == np.int64
    np.testing.assert_array_equal(codes, ref_codes)
    np.testing.assert_array_equal(logits, ref_logits)


@pytest.mark.parametrize("name", FAST)
def test_jax_integer_path_gives_the_programs_codes(name, tmp_path):
    _check(name, tmp_path)


@pytest.mark.e2e
@pytest.mark.parametrize("name", [n for n in MODEL_NAMES if n not in FAST])
def test_jax_integer_path_every_model(name, tmp_path):
    _check(name, tmp_path)


def test_float_activations_use_wide_operands_and_stay_exact(tmp_path):
    """No act_bits: every layer reads 2**-20 codes (int32 operands, int64 accumulators)."""
    _check("lenet5", tmp_path, act_formats=False, images=4)


def test_matmuls_are_int8_with_int32_accumulation_and_x64_stays_off(tmp_path):
    program, images = _program("lenet5", tmp_path, images=2)
    f = integer_function(program)
    with jax.enable_x64(True):
        text = jax.jit(f).lower(images).as_text()
    convs = [line for line in text.splitlines() if "convolution" in line or "dot_general" in line]
    assert convs and all("xi8>" in line and "xi32>" in line for line in convs), convs
    assert not jax.config.jax_enable_x64
    with pytest.raises(ValueError, match=r"images must be uint8 \(N, H, W, 1\)"):
        run_integer_jax(program, images.astype(np.float32))
