"""Integer export (``symog_jax.export.integer``) and the integer-only reference inference.

Ground truths: hand-written bit layouts for the packing, brute force for the accumulator worst
case and for round-half-to-even, hand-computed requantization, the method's own ``finalize``
output for the exact reload, and the fake-quantized Flax model (the trainer's forward pass with
the finalized params and the run's activation formats) for the integer inference.

Tolerances of the integer inference vs Flax (stated, see the module docstring of
``integer_inference``): the integer pipeline holds what Flax keeps in float (normalised input,
ResNet residual stream, float activations) at the step 2**-F (default F = 20); a code differs
where a value lies within that (or float32 rounding) of a rounding boundary. Trained LeNet5,
SYMOG W2A4 (no BN, power-of-two requantization) and GDRQ W4A4 (learned float group scales,
31-bit fixed-point multipliers): identical classes and max |logit diff| <= 1e-4 (the logits'
own step is 2**-20 ~ 1e-6). Untrained LeNet5 with float activations: identical classes, max
|logit diff| <= 1e-3. VGG7 / ResNet-20 (tiny, untrained, randomised BN): identical classes for
>= 90% of the images, and the first quantized layer's input codes differ for <= 1% of the
entries.

Cost: the trained runs (one SYMOG, one GDRQ) are built once per module and shared; the whole
file takes about 65 s of CPU time (2 cores).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from symog_jax.export import integer_inference as ii
from symog_jax.export.integer import (export_integer, load_integer, pack2, pack_codes,
                                      storage_for, unpack2, unpack_codes)
from symog_jax.pipelines.export import check_export, export_run, flax_logits
from symog_jax.quantizers.activations import quantize_activations, record_layer_inputs
from symog_jax.training import TrainConfig, build_run, finalize, train, training_split
from tests.test_training import synthetic_digits

ROOT = Path(__file__).resolve().parents[1]


# -- packing ------------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.integers(-3, 0), st.lists(st.integers(0, 3), min_size=0, max_size=41))
def test_pack2_round_trip_and_bit_layout(code_min, us):
    codes = np.asarray(us, np.int64) + code_min
    packed = pack2(codes, code_min)
    assert packed.dtype == np.uint8 and packed.size == (len(us) + 3) // 4
    for i, u in enumerate(us):   # hand-written layout: element i at bits 2*(i%4) of byte i//4
        assert (int(packed[i // 4]) >> (2 * (i % 4))) & 3 == u
    assert np.array_equal(unpack2(packed, code_min, codes.shape), codes)


@settings(max_examples=40, deadline=None)
@given(st.integers(-2**31 + 1, 2**31 - 2), st.integers(0, 2**20))
def test_storage_is_the_smallest_holding_the_range(lo, width):
    hi = min(lo + width, 2**31 - 1)
    s = storage_for(lo, hi)
    if hi - lo <= 3:
        assert s == "packed2"
        return
    if hi - lo <= 15:
        assert s == "packed4"
        return
    candidates = [d for d in ("int8", "uint8", "int16", "uint16", "int32")
                  if np.iinfo(d).min <= lo and hi <= np.iinfo(d).max]
    assert s == candidates[0]


@settings(max_examples=60, deadline=None)
@given(st.integers(-15, 0), st.lists(st.integers(0, 15), min_size=0, max_size=33))
def test_pack4_round_trip_and_bit_layout(code_min, us):
    codes = np.asarray(us, np.int64) + code_min
    packed = pack_codes(codes, code_min, 4)
    assert packed.dtype == np.uint8 and packed.size == (len(us) + 1) // 2
    for i, u in enumerate(us):   # hand-written layout: element i at bits 4*(i%2) of byte i//2
        assert (int(packed[i // 2]) >> (4 * (i % 2))) & 15 == u
    if len(us) % 2:              # padding nibble is zero
        assert int(packed[-1]) >> 4 == 0
    assert np.array_equal(unpack_codes(packed, code_min, codes.shape, 4), codes)


def test_pack2_rejects_codes_out_of_range():
    with pytest.raises(ValueError, match=r"pack2: codes must lie in \[-1, 2\]"):
        pack2(np.array([-1, 3]), -1)


# -- integer arithmetic -------------------------------------------------------------------------

@settings(max_examples=80, deadline=None)
@given(st.integers(-10**12, 10**12), st.integers(0, 40))
def test_round_shift_and_division_are_round_half_even(v, k):
    want = int(np.round(np.float64(v) / 2.0**k)) if abs(v) < 2**52 else None
    from fractions import Fraction
    q = Fraction(v, 2**k)
    fl = q.numerator // q.denominator
    rem = q - fl
    exact = fl + (1 if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and fl % 2) else 0)
    assert int(ii.round_shift_half_even(np.int64(v), k)) == exact
    assert int(ii.div_round_half_even(np.int64(v), 2**k)) == exact
    if want is not None:
        assert exact == want


def test_requantization_by_hand():
    # M = 3/8, B = 1/4: the 31-bit multiplier is 0.375 * 2**32, the offset 2**30.
    m, k, b = ii.requant_params(np.array([0.375]), np.array([0.25]))
    assert (int(m[0]), int(k[0]), int(b[0])) == (3 * 2**29, 32, 2**30)
    acc = np.array([[5], [-3], [7], [2], [100], [-100], [3]])
    # 2.125 -> 2, -0.875 -> -1, 2.875 -> 3, 1.0 -> 1, 37.75 -> clip 15, -37.25 -> clip 0,
    # 1.375 -> 1
    assert ii.requantize(acc, m, k, b, 0, 15).ravel().tolist() == [2, 0, 3, 1, 15, 0, 1]
    # Exact ties go to even, as jnp.round does: M = 1/2, B = 0.
    m, k, b = ii.requant_params(np.array([0.5]), np.array([0.0]))
    assert ii.requantize(np.array([[1], [3], [5], [-1], [-3]]), m, k, b, -9, 9
                         ).ravel().tolist() == [0, 2, 2, 0, -2]
    # A negative multiplier (negative BN scale) and several channels.
    m, k, b = ii.requant_params(np.array([-0.25, 1.5]), np.array([0.0, -0.5]))
    assert ii.requantize(np.array([[6, 3]]), m, k, b, -9, 9).tolist() == [[-2, 4]]


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.integers(-3, 0), st.integers(0, 3), st.integers(-2, 0),
       st.integers(0, 3))
def test_accumulator_worst_case_is_the_brute_force_maximum(n, wlo, whi, alo, ahi):
    import itertools
    ws, as_ = range(wlo, whi + 1), range(alo, ahi + 1)
    best = 0
    # sum of n independent products: the max |sum| is n * max|w * a| (brute force over 1 term
    # and over all n-term combinations when small).
    pair = max(abs(w * a) for w in ws for a in as_)
    if n <= 3 and len(ws) * len(as_) <= 16:
        prods = [w * a for w in ws for a in as_]
        best = max(abs(sum(c)) for c in itertools.product(prods, repeat=n))
    else:
        best = n * pair
    assert ii.accumulator_worst_case(n, wlo, whi, alo, ahi) == best


# -- runs built in-test ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dataset():
    return synthetic_digits(n_train=128, n_test=64)


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory, dataset):
    """A tiny trained SYMOG 2-bit LeNet5 with 4-bit activations (two epochs)."""
    wd = tmp_path_factory.mktemp("lenet")
    train(TrainConfig(dataset="synthetic", model="lenet5", method="symog",
                      method_config=dict(bits=2, warmup_epochs=1.0, strength_start=1e-2,
                                         strength_end=0.5),
                      epochs=2, batch_size=32, optimizer="adam", lr=3e-3, weight_decay=0.0,
                      width=0.125, workdir=str(wd), progress=False, acts={"bits": 4}),
          dataset=dataset)
    return wd


def _flax(model, prepare, params, batch_stats, act_formats, images):
    variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
    with quantize_activations(act_formats):
        return record_layer_inputs(lambda: model.apply(variables, prepare(None, images, False),
                                                       train=False))


@pytest.fixture(scope="module")
def lenet_export(lenet_run, dataset, tmp_path_factory):
    """``(manifest, run, path)`` of the trained LeNet5's export (shared by the tests)."""
    path = tmp_path_factory.mktemp("lenet_export") / "x.npz"
    manifest, run = export_run(lenet_run, path, dataset=dataset)
    return manifest, run, path


