"""ONNX export of the integer program, run in onnxruntime, against the numpy program.

Same setup as tests/test_integer_program_models.py: tiny registry models (width 0.125), random
4-bit weight codes, random biases and batch norm, an 8-bit image and 8-bit activations. The
reference is the numpy interpreter (:mod:`symog_jax.export.integer_inference`), whose
arithmetic the ONNX graph does not share.

* ``qlinear=False`` (ConvInteger/MatMulInteger + integer requantization in int64): the logit
  codes must be bit-identical, for every registry model.
* ``qlinear=True`` (the default, QLinearConv with float requantization, its per-channel
  weight multiplier, bias and scale fitted by :mod:`symog_jax.export.qlinear_fit`): on a
  channel the fit proves exact the codes are the program's; with 8-bit outputs and batch norm
  some channels have no exact fit and a code can flip by one near a rounding boundary (these
  random networks: a few logit codes). Asserted: the same classes, logits within
  ``QLINEAR_MAX_LOGIT_DIFF``; bit-identical codes without batch norm (LeNet5) and with 4-bit
  activations (every channel fits).
* ``qlinear="exact"``: QLinearConv on the layers whose every channel fits, bit-identical.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from symog_jax.export import integer_inference as ii
from symog_jax.export.integer import export_integer
from symog_jax.models import MODEL_NAMES
from symog_jax.numerics.formats import unsigned_format

from test_integer_program_models import (CLASSES, SHAPES, _act_formats, _model,
                                         _random_network)

ort = pytest.importorskip("onnxruntime")
onnx_export = pytest.importorskip("symog_jax.export.onnx")

QLINEAR_MAX_LOGIT_DIFF = 0.75
FAST = ("lenet5", "vgg7", "resnet20")


def _program(name, tmp_path, *, act_formats=True, images=16, act_bits=8):
    shape = SHAPES.get(name, (32, 32, 3) if name == "vgg7" else (8, 8, 3))
    model = _model(name, None)
    rng = np.random.default_rng(0)
    structure = model.structure(shape)
    hq, stats = _random_network(structure, rng)
    acts = _act_formats(structure) if act_formats else {}
    if act_bits != 8:               # same ranges, coarser steps
        acts = {p: unsigned_format(act_bits, act_bits - 4) if i else f
                for i, (p, f) in enumerate(acts.items())}
    mean = np.full(shape[-1], 0.45, np.float32)
    std = np.full(shape[-1], 0.25, np.float32)
    export_integer(hq, stats, acts, name, tmp_path / "n.npz", num_classes=CLASSES,
                   width=0.125, image_shape=shape, input_mean=mean, input_std=std)
    imgs = rng.integers(0, 256, (images,) + shape, dtype=np.uint8)
    return ii.load_program(tmp_path / "n.npz"), shape, imgs


def _run_onnx(model, images):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"images": images})


def _compare(name, tmp_path, qlinear, **kw):
    program, shape, images = _program(name, tmp_path, **kw)
    ref_codes, ref_logits, _ = ii.run_integer(program, images)
    model = onnx_export.program_to_onnx(program, shape, qlinear=qlinear)
    codes, logits = _run_onnx(model, images)
    return model, ref_codes, ref_logits, codes, logits


def _check_exact(name, tmp_path):
    model, ref_codes, ref_logits, codes, logits = _compare(name, tmp_path, qlinear=False)
    np.testing.assert_array_equal(codes, ref_codes)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-6, atol=1e-6)   # float32 output
    assert "QLinearConv" not in onnx_export.onnx_op_counts(model)


@pytest.mark.parametrize("name", FAST)
def test_integer_kernels_give_the_programs_codes(name, tmp_path):
    _check_exact(name, tmp_path)


@pytest.mark.e2e
@pytest.mark.parametrize("name", [n for n in MODEL_NAMES if n not in FAST])
def test_integer_kernels_give_the_programs_codes_every_model(name, tmp_path):
    _check_exact(name, tmp_path)


@pytest.mark.parametrize("name", FAST)
def test_qlinear_export_agrees_with_the_program(name, tmp_path):
    model, ref_codes, ref_logits, codes, logits = _compare(name, tmp_path, qlinear=True)
    ops = onnx_export.onnx_op_counts(model)
    diff = float(np.abs(logits - ref_logits).max())
    print(f"{name}: {int((codes != ref_codes).sum())} of {codes.size} logit codes differ, "
          f"max |logit diff| {diff:.3g}, ops {ops}")
    assert ops.get("QLinearConv", 0) >= 2
    if name != "resnet20":         # only the logits dense writes a wide tensor
        assert "ConvInteger" not in ops and ops.get("MatMulInteger") == 1
    np.testing.assert_array_equal(codes.argmax(1), ref_codes.argmax(1))
    assert diff <= QLINEAR_MAX_LOGIT_DIFF


def test_qlinear_is_bit_identical_with_power_of_two_multipliers(tmp_path):
    """LeNet5 (no batch norm, random float biases): every M is a power of two, so the bias is
    the midpoint of the lattice interval holding B and QLinearConv's float requantization
    gives the program's codes exactly (here 64 images, 0.3 M codes through QLinearConv)."""
    model, ref_codes, _, codes, _ = _compare("lenet5", tmp_path, qlinear=True, images=64)
    assert onnx_export.onnx_op_counts(model)["QLinearConv"] == 3
    np.testing.assert_array_equal(codes, ref_codes)


