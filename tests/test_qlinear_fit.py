"""QLinearConv parameters fitted to the integer program's requantization
(:mod:`symog_jax.export.qlinear_fit`), against independent ground truth:

* every accumulator of the reachable range enumerated, the program's result computed with
  Python fractions (``round_half_even((acc m + b) / 2**k)``) and the kernel's with this file's
  own float32 emulation: equal on every channel the fit calls exact, and below ``exact_below``
  on the others;
* onnxruntime itself running one ``QLinearConv`` over every accumulator value: equal to the
  fractions on the exact channels (the emulation the proof rests on is what the runtime does).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from symog_jax.export import integer_inference as ii
from symog_jax.export.qlinear_fit import emulate_qlinear, fit_qlinear


def _round_half_even(x: Fraction) -> int:
    fl = x.numerator // x.denominator
    r = x - fl
    return fl + (1 if r > Fraction(1, 2) or (r == Fraction(1, 2) and fl % 2) else 0)


def _program_code(acc: int, m: int, k: int, b: int, lo: int, hi: int) -> int:
    return min(max(_round_half_even(Fraction(acc * m + b, 2 ** k)), lo), hi)


def _kernel(acc, c, beta, s, lo, hi):
    """QLinearConv's arithmetic, written here independently: float32(int) * float32 scale,
    round half to even, clip."""
    v = np.float32(np.float32(int(acc) * int(c) + int(beta)) * np.float32(s))
    return int(min(max(np.rint(v), lo), hi))


def _layer(rng, cout, fan_in, w_max, out_bits, signed_out, in_lo, in_hi):
    w = rng.integers(-w_max, w_max + 1, (fan_in, cout))
    w[0] = np.where(w[0] == 0, 1, w[0])                      # no all-zero column
    acc_span = np.abs(w).sum(0) * max(abs(in_lo), abs(in_hi))
    levels = 2 ** out_bits
    M = rng.uniform(0.3, 3.0, cout) * levels / np.maximum(acc_span, 1)
    M *= rng.choice([-1.0, 1.0], cout, p=[0.2, 0.8])         # negative BN gains too
    B = rng.uniform(-0.3, 0.5, cout) * levels
    m, k, b = ii.requant_params(M, B, acc_bound=int(acc_span.max()))
    lo, hi = (-(levels // 2), levels // 2 - 1) if signed_out else (0, levels - 1)
    return ii.IntLayer("fc", "dense", w, 1, "VALID", 0, in_lo, in_hi, m, k, b, 0, lo, hi,
                       int(acc_span.max()), "int32")


def _column_multiplier(L, fit, ch) -> int:
    nz = np.nonzero(L.w[:, ch])[0]
    return int(fit.w[nz[0], ch] // L.w[nz[0], ch]) if len(nz) else 0


CASES = [  # (w_max, out_bits, signed_out, in_lo, in_hi, fan_in)
    (1, 4, False, 0, 15, 6),
    (1, 8, False, 0, 255, 5),
    (2, 4, True, -8, 7, 7),
    (7, 4, False, 0, 15, 4),
    (1, 8, True, -128, 127, 3),
    (1, 8, False, 0, 255, 24),          # 255 switch points in range
    (127, 8, False, 0, 255, 2),         # 8-bit weights leave c = 1: most channels inexact
]


@pytest.mark.parametrize("case", CASES, ids=[f"w{c[0]}-a{c[1]}{'s' if c[2] else 'u'}-f{c[5]}"
                                             for c in CASES])
def test_fit_reproduces_the_program_on_every_accumulator(case):
    """Exact channels: every reachable accumulator; the others: every accumulator whose
    program code is below ``exact_below`` (walked from the low end of the codes)."""
    w_max, out_bits, signed_out, in_lo, in_hi, fan_in = case
    rng = np.random.default_rng(out_bits * 10 + w_max)
    L = _layer(rng, 24, fan_in, w_max, out_bits, signed_out, in_lo, in_hi)
    fit = fit_qlinear(L)
    checked = 0
    for ch in range(L.w.shape[1]):
        col = L.w[:, ch]
        lo_x, hi_x = min(in_lo, 0), max(in_hi, 0)
        acc_lo = int(np.minimum(col * lo_x, col * hi_x).sum())
        acc_hi = int(np.maximum(col * lo_x, col * hi_x).sum())
        sign = -1 if L.m[ch] < 0 else 1             # the fit negates such a channel's weights
        c = abs(_column_multiplier(L, fit, ch))
        accs = range(acc_lo, acc_hi + 1) if sign > 0 else range(acc_hi, acc_lo - 1, -1)
        for acc in accs:                            # program codes ascending
            want = _program_code(acc, int(L.m[ch]), int(L.k[ch]), int(L.b[ch]), L.out_lo,
                                 L.out_hi)
            if not fit.exact[ch] and want >= fit.exact_below[ch]:
                break
            got = _kernel(acc * sign, c, fit.bias[ch], fit.scale[ch], L.out_lo, L.out_hi)
            assert got == want, (ch, acc, got, want)
            checked += 1
    assert checked > 1000
    if w_max <= 2:                      # c >= 31: nearly every channel threaded
        assert fit.exact.mean() >= 0.9 and (fit.exact.all() or out_bits == 8)
    if w_max == 127:
        assert (~fit.exact).sum() >= 12 and np.abs(fit.w).max() <= 127


def test_more_channels_exact_than_a_rounded_bias():
    """On 8-bit outputs not every channel has an exact fit, but the fit beats rounding the
    bias (``round(c B / M)``, the previous export) on the number of accumulators that differ."""
    rng = np.random.default_rng(3)
    L = _layer(rng, 32, 5, 1, 8, False, 0, 255)
    fit = fit_qlinear(L)
    bad_fit = bad_rounded = 0
    for ch in range(32):
        col = L.w[:, ch]
        acc_lo, acc_hi = int(np.minimum(col, 0).sum()) * 255, int(np.maximum(col, 0).sum()) * 255
        sign = -1 if L.m[ch] < 0 else 1
        c = abs(_column_multiplier(L, fit, ch))
        m, k, b = int(L.m[ch]) * sign, int(L.k[ch]), int(L.b[ch])
        for acc in range(acc_lo, acc_hi + 1):
            want = _program_code(acc, int(L.m[ch]), k, b, 0, 255)
            bad_fit += _kernel(acc * sign, c, fit.bias[ch], fit.scale[ch], 0, 255) != want
            bad_rounded += _kernel(acc * sign, 63, round(63 * b / m),
                                   m * 2.0 ** -k / 63, 0, 255) != want
    assert bad_fit * 5 < bad_rounded, (bad_fit, bad_rounded)


def test_emulation_hand_case():
    # 0.5 * [0, 1, 2, 3, 5] = 0, 0.5 -> 0 (even), 1, 1.5 -> 2, 2.5 -> 2
    assert emulate_qlinear(np.array([[0, 1, 2, 3, 5]]).T, 1, 0, np.float32(0.5), 0, 15
                           ).ravel().tolist() == [0, 0, 1, 2, 2]


def test_onnxruntime_qlinearconv_gives_the_programs_codes():
    """One 1x1 QLinearConv over an input enumerating 0..255 (every accumulator of a fan-in-1
    layer), 48 channels with random multipliers and offsets: on every channel the fit calls
    exact, onnxruntime's codes equal the program's computed with fractions."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(7)
    cout = 48
    w = np.ones((1, cout), np.int64)
    M = rng.uniform(0.01, 0.9, cout)
    M[0] = 0.0                                  # a dead channel: a constant code
    B = rng.uniform(-3, 20, cout)
    m, k, b = ii.requant_params(M, B, acc_bound=255)
    L = ii.IntLayer("fc", "dense", w, 1, "VALID", 0, 0, 255, m, k, b, 0, 0, 255, 255, "int32")
    fit = fit_qlinear(L)
    assert fit.exact.sum() >= cout // 2 and fit.exact[0]
    wq = fit.w.T.reshape(cout, 1, 1, 1).astype(np.int8)
    inits = [numpy_helper.from_array(np.asarray(v, dt), n) for n, v, dt in [
        ("xs", 1.0, np.float32), ("xz", 0, np.uint8), ("w", wq, np.int8),
        ("ws", fit.scale, np.float32), ("wz", np.zeros(cout), np.int8),
        ("ys", 1.0, np.float32), ("yz", 0, np.uint8), ("bias", fit.bias, np.int32)]]
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz",
                                            "bias"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(
        "x", TensorProto.UINT8, [256, 1, 1, 1])], [helper.make_tensor_value_info(
            "y", TensorProto.UINT8, [256, cout, 1, 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.arange(256, dtype=np.uint8).reshape(256, 1, 1, 1)
    y = sess.run(None, {"x": x})[0].reshape(256, cout).astype(int)
    for ch in np.nonzero(fit.exact)[0]:
        want = [_program_code(a, int(m[ch]), int(k[ch]), int(b[ch]), 0, 255) for a in range(256)]
        assert y[:, ch].tolist() == want, ch


def test_power_of_two_multipliers_reproduce_ties_exactly():
    """``M = 1/8`` with offsets on the lattice (``B = 0``, ``B = 3/8``): ``acc * M`` hits
    ``n + 1/2`` exactly, where the program rounds half to even (its switch points 5, 12, 21,
    28, ...: gaps 7 and 9, which no tie-free linear threshold reproduces). The fit keeps the
    product exact, so the kernel's ties round like the program's, on every accumulator."""
    w = np.ones((40, 3), np.int64)
    M = np.array([1 / 8, 1 / 8, 1 / 16])
    B = np.array([0.0, 3 / 8, 1 / 32])
    m, k, b = ii.requant_params(M, B, acc_bound=40 * 15)
    L = ii.IntLayer("fc", "dense", w, 1, "VALID", 0, 0, 15, m, k, b, 0, 0, 15, 600, "int32")
    fit = fit_qlinear(L)
    assert fit.exact.all()
    for ch in range(3):
        c = _column_multiplier(L, fit, ch)
        for acc in range(0, 601):
            want = _program_code(acc, int(m[ch]), int(k[ch]), int(b[ch]), 0, 15)
            assert _kernel(acc, c, fit.bias[ch], fit.scale[ch], 0, 15) == want, (ch, acc)