@pytest.mark.e2e
def test_trained_lenet5_exports_reloads_exactly_and_runs_integer_only(lenet_export, dataset):
    manifest, run, path = lenet_export
    tmp_path = path.parent
    hq = run["hq"]
    net = load_integer(tmp_path / "x.npz")
    for a, b in zip(jax.tree_util.tree_leaves(net.hq.params), jax.tree_util.tree_leaves(hq.params)):
        assert a.dtype == np.asarray(b).dtype and np.array_equal(a, np.asarray(b))
    for a, b in zip(jax.tree_util.tree_leaves(net.hq.codes), jax.tree_util.tree_leaves(hq.codes)):
        assert a.dtype == np.int32 and np.array_equal(a, np.asarray(b))
    assert [r.as_dict() for r in net.hq.report] == [r.as_dict() for r in hq.report]
    assert {p: (f.bits, f.frac_bits) for p, f in net.act_formats.items()} == \
        {p: (f.bits, f.frac_bits) for p, f in run["act_formats"].items()}
    # 2-bit kernels are packed 4 per byte; biases stay float32.
    kernels = [r for r in manifest["params"] if r["quantized"]]
    assert kernels and all(r["storage"] == "packed2" for r in kernels)
    assert json.loads((tmp_path / "x.json").read_text())["packing"] == manifest["packing"]

    program = ii.load_program(tmp_path / "x.npz")
    codes, logits, max_acc = ii.run_integer(program, dataset.test_images)
    exact, _, _ = ii.run_integer(program, dataset.test_images[:8], exact_int=True)
    assert np.array_equal(exact, codes[:8])
    ref, _ = _flax(run["model"], run["prepare"], hq.params, {}, run["act_formats"],
                   dataset.test_images)
    ref = np.asarray(ref)
    assert np.array_equal(ref.argmax(1), logits.argmax(1))
    assert np.abs(ref - logits).max() <= 1e-4
    table = ii.accumulator_table(program, max_acc)
    assert [r["layer"] for r in table] == ["conv1", "conv2", "fc1", "fc2"]
    for r in table:
        assert 0 < r["max_seen"] <= r["worst_case"] and r["acc_dtype"] == "int32"
    # conv2: 5*5*(4 channels) inputs, 2-bit weights (|code| <= 1), 4-bit unsigned inputs (<= 15)
    assert table[1]["fan_in"] == 100 and table[1]["worst_case"] == 100 * 1 * 15