@pytest.mark.parametrize("name", ["vgg7", "resnet20"])
def test_qlinear_is_bit_identical_with_4bit_activations_and_batch_norm(name, tmp_path):
    """4-bit output codes have 15 rounding boundaries: every batch-norm channel gets an exact
    fit, so the fast graph gives the program's codes bit for bit (64 images)."""
    model, ref_codes, _, codes, _ = _compare(name, tmp_path, qlinear=True, images=64,
                                             act_bits=4)
    assert onnx_export.onnx_op_counts(model)["QLinearConv"] == (7 if name == "vgg7" else 9)
    np.testing.assert_array_equal(codes, ref_codes)


def test_float_activations_are_refused_in_one_line(tmp_path):
    program, shape, _ = _program("lenet5", tmp_path, act_formats=False)
    with pytest.raises(ValueError, match=r"^layer conv1 reads codes in .*act_bits") as e:
        onnx_export.program_to_onnx(program, shape)
    assert "\n" not in str(e.value)


def test_save_onnx_is_atomic_and_loadable(tmp_path):
    program, shape, images = _program("lenet5", tmp_path, images=4)
    model = onnx_export.program_to_onnx(program, shape)
    out = tmp_path / "model.onnx"
    size = onnx_export.save_onnx(model, out)
    assert size == out.stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(sess.run(["logit_codes"], {"images": images})[0],
                                  _run_onnx(model, images)[0])


# -- a trained run, through the command line -------------------------------------------------------