@pytest.fixture(scope="module")
def gdrq_run(tmp_path_factory, dataset):
    """A tiny trained GDRQ W4A4 LeNet5, 2 groups of filters per layer (one epoch)."""
    wd = tmp_path_factory.mktemp("gdrq")
    train(TrainConfig(dataset="synthetic", model="lenet5", method="gdrq",
                      method_config=dict(bits=4, groups=2, clip_k=3.0), epochs=1,
                      batch_size=32, optimizer="adam", lr=3e-3, weight_decay=0.0, width=0.125,
                      workdir=str(wd), progress=False, acts={"bits": 4}), dataset=dataset)
    return wd


@pytest.mark.e2e
def test_trained_gdrq_w4a4_exports_reloads_exactly_and_runs_integer_only(gdrq_run, dataset,
                                                                         tmp_path):
    from symog_jax.methods.gdrq import GDRQFormat

    manifest, run = export_run(gdrq_run, tmp_path / "g.npz", dataset=dataset)
    hq = run["hq"]
    net = load_integer(tmp_path / "g.npz")
    for a, b in zip(jax.tree_util.tree_leaves(net.hq.params), jax.tree_util.tree_leaves(hq.params)):
        assert a.dtype == np.float32 and np.array_equal(a, np.asarray(b))
    for a, b in zip(jax.tree_util.tree_leaves(net.hq.codes), jax.tree_util.tree_leaves(hq.codes)):
        assert a.dtype == np.int32 and np.array_equal(a, np.asarray(b))
    assert [r.as_dict() for r in net.hq.report] == [r.as_dict() for r in hq.report]
    fmts = {r.path: r.format for r in hq.report}
    assert sorted(fmts) == ["conv1/kernel", "conv2/kernel", "fc1/kernel", "fc2/kernel"]
    for r in net.hq.report:
        f, g = r.format, fmts[r.path]
        assert isinstance(f, GDRQFormat) and (f.bits, f.groups, f.grouping) == (4, 2, "contiguous")
        assert np.array_equal(f.scale, g.scale) and np.array_equal(f.group_of, g.group_of)
        assert np.array_equal(f.clip, g.clip) and len(np.unique(f.scale)) == 2
    # 4-bit symmetric codes -7..7 are packed two per byte (15 levels: not 2-bit packable).
    kernels = [r for r in manifest["params"] if r["quantized"]]
    assert len(kernels) == 4
    assert all((r["storage"], r["code_min"], r["code_max"]) == ("packed4", -7, 7)
               for r in kernels)
    with np.load(tmp_path / "g.npz") as z:
        for r in kernels:
            assert z[r["codes_key"]].dtype == np.uint8
            assert z[r["codes_key"]].size == (int(np.prod(r["shape"])) + 1) // 2

    program = ii.load_program(tmp_path / "g.npz")
    assert program.fine_frac_bits == 20 and program.fine_bits == 31      # the defaults
    # The learned float scales make the multipliers non-powers of two: m is a 31-bit integer.
    ms = np.concatenate([np.abs(L.m) for L in program.layers.values()])
    assert np.all((ms >= 2**30) & (ms < 2**31)) and np.any(ms & (ms - 1))
    codes, logits, max_acc = ii.run_integer(program, dataset.test_images)
    exact, _, _ = ii.run_integer(program, dataset.test_images[:8], exact_int=True)
    assert np.array_equal(exact, codes[:8])
    ref, _ = _flax(run["model"], run["prepare"], hq.params, {}, run["act_formats"],
                   dataset.test_images)
    ref = np.asarray(ref)
    assert np.array_equal(ref.argmax(1), logits.argmax(1))
    assert np.abs(ref - logits).max() <= 1e-4
    table = ii.accumulator_table(program, max_acc)
    for r in table:
        assert 0 < r["max_seen"] <= r["worst_case"] and r["acc_dtype"] == "int32"
    # conv2: 5*5*4 inputs, 4-bit weights (|code| <= 7), 4-bit unsigned inputs (<= 15)
    assert table[1]["fan_in"] == 100 and table[1]["worst_case"] == 100 * 7 * 15


def _untrained(model_name, act_bits, dataset, tmp_path, method="ste", method_config=None,
               seed=0, input_bits=None):
    """build_run's state (no training) with randomised BN statistics, finalized."""
    cfg = TrainConfig(dataset="synthetic", model=model_name, method=method,
                      method_config=method_config or {"bits": 2}, epochs=1, batch_size=32,
                      width=0.25 if model_name == "resnet20" else 0.125,
                      acts={"bits": act_bits, "input_bits": input_bits},
                      workdir=str(tmp_path), progress=False, seed=seed)
    train_x, _, spe = training_split(cfg, dataset)
    built = build_run(cfg, dataset, train_x, spe)
    rng = np.random.default_rng(seed)
    stats = jax.tree_util.tree_map(
        lambda v: jnp.asarray(rng.uniform(0.5, 2.0, v.shape) if v.ndim else v, jnp.float32),
        built.state.batch_stats)
    stats = {k: v for k, v in stats.items()}
    state = built.state.replace(batch_stats=stats)
    return cfg, built, state, finalize(built.method, state)


@pytest.mark.e2e
@pytest.mark.parametrize("model_name,act_bits", [("vgg7", 4), ("vgg7", None),
                                                 ("resnet20", 4), ("resnet20", None),
                                                 ("lenet5", None)])
def test_integer_inference_matches_flax(model_name, act_bits, dataset, tmp_path):
    cfg, built, state, hq = _untrained(model_name, act_bits, dataset, tmp_path)
    mean = (dataset.train_images.mean(axis=(0, 1, 2)) / 255.0).astype(np.float32)
    std = (dataset.train_images.std(axis=(0, 1, 2)) / 255.0 + 1e-6).astype(np.float32)
    export_integer(hq, state.batch_stats, state.act_formats, model_name, tmp_path / "m.npz",
                   num_classes=4, width=cfg.width, image_shape=dataset.image_shape,
                   input_mean=mean, input_std=std)          # the default F = 20, 31 bits
    program = ii.load_program(tmp_path / "m.npz")
    images = dataset.test_images[:32]
    trace: dict = {}
    _, logits, max_acc = ii.run_integer(program, images, trace=trace)
    ref, rec = _flax(built.model, built.prepare, hq.params, state.batch_stats, state.act_formats,
                     images)
    ref = np.asarray(ref)
    agree = np.mean(ref.argmax(1) == logits.argmax(1))
    assert agree >= (1.0 if model_name == "lenet5" else 0.9), agree
    if model_name == "lenet5":
        assert np.abs(ref - logits).max() <= 1e-3
    # The first layer's input is the fine-grid image: within half a step of Flax's float input.
    first, x0 = rec[0]
    # (+ float32 ulps of Flax's input)
    assert np.abs(np.concatenate(trace[first]) - np.asarray(x0)).max() <= 2.0**-21 + 1e-6
    # The first quantized activation differs by at most one step in <= 1% of its entries.
    quantized = [(p, a) for p, a in rec if p in state.act_formats]
    if quantized:
        p, a = quantized[0]
        step = 2.0 ** -state.act_formats[p].frac_bits
        d = np.abs(np.concatenate(trace[p]) - np.asarray(a)) / step
        assert d.max() <= 1 and np.mean(d > 0) <= 0.01
    table = ii.accumulator_table(program, max_acc)
    for r in table:
        assert r["max_seen"] <= r["worst_case"]
    # Inputs held at 2**-20 with 31-bit codes (float activations) need int64 accumulators;
    # 2-bit weights on 4-bit activations (and on the image, first layer) fit int32.
    for i, r in enumerate(table):
        fine_input = act_bits is None and i > 0
        assert r["acc_dtype"] == ("int64" if fine_input else "int32"), r