@pytest.mark.e2e
def test_cli_writes_model_onnx_and_checks_it(tmp_path, monkeypatch, capsys):
    """A tiny trained SYMOG W2A4 LeNet5 with an 8-bit image: ``--format onnx --check``."""
    import json

    from experiments.export import main as export_main
    from symog_jax.pipelines import export as export_pipeline
    from symog_jax.training import TrainConfig, train
    from tests.test_training import synthetic_digits

    dataset = synthetic_digits(n_train=128, n_test=64)
    wd = tmp_path / "run"
    train(TrainConfig(dataset="synthetic", model="lenet5", method="symog",
                      method_config=dict(bits=2, warmup_epochs=1.0, strength_start=1e-2,
                                         strength_end=0.5),
                      epochs=2, batch_size=32, optimizer="adam", lr=3e-3, weight_decay=0.0,
                      width=0.125, workdir=str(wd), progress=False,
                      acts={"bits": 4, "input_bits": 8}),
          dataset=dataset)
    monkeypatch.setattr(export_pipeline, "load_run_dataset", lambda *a, **k: dataset)
    summary = tmp_path / "check.json"
    assert export_main(["--workdir", str(wd), "--format", "onnx", "--check",
                        "--json", str(summary)]) == 0
    out = capsys.readouterr().out
    assert "model.onnx" in out and "onnxruntime vs numpy integer program" in out
    result = json.loads(summary.read_text())
    assert (wd / "model.onnx").stat().st_size == result["bytes"]
    assert result["test_images"] == 64 and result["ops"].get("QLinearConv") == 3
    # no batch norm: QLinearConv gives the program's codes bit for bit (module docstring)
    assert result["codes_differing"] == 0 and result["agreement_program"] == 1.0
    assert result["agreement_flax"] >= 63 / 64
    sess = ort.InferenceSession(str(wd / "model.onnx"), providers=["CPUExecutionProvider"])
    codes = sess.run(["logit_codes"], {"images": dataset.test_images[:8]})[0]
    assert codes.shape == (8, dataset.num_classes) and codes.dtype == np.int64


@pytest.mark.parametrize("name", FAST)
def test_float_export_matches_the_float_flax_model(name, tmp_path):
    """The float baseline: the same parameters in float32, no activation quantization, against
    the Flax model applied without ``quantize_activations`` (independent code)."""
    import jax

    shape = SHAPES.get(name, (32, 32, 3) if name == "vgg7" else (8, 8, 3))
    model = _model(name, None)
    rng = np.random.default_rng(2)
    structure = model.structure(shape)
    hq, stats = _random_network(structure, rng)
    mean, std = np.full(shape[-1], 0.45, np.float32), np.full(shape[-1], 0.25, np.float32)
    export_integer(hq, stats, _act_formats(structure), name, tmp_path / "n.npz",
                   num_classes=CLASSES, width=0.125, image_shape=shape, input_mean=mean,
                   input_std=std)
    program = ii.load_program(tmp_path / "n.npz")
    images = rng.integers(0, 256, (8,) + shape, dtype=np.uint8)
    onnx_model = onnx_export.program_to_float_onnx(program, shape, input_mean=mean,
                                                   input_std=std)
    assert {"QLinearConv", "ConvInteger"}.isdisjoint(onnx_export.onnx_op_counts(onnx_model))
    (logits,) = _run_onnx(onnx_model, images)
    variables = {"params": hq.params, **({"batch_stats": stats} if stats else {})}
    x = (images.astype(np.float32) / 255.0 - mean) / std
    ref = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))
    np.testing.assert_allclose(logits, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())


@pytest.mark.parametrize("name", FAST)
def test_qlinear_exact_mode_is_bit_identical(name, tmp_path):
    """``qlinear="exact"``: QLinearConv for the channels with a proven fit (all of LeNet5's);
    on these random 4-bit-weight networks with batch norm some channels of 8-bit layers have
    none and run on ConvInteger beside them (split layers): the codes equal the program's."""
    model, ref_codes, _, codes, _ = _compare(name, tmp_path, qlinear="exact")
    np.testing.assert_array_equal(codes, ref_codes)
    ops = onnx_export.onnx_op_counts(model)
    split = json.loads({p.key: p.value for p in model.metadata_props}["integer_kernel_channels"])
    if name == "lenet5":
        assert ops.get("QLinearConv", 0) == 3 and "ConvInteger" not in ops and not split
    if name == "vgg7":             # every conv/dense writes 8 bits: all are QLinearConv, some split
        assert ops["QLinearConv"] == 7 and split and ops["Concat"] == len(split)
    with pytest.raises(ValueError, match="qlinear must be True, False or 'exact'"):
        onnx_export.program_to_onnx(ii.IntegerProgram("x", 20, 31, 31, 0, np.zeros((1, 256)),
                                                      {}), (8, 8, 1), qlinear="fast")