@pytest.mark.e2e
@pytest.mark.parametrize("model_name", ["vgg7", "lenet5"])
def test_quantized_image_makes_the_first_layer_exact(model_name, dataset, tmp_path):
    """input_bits=8: the image codes and the first layer's output codes equal Flax's exactly."""
    cfg, built, state, hq = _untrained(model_name, 4, dataset, tmp_path, input_bits=8)
    first = next(iter(state.act_formats))
    fmt = state.act_formats[first]
    assert first == "conv1"
    assert (fmt.bits, fmt.signed) == (8, True)
    mean = (dataset.train_images.mean(axis=(0, 1, 2)) / 255.0).astype(np.float32)
    std = (dataset.train_images.std(axis=(0, 1, 2)) / 255.0 + 1e-6).astype(np.float32)
    export_integer(hq, state.batch_stats, state.act_formats, model_name, tmp_path / "m.npz",
                   num_classes=4, width=cfg.width, image_shape=dataset.image_shape,
                   input_mean=mean, input_std=std)
    program = ii.load_program(tmp_path / "m.npz")
    assert program.input_frac == int(fmt.frac_bits)
    images = dataset.test_images[:32]
    trace: dict = {}
    _, logits, _ = ii.run_integer(program, images, trace=trace)
    ref, rec = _flax(built.model, built.prepare, hq.params, state.batch_stats, state.act_formats,
                     images)
    (p0, x0), (p1, x1) = rec[0], rec[1]
    # The image on its 8-bit grid: the lookup table gives Flax's quantized input exactly...
    assert np.array_equal(np.concatenate(trace[p0]), np.asarray(x0))
    assert np.all(np.abs(np.asarray(x0)) * 2 ** int(fmt.frac_bits) <= 127)
    # ...so the first layer's integer sums are Flax's float32 sums, and its output codes agree.
    assert np.array_equal(np.concatenate(trace[p1]), np.asarray(x1))
    assert np.array_equal(np.asarray(ref).argmax(1), logits.argmax(1))


@pytest.mark.e2e
@pytest.mark.parametrize("granularity", ["layer", "channel", "row", "pixel"])
def test_syq_exports_exactly_and_pixel_scales_refuse_integer_inference(granularity, dataset,
                                                                       tmp_path):
    cfg, built, state, hq = _untrained("lenet5", None, dataset, tmp_path, method="syq",
                                       method_config={"granularity": granularity,
                                                      "float_first_last": False})
    manifest = export_integer(hq, {}, {}, "lenet5", tmp_path / "s.npz", num_classes=4,
                              image_shape=dataset.image_shape)
    net = load_integer(tmp_path / "s.npz")
    for a, b in zip(jax.tree_util.tree_leaves(net.hq.params), jax.tree_util.tree_leaves(hq.params)):
        assert np.array_equal(a, np.asarray(b))
    for p, f in [(r.path, r.format) for r in net.hq.report]:
        assert np.array_equal(f.scale, [r.format for r in hq.report if r.path == p][0].scale)
    if granularity in ("row", "pixel"):
        assert "vary inside a dot product" in manifest["integer_program_error"]
        with pytest.raises(ValueError, match=r"no integer program: layer conv1: .*SYQ pixel"):
            ii.load_program(tmp_path / "s.npz")
    else:
        ii.load_program(tmp_path / "s.npz")


@pytest.mark.e2e
def test_syq_default_keeps_first_last_float_and_integer_inference_says_so(dataset, tmp_path):
    _, _, _, hq = _untrained("lenet5", None, dataset, tmp_path, method="syq",
                             method_config={"granularity": "channel"})
    assert hq.formats["conv1"]["kernel"] is None and hq.formats["fc2"]["kernel"] is None
    export_integer(hq, {}, {}, "lenet5", tmp_path / "s.npz", num_classes=4,
                   image_shape=dataset.image_shape)
    with pytest.raises(ValueError, match=r"layer conv1 keeps float weights \(float_first_last"):
        ii.load_program(tmp_path / "s.npz")


def test_nothing_quantized_exports_float32_only(tmp_path):
    from symog_jax.quantizers.hard_quantize import HardQuantized
    params = {"fc": {"kernel": np.ones((3, 2), np.float32), "bias": np.zeros(2, np.float32)}}
    hq = HardQuantized(params, {"fc": {"kernel": None, "bias": None}},
                       {"fc": {"kernel": None, "bias": None}}, [])
    m = export_integer(hq, {}, {}, "lenet5", tmp_path / "f.npz", num_classes=2)
    assert m["quantized_leaves"] == 0 and "nothing is quantized" in m["integer_program_error"]
    assert np.array_equal(load_integer(tmp_path / "f.npz").hq.params["fc"]["kernel"],
                          params["fc"]["kernel"])


@pytest.mark.e2e
def test_check_compares_with_flax_in_float64_and_float32(lenet_export, dataset):
    """``--check``'s two references: the float64 Flax model really computes in float64 (its
    logits are not float32 values) and agrees with float32 Flax to float32 rounding; the
    summary reports the agreement with both."""
    _, run, path = lenet_export
    images = dataset.test_images[:16]
    ref32 = flax_logits(run, images)
    ref64 = flax_logits(run, images, float64=True)
    assert ref32.dtype == np.float32 and ref64.dtype == np.float64
    assert not np.array_equal(ref64, ref64.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(ref64, ref32, rtol=0, atol=1e-4)
    result = check_export(run, path, limit=16)
    for key in ("agreement", "agreement_float32", "max_abs_logit_diff",
                "max_abs_logit_diff_float32"):
        assert 0 <= result[key] < float("inf"), key
    _, logits, _ = ii.run_integer(ii.load_program(path), images)
    assert result["max_abs_logit_diff"] == float(np.abs(ref64 - logits).max())
    assert result["agreement_float32"] == float(np.mean(ref32.argmax(1) == logits.argmax(1)))


# -- bad inputs ---------------------------------------------------------------------------------

def _cli(*args):
    return subprocess.run([sys.executable, "-m", "experiments.export", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.e2e
def test_bad_inputs_are_one_line_errors(lenet_run, lenet_export, dataset, tmp_path, capsys):
    from experiments.export import main as export_main

    with pytest.raises(FileNotFoundError, match="is not a run directory"):
        export_run(tmp_path, dataset=dataset)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(lenet_run, unfinished)
    (unfinished / "report.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"has not finished \(no report.json\)"):
        export_run(unfinished, dataset=dataset)
    damaged = tmp_path / "damaged"
    shutil.copytree(lenet_run, damaged)
    latest = max(int(p.name) for p in (damaged / "checkpoints").iterdir() if p.name.isdigit())
    for f in sorted((damaged / "checkpoints" / str(latest) / "state").rglob("*")):
        if f.is_file() and f.stat().st_size > 0 and "ocdbt" in str(f.parent.name) + f.name:
            f.write_bytes(b"\0" * 7)
    with pytest.raises(ValueError, match=rf"checkpoint .*checkpoints/{latest} is damaged"):
        export_run(damaged, dataset=dataset)
    assert (damaged / "checkpoints" / str(latest)).exists()   # nothing was moved aside
    nockpt = tmp_path / "nockpt"
    shutil.copytree(lenet_run, nockpt)
    shutil.rmtree(nockpt / "checkpoints")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        export_run(nockpt, dataset=dataset)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="is not a symog_jax integer export"):
        load_integer(tmp_path / "junk.npz")
    with pytest.raises(ValueError, match="needs a registry model .* not 'mlp'"):
        ii.structure_of({"name": "mlp", "num_classes": 2}, 3)
    program = ii.load_program(lenet_export[2])
    with pytest.raises(ValueError, match=r"images must be uint8 \(N, H, W, 1\)"):
        ii.run_integer(program, np.zeros((2, 28, 28, 1), np.float32))
    # The command line: one line on stderr, exit code 2 (`python -m` once, then in-process).
    r = _cli("--workdir", tmp_path)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: ")
    assert "is not a run directory" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    capsys.readouterr()
    assert export_main(["--workdir", str(unfinished)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "has not finished" in err
    assert len(err.strip().splitlines()) == 1
