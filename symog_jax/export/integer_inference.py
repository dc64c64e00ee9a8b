"""Integer-only reference inference (numpy) for exported LeNet5, VGG7 and CIFAR ResNets.

Everything between the uint8 image and the integer logits is integer arithmetic:

* **Input.** The trained model sees the normalised image ``x = (p / 255 - mean) / std`` in
  float. Here a per-channel lookup table ``lut[c, p]`` (256 int32 entries per channel, built at
  export) maps the pixel ``p`` to ``round(x / 2**-F)``: ``x`` on a fine power-of-two grid
  ``2**-F`` (``F = fine_frac_bits``, default 20, see *Default fine step* below), or directly
  to the first layer's activation format if it has one. A model trained with a quantized
  image (``input_bits``, :class:`~symog_jax.quantizers.activations.ActivationQuantConfig`)
  has one: the table then gives exactly the model's image codes, and the first layer is
  reproduced bit for bit (on CIFAR-10 VGG7 this removed the last class differences, see
  benchmarks/RESULTS.md).
* **Layers.** Each conv/dense layer multiplies integer activation codes ``a`` (step
  ``2**-f_in``) by integer weight codes ``w`` (step or scale ``s_w[c]`` per output channel) and
  accumulates ``acc = sum a * w`` exactly (int32 where the worst case ``fan_in * max|w code| *
  max|a code|`` is below ``2**31``, int64 otherwise; reported per layer).
* **Requantization.** The real output is ``y = acc * s_in * s_w[c] * g[c] + h[c]`` where
  ``g, h`` fold the layer's bias and batch norm (``g = scale / sqrt(var + eps)``,
  ``h = (bias - mean) * g + beta``; no BN: ``g = 1``, ``h = bias``). The next consumer wants
  codes ``round(y / s_out)`` clipped to its format (after ReLU: clipped at 0). With ``M =
  s_in s_w g / s_out`` and ``B = h / s_out`` this is ``clip(round(acc * M + B))``, computed
  **integer-only** with a fixed-point multiplier: ``M ~ m * 2**-k`` with an integer ``|m| <
  2**mult_bits`` (``2**(mult_bits-1) <= |m|`` when possible, ``mult_bits = 31`` by default)
  and ``b = round(B * 2**k)``, then ``out = round_half_even((acc * m + b) / 2**k)`` in int64
  (an arithmetic shift plus the tie rule of ``jnp.round``). Why fixed-point and not float:
  integer-only hardware has no float unit, the result is bit-exact on every platform, and the
  relative error of ``m * 2**-k`` (``<= 2**-(mult_bits-1)``) is far below the half code that
  rounding already costs; for the fixed-point methods without BN (LeNet5), ``M`` is a power of
  two and the multiplier is exact.
* **Pooling.** Max-pooling runs on the codes: rounding to a format is monotone, so
  ``round(max(y)) = max(round(y))``. Global average pooling (ResNet) sums codes and divides with
  round-half-to-even integer division.
* **Residual stream (ResNet).** The trained model keeps the block inputs/outputs (the shortcut
  path) in float. Here the stream is held as codes at the fine step ``2**-F`` (signed
  ``fine_bits`` bits, saturating; default 31 bits, so ``|value| < 2**(30-F) = 1024`` at
  F=20): the second BN of a block is requantized to ``2**-F``, the shortcut codes are added,
  ReLU clips at 0. A block's first conv gets the stream rounded to
  its activation format by a shift with round-half-to-even.
* **Float activations** (a run without ``act_bits``): every layer input is held at ``2**-F``.
* **Logits** come out as integer codes at ``2**-F``; ``logits = codes * 2**-F``.

**Default fine step** ``F = 20`` (with ``fine_bits = 31``). Measured on complete MNIST with a
SYMOG W2A4 LeNet5 (benchmarks/RESULTS.md, "Integer export"), against the fake-quantized Flax
model on all 10,000 test images: ``F = 12`` gives another class for 2 images (a 4-bit
activation code of a later layer flips where the float value lies within the input grid's
error of a rounding boundary), ``F = 16`` gives the same class for all images but logits up to
0.44 apart (such flips remain), ``F = 20`` gives the same class for all images *and* logits
within 1e-6 (no activation code differs). ``F = 20`` is the smallest of these at which the
integer pipeline reproduces the Flax model's codes, so it is the default. With learned float
scales or batch norm (31-bit fixed-point multipliers vs Flax's float32) a few codes still flip
at F = 20 (10,000 test images: GDRQ W4A4 LeNet5 same classes, 3 images' logits differ; SYMOG
W2A4 VGG7 2 classes differ; ResNet-20 36 of a weak 1-epoch model); F = 24 reduces that
(ResNet-20: 7) but needs int64 first-layer accumulators for 4-bit weights. Its cost: the
first layer's accumulator grows by ``F`` bits over the image's integer range (LeNet5 conv1:
28 bits worst case with ternary weights -- still int32); layers whose input is held at
``2**-F`` with 31-bit codes (runs without ``act_bits``) have int64 accumulators, and there the
multiplier has fewer bits (``|acc_bound * m| < 2**62``, e.g. 22 bits for a worst case of
``2**40``: an output error of at most ``|y| * 2**-22``, far below float32's accumulated
rounding in the Flax model over such fan-ins).

The gap to the fake-quantized Flax model comes only from the fine grid (inputs, residual
stream, float activations: at most half a fine step per rounding) and from float32 rounding in
the Flax model; a code can differ where a value lies within that of a rounding boundary.

Matrix products: the integer products are summed exactly. Where the worst case is below
``2**53``, they are computed as float64 BLAS products of the integer values, which are then
exact (every partial sum is an integer below ``2**53``); otherwise with numpy int64 matmul
(``exact_int=True`` forces that everywhere).
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

from symog_jax.export.packing import decode_codes, read_npz

__all__ = ["DEFAULT_FINE_BITS", "DEFAULT_FINE_FRAC_BITS", "IntegerProgram", "IntLayer",
           "accumulator_worst_case", "build_program", "load_program", "requant_params",
           "requantize", "round_shift_half_even", "run_integer", "div_round_half_even",
           "SUPPORTED_MODELS"]

BN_EPSILON_DEFAULT = None   # read from symog_jax.models.layers at build time
SUPPORTED_MODELS = ("lenet5", "vgg7", "resnet20", "resnet32", "resnet56")


# -- integer arithmetic ---------------------------------------------------------------------------

def div_round_half_even(num, den) -> np.ndarray:
    """``round(num / den)`` with ties to even, for integers (``den > 0``), exactly, in int64.

    Example:
      >>> div_round_half_even(np.array([5, 7, -5, -7, 6]), 2).tolist()   # 2.5 3.5 -2.5 -3.5 3
      [2, 4, -2, -4, 3]
    """
    num = np.asarray(num, np.int64)
    den = np.asarray(den, np.int64)
    if np.any(den <= 0):
        raise ValueError("div_round_half_even: den must be positive")
    q = np.floor_divide(num, den)
    r2 = 2 * (num - q * den)
    up = (r2 > den) | ((r2 == den) & (q % 2 == 1))
    return q + up


def round_shift_half_even(v, k) -> np.ndarray:
    """``round(v / 2**k)`` with ties to even, for int64 ``v`` and shifts ``0 <= k <= 62``.

    Example:
      >>> round_shift_half_even(np.array([12, 20, 28, -12, 13]), 3).tolist()  # 1.5 2.5 3.5 ...
      [2, 2, 4, -2, 2]
    """
    v = np.asarray(v, np.int64)
    k = np.asarray(k, np.int64)
    q = v >> k
    r = v - (q << k)                              # 0 <= r < 2**k
    half = np.where(k > 0, np.left_shift(np.int64(1), np.maximum(k - 1, 0)), 0)
    up = np.where(k > 0, (r > half) | ((r == half) & (q & 1 == 1)), False)
    return q + up


def requant_params(multiplier, offset, *, mult_bits: int = 31,
                   acc_bound: int = 2**31 - 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer ``(m, k, b)`` with ``acc * M + B ~ (acc * m + b) / 2**k`` per channel.

    Args:
      multiplier: real ``M``, shape ``(C,)`` (any sign; 0 allowed).
      offset: real ``B`` in output-code units, ``(C,)``.
      mult_bits: ``|m| < 2**mult_bits``; the largest ``k <= 62`` is used for which that holds,
        ``|acc_bound * m| < 2**62`` and ``|b| < 2**62``.
      acc_bound: the largest ``|acc|`` (the worst case), so ``acc * m + b`` cannot overflow int64.

    Returns:
      int64 ``m``, ``k``, ``b``, each ``(C,)``.

    Raises:
      ValueError: ``|M| >= 2**mult_bits`` (no ``k >= 0`` fits) or a non-finite value.

    Example:
      >>> m, k, b = requant_params(np.array([0.375]), np.array([0.25]))
      >>> int(m[0]), int(k[0]), int(b[0]), int(m[0]) / 2**int(k[0])
      (1610612736, 32, 1073741824, 0.375)
    """
    M = np.asarray(multiplier, np.float64).reshape(-1)
    B = np.broadcast_to(np.asarray(offset, np.float64).reshape(-1), M.shape)
    if not (np.all(np.isfinite(M)) and np.all(np.isfinite(B))):
        raise ValueError("requantization multiplier or offset is not finite")
    lim_m = min(2.0 ** mult_bits, 2.0 ** 62 / max(int(acc_bound), 1))
    m_out, k_out, b_out = (np.zeros(M.shape, np.int64) for _ in range(3))
    for c, (mc, bc) in enumerate(zip(M, B)):
        k = 62
        while k > 0 and (abs(mc) * 2.0 ** k >= lim_m or abs(bc) * 2.0 ** k >= 2.0 ** 62):
            k -= 1
        if abs(mc) * 2.0 ** k >= lim_m or abs(bc) >= 2.0 ** 62:
            raise ValueError(f"requantization multiplier {mc} or offset {bc} is too large for "
                             f"{mult_bits}-bit multipliers")
        m_out[c], k_out[c], b_out[c] = round(mc * 2.0 ** k), k, round(bc * 2.0 ** k)
    return m_out, k_out, b_out


def requantize(acc, m, k, b, lo: int, hi: int) -> np.ndarray:
    """``clip(round_half_even((acc * m + b) / 2**k), lo, hi)`` over the last (channel) axis.

    Args:
      acc: integer accumulators ``(..., C)``.
      m, k, b: int64 ``(C,)`` from :func:`requant_params`.
      lo, hi: the output format's code range (``lo = 0`` folds a ReLU).

    Returns:
      int64 codes, shape of ``acc``.

    Example (hand-computed: ``M = 3/8, B = 1/4``; 5*3/8+1/4 = 2.125, -3*3/8+1/4 = -0.875,
    7*3/8+1/4 = 2.875, 2*3/8+1/4 = 1.0, 100*3/8 + 1/4 = 37.75 -> clipped to 15)::

      >>> m, k, b = requant_params(np.array([0.375]), np.array([0.25]))
      >>> requantize(np.array([[5], [-3], [7], [2], [100]]), m, k, b, -15, 15).ravel().tolist()
      [2, -1, 3, 1, 15]
    """
    v = np.asarray(acc, np.int64) * m + b
    return np.clip(round_shift_half_even(v, k), lo, hi)


def accumulator_worst_case(fan_in: int, w_code_min: int, w_code_max: int, a_code_min: int,
                           a_code_max: int) -> int:
    """Largest ``|sum_i a_i w_i|`` over ``fan_in`` terms with codes in the given ranges.

    ``fan_in * max|w code| * max|a code|`` (attained by all-extreme operands of matching signs).

    Example:
      >>> accumulator_worst_case(800, -1, 1, 0, 15)   # LeNet5 conv2, W2 A4
      12000
    """
    return int(fan_in) * max(abs(int(w_code_min)), abs(int(w_code_max))) * \
        max(abs(int(a_code_min)), abs(int(a_code_max)))


# -- the program ----------------------------------------------------------------------------------

@dataclasses.dataclass
class IntLayer:
    """One conv/dense layer of the integer program.

    Attributes:
      name: the Flax module path (``conv1``, ``stage1_block1/conv2``, ``fc``).
      kind: ``'conv'`` (HWIO ``w``) or ``'dense'`` (IO ``w``).
      w: int32 weight codes.
      stride, padding: conv geometry (``'VALID'`` or ``'SAME'``).
      in_frac, in_lo, in_hi: the input codes' step ``2**-in_frac`` and range.
      m, k, b: int64 ``(C,)`` requantization (see :func:`requantize`).
      out_frac, out_lo, out_hi: the output codes' step and clip range.
      acc_bound: worst-case ``|acc|``; ``acc_dtype``: ``'int32'`` or ``'int64'``.
    """
    name: str
    kind: str
    w: np.ndarray
    stride: int
    padding: str
    in_frac: int
    in_lo: int
    in_hi: int
    m: np.ndarray
    k: np.ndarray
    b: np.ndarray
    out_frac: int
    out_lo: int
    out_hi: int
    acc_bound: int
    acc_dtype: str

    _META = ("name", "kind", "stride", "padding", "in_frac", "in_lo", "in_hi", "out_frac",
             "out_lo", "out_hi", "acc_bound", "acc_dtype")


@dataclasses.dataclass
class IntegerProgram:
    """The integer network: ``lut`` (C, 256) int32 input table, layers by name, settings."""
    model: str
    fine_frac_bits: int
    fine_bits: int
    mult_bits: int
    input_frac: int
    lut: np.ndarray
    layers: dict

    def to_arrays(self) -> tuple[dict, dict]:
        """``(meta, arrays)``: JSON-able description and the npz arrays (keys ``program/...``)."""
        arrays = {"input/lut": self.lut.astype(np.int32)}
        layers = []
        for i, (name, L) in enumerate(self.layers.items()):
            rec = {f: getattr(L, f) for f in IntLayer._META}
            rec["w_key"] = f"codes/{name}/kernel"       # the packed weight codes
            for a in ("m", "k", "b"):
                key = f"program/{i}/{a}"
                arrays[key] = getattr(L, a).astype(np.int64)
                rec[a + "_key"] = key
            layers.append(rec)
        meta = {"model": self.model, "fine_frac_bits": self.fine_frac_bits,
                "fine_bits": self.fine_bits, "mult_bits": self.mult_bits,
                "input_frac": self.input_frac, "lut_key": "input/lut", "layers": layers,
                "requantization": "out = clip(round_half_even((acc * m + b) / 2**k), out_lo, "
                                  "out_hi), int64; acc = sum(in_code * w_code)",
                "logits": f"codes of the last layer times 2**-{self.fine_frac_bits}"}
        return meta, arrays


def _fmt_range(fmt) -> tuple[int, int, int]:
    return int(np.asarray(fmt.frac_bits)), int(fmt.code_min), int(fmt.code_max)


def _channel_steps(fmt, kernel_shape, path: str) -> np.ndarray:
    """``(C,)`` float64 weight steps; error if the step varies inside a dot product."""
    step = np.broadcast_to(np.asarray(fmt.step_for(len(kernel_shape)), np.float64),
                           kernel_shape).reshape(-1, kernel_shape[-1])
    if not np.all(step == step[:1]):
        kind = getattr(fmt, "granularity", type(fmt).__name__)
        raise ValueError(f"layer {path}: its weight scales vary inside a dot product ({kind} "
                         "scales, e.g. SYQ pixel-wise); integer-only inference needs one scale "
                         "per output channel")
    return step[0]


def _get(tree, path: str):
    for name in path.split("/"):
        tree = tree[name]
    return tree


def _graph(model: str, params: dict) -> list[tuple[str, str, str | None, str]]:
    """``[(layer, kind, bn, padding, stride)]`` in call order, with which BN follows it."""
    if model == "lenet5":
        return [("conv1", "conv", None, "VALID", 1), ("conv2", "conv", None, "VALID", 1),
                ("fc1", "dense", None, None, 1), ("fc2", "dense", None, None, 1)]
    if model == "vgg7":
        convs = [(f"conv{i}", "conv", f"bn{i}", "SAME", 1) for i in range(1, 7)]
        return convs + [("fc1", "dense", "bn_fc1", None, 1), ("fc2", "dense", None, None, 1)]
    if model.startswith("resnet"):
        depth = int(model[len("resnet"):])
        n = (depth - 2) // 6
        out = [("conv_in", "conv", "bn_in", "SAME", 1)]
        for s in (1, 2, 3):
            for blk in range(1, n + 1):
                stride = 2 if (s > 1 and blk == 1) else 1
                p = f"stage{s}_block{blk}"
                out += [(f"{p}/conv1", "conv", f"{p}/bn1", "SAME", stride),
                        (f"{p}/conv2", "conv", f"{p}/bn2", "SAME", 1)]
        return out + [("fc", "dense", None, None, 1)]
    raise ValueError(f"integer inference supports {', '.join(SUPPORTED_MODELS)}; not {model!r}")


DEFAULT_FINE_FRAC_BITS = 20   # why 20: the module docstring, "Default fine step"
DEFAULT_FINE_BITS = 31


def build_program(net, *, fine_frac_bits: int = DEFAULT_FINE_FRAC_BITS,
                  fine_bits: int = DEFAULT_FINE_BITS,
                  mult_bits: int = 31) -> IntegerProgram:
    """The integer program of an exported network (:class:`~symog_jax.export.integer.
    ExportedNetwork`, as :func:`~symog_jax.export.integer.load_integer` returns it).

    Args:
      net: the exported network.
      fine_frac_bits: ``F``: the step ``2**-F`` of every tensor the trained model keeps in
        float (normalised input, ResNet residual stream, float activations, logits); default
        20 (the smallest measured ``F`` at which no code differs from Flax, see the module
        docstring).
      fine_bits: signed bits of those fine codes (saturating): range ``+-(2**(fine_bits-1)-1)``;
        default 31 (``|value| < 1024`` at ``F = 20``).
      mult_bits: bits of the requantization multipliers.

    Raises:
      ValueError (one line): an unsupported model, a kernel the method kept in float (the
        first/last layer of ``float_first_last``, or nothing quantized), weight scales that vary
        inside a dot product (SYQ pixel-wise), or a requantization that does not fit.
    """
    from symog_jax.models.layers import BN_EPSILON

    model = net.model["name"]
    if model not in SUPPORTED_MODELS:
        raise ValueError(f"integer inference supports {', '.join(SUPPORTED_MODELS)}; not "
                         f"{model!r}")
    if not (1 <= int(fine_bits) <= 31 and 0 <= int(fine_frac_bits) <= 30):
        raise ValueError(f"fine_bits must be in 1..31 and fine_frac_bits in 0..30, got "
                         f"{fine_bits}, {fine_frac_bits}")
    F, fmax = int(fine_frac_bits), 2 ** (int(fine_bits) - 1) - 1
    params, fmts, codes, stats = net.hq.params, net.hq.formats, net.hq.codes, net.batch_stats
    acts = {p: _fmt_range(f) for p, f in net.act_formats.items()}
    graph = _graph(model, params)
    names = [g[0] for g in graph]

    def in_fmt(i: int, nonneg: bool):
        """(frac, lo, hi) of layer i's input codes."""
        if names[i] in acts:
            return acts[names[i]]
        return (F, 0 if nonneg else -fmax, fmax)

    # The input table: pixel -> codes of the first layer's input format, as Flax computes x.
    mean = np.asarray(net.input_mean, np.float32)
    std = np.asarray(net.input_std, np.float32)
    p = np.arange(256, dtype=np.float32)[None, :]
    x = (p / np.float32(255.0) - mean[:, None]) / std[:, None]           # (C, 256) float32
    f0, lo0, hi0 = in_fmt(0, nonneg=False)
    lut = np.clip(np.rint(x.astype(np.float64) * 2.0 ** f0), lo0, hi0).astype(np.int64)
    in_ranges = {0: (f0, int(lut.min()), int(lut.max()))}

    layers = {}
    for i, (name, kind, bn, padding, stride) in enumerate(graph):
        fmt = _get(fmts, f"{name}/kernel")
        if fmt is None:
            raise ValueError(f"layer {name} keeps float weights (float_first_last, or a method "
                             "that quantizes nothing); integer-only inference needs integer "
                             "weight codes in every layer")
        w = np.asarray(_get(codes, f"{name}/kernel"), np.int64)
        s_w = _channel_steps(fmt, w.shape, name)
        C = w.shape[-1]
        layer_params = _get(params, name)
        bias = np.asarray(layer_params.get("bias", np.zeros(C)), np.float64)
        g, h = np.ones(C), bias
        if bn is not None:
            bnp, bns = _get(params, bn), _get(stats, bn)
            g = np.asarray(bnp["scale"], np.float64) / np.sqrt(
                np.asarray(bns["var"], np.float64) + BN_EPSILON)
            h = (bias - np.asarray(bns["mean"], np.float64)) * g + np.asarray(bnp["bias"],
                                                                              np.float64)
        # Input format: after the previous layer (ReLU -> non-negative) unless it is the image.
        if i == 0:
            fi, li, hi_ = in_ranges[0]
        else:
            fi, li, hi_ = in_fmt(i, nonneg=True)
        # Output format: what the next consumer expects.
        is_last = i == len(graph) - 1
        if is_last:
            fo, lo_o, hi_o = F, -fmax, fmax
        elif model.startswith("resnet") and (name == "conv_in" or name.endswith("/conv2")):
            # The residual stream: fine step; conv2's BN output is added before the ReLU.
            fo, lo_o, hi_o = F, (0 if name == "conv_in" else -fmax), fmax
        else:
            fo, lo_o, hi_o = in_fmt(i + 1, nonneg=True)
            lo_o = max(lo_o, 0)                      # the ReLU before the next layer
        fan_in = int(np.prod(w.shape[:-1]))
        bound = accumulator_worst_case(fan_in, fmt.code_min, fmt.code_max, li, hi_)
        M = 2.0 ** (-fi) * s_w * g / 2.0 ** (-fo)
        B = h / 2.0 ** (-fo)
        m, k, b = requant_params(M, B, mult_bits=mult_bits, acc_bound=bound)
        if bound >= 2 ** 62:
            raise ValueError(f"layer {name}: the accumulator may reach {bound} >= 2**62")
        layers[name] = IntLayer(name, kind, w.astype(np.int32), stride, padding or "VALID",
                                fi, li, hi_, m, k, b, fo, lo_o, hi_o, bound,
                                "int32" if bound < 2 ** 31 else "int64")
    return IntegerProgram(model, F, int(fine_bits), int(mult_bits), f0, lut.astype(np.int32),
                          layers)


def load_program(path) -> IntegerProgram:
    """The integer program stored in an export file (no float parameter is read).

    Raises:
      ValueError: the file has no integer program (the message says why, e.g. SYQ pixel-wise
        scales or float weights).
    """
    manifest, arrays = read_npz(path)
    meta = manifest.get("integer_program")
    if meta is None:
        raise ValueError(f"{path} has no integer program: {manifest.get('integer_program_error')}")
    by_key = {r["codes_key"]: r for r in manifest["params"] if r["quantized"]}
    layers = {}
    for rec in meta["layers"]:
        kw = {f: rec[f] for f in IntLayer._META}
        kw.update({a: arrays[rec[a + "_key"]].astype(np.int64) for a in ("m", "k", "b")})
        w = by_key[rec["w_key"]]
        raw = arrays[rec["w_key"]]
        kw["w"] = decode_codes(raw, w["storage"], w["code_min"], w["shape"])
        layers[rec["name"]] = IntLayer(**kw)
    return IntegerProgram(meta["model"], meta["fine_frac_bits"], meta["fine_bits"],
                          meta["mult_bits"], meta["input_frac"],
                          arrays[meta["lut_key"]].astype(np.int32), layers)


# -- the forward pass ---------------------------------------------------------------------------

def _same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def _matmul(a: np.ndarray, w: np.ndarray, bound: int, exact_int: bool) -> np.ndarray:
    if not exact_int and bound < 2 ** 53:
        return np.rint(a.astype(np.float64) @ w.astype(np.float64)).astype(np.int64)
    return a.astype(np.int64) @ w.astype(np.int64)


def _layer(L: IntLayer, a: np.ndarray, stats: dict, exact_int: bool) -> np.ndarray:
    """Accumulate and requantize; ``a`` int64 codes (NHWC or NC)."""
    if "__trace__" in stats:
        stats["__trace__"].setdefault(L.name, []).append(a * 2.0 ** (-L.in_frac))
    if L.kind == "conv":
        kh, kw_, cin, cout = L.w.shape
        if L.padding == "SAME":
            ph, pw = _same_pads(a.shape[1], kh, L.stride), _same_pads(a.shape[2], kw_, L.stride)
            a = np.pad(a, ((0, 0), ph, pw, (0, 0)))
        win = np.lib.stride_tricks.sliding_window_view(a, (kh, kw_), axis=(1, 2))
        win = win[:, ::L.stride, ::L.stride]                     # (N, Ho, Wo, C, kh, kw)
        n, ho, wo = win.shape[:3]
        cols = win.transpose(0, 1, 2, 4, 5, 3).reshape(n * ho * wo, kh * kw_ * cin)
        acc = _matmul(cols, L.w.reshape(-1, cout), L.acc_bound, exact_int).reshape(
            n, ho, wo, cout)
    else:
        acc = _matmul(a.reshape(a.shape[0], -1), L.w, L.acc_bound, exact_int)
    peak = int(np.abs(acc).max(initial=0))
    if peak > L.acc_bound:
        raise AssertionError(f"layer {L.name}: |acc| {peak} above its worst case {L.acc_bound}")
    stats[L.name] = max(stats.get(L.name, 0), peak)
    if "__trace__" in stats:
        stats["__trace__"].setdefault(L.name + ":acc", []).append(acc)
    return requantize(acc, L.m, L.k, L.b, L.out_lo, L.out_hi)


def _maxpool2(a: np.ndarray) -> np.ndarray:
    n, h, w, c = a.shape
    a = a[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c)
    return a.max(axis=(2, 4))


def _to_input(stream: np.ndarray, F: int, L: IntLayer) -> np.ndarray:
    """Fine-step codes -> the layer's input format (round half to even, clip)."""
    d = L.in_frac - F
    if d >= 0:
        out = stream * (1 << d)
    else:
        out = div_round_half_even(stream, 1 << (-d))
    return np.clip(out, L.in_lo, L.in_hi)


def _forward(prog: IntegerProgram, images: np.ndarray, stats: dict, exact_int: bool):
    Ls = prog.layers
    C = prog.lut.shape[0]
    a = prog.lut[np.arange(C)[None, None, None, :], images.astype(np.int64)].astype(np.int64)
    F, fmax = prog.fine_frac_bits, 2 ** (prog.fine_bits - 1) - 1
    if prog.model == "lenet5":
        a = _maxpool2(_layer(Ls["conv1"], a, stats, exact_int))
        a = _maxpool2(_layer(Ls["conv2"], a, stats, exact_int))
        a = _layer(Ls["fc1"], a.reshape(a.shape[0], -1), stats, exact_int)
        return _layer(Ls["fc2"], a, stats, exact_int)
    if prog.model == "vgg7":
        for i in range(1, 7):
            a = _layer(Ls[f"conv{i}"], a, stats, exact_int)
            if i % 2 == 0:
                a = _maxpool2(a)
        a = _layer(Ls["fc1"], a.reshape(a.shape[0], -1), stats, exact_int)
        return _layer(Ls["fc2"], a, stats, exact_int)
    # ResNet: `a` is the residual stream at the fine step from here on.
    a = _layer(Ls["conv_in"], a, stats, exact_int)
    blocks = sorted({n.rsplit("/", 1)[0] for n in Ls if n.startswith("stage")},
                    key=lambda s: tuple(int(v) for v in re.findall(r"\d+", s)))
    for blk in blocks:
        L1, L2 = Ls[f"{blk}/conv1"], Ls[f"{blk}/conv2"]
        y = _layer(L1, _to_input(a, F, L1), stats, exact_int)
        y = _layer(L2, y, stats, exact_int)
        sc = a[:, ::L1.stride, ::L1.stride, :]
        sc = np.pad(sc, ((0, 0), (0, 0), (0, 0), (0, y.shape[-1] - sc.shape[-1])))
        a = np.clip(y + sc, 0, fmax)
    Lf = Ls["fc"]
    hw = a.shape[1] * a.shape[2]
    total = a.sum(axis=(1, 2))                                     # int64
    d = Lf.in_frac - F
    num = total * (1 << d) if d >= 0 else total
    den = hw * (1 << (-d)) if d < 0 else hw
    pooled = np.clip(div_round_half_even(num, den), Lf.in_lo, Lf.in_hi)
    return _layer(Lf, pooled, stats, exact_int)


def run_integer(program: IntegerProgram, images: np.ndarray, *, batch_size: int = 100,
                exact_int: bool = False, trace: dict | None = None
                ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Integer-only inference on uint8 images.

    Args:
      program: from :func:`build_program` or :func:`load_program`.
      images: uint8 ``(N, H, W, C)``.
      batch_size: images per step (memory of the im2col buffers).
      exact_int: use int64 matmuls everywhere instead of the exact float64 BLAS path.
      trace: if a dict, filled with ``{layer: [input values per batch]}`` (codes times their
        step, float64) and ``{layer + ':acc': [accumulators]}``, for debugging.

    Returns:
      ``(logit_codes, logits, max_abs_acc)``: int64 ``(N, classes)`` codes at step
      ``2**-fine_frac_bits``, float64 ``logits = codes * 2**-fine_frac_bits``, and
      ``{layer: largest |accumulator| seen}``.

    Raises:
      ValueError: images that are not uint8 NHWC with the program's channel count.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != program.lut.shape[0]:
        raise ValueError(f"images must be uint8 (N, H, W, {program.lut.shape[0]}), got "
                         f"{images.dtype} {images.shape}")
    stats: dict = {} if trace is None else {"__trace__": trace}
    outs = [_forward(program, images[i:i + batch_size], stats, exact_int)
            for i in range(0, len(images), batch_size)]
    stats.pop("__trace__", None)
    codes = np.concatenate(outs) if outs else np.zeros((0, 0), np.int64)
    return codes, codes * 2.0 ** (-program.fine_frac_bits), stats


def accumulator_table(program: IntegerProgram, max_abs_acc: dict) -> list[dict]:
    """Per layer: fan-in, worst case, bits it needs (sign included), max |acc| seen and bits.

    Returns:
      ``[{"layer", "fan_in", "worst_case", "worst_case_bits", "max_seen", "max_seen_bits",
      "acc_dtype"}]`` in program order; ``*_bits`` is the two's complement width holding
      ``+-value``: ``ceil(log2(value + 1)) + 1``.
    """
    rows = []
    for name, L in program.layers.items():
        seen = int(max_abs_acc.get(name, 0))
        rows.append({"layer": name, "fan_in": int(np.prod(L.w.shape[:-1])),
                     "worst_case": L.acc_bound,
                     "worst_case_bits": math.ceil(math.log2(L.acc_bound + 1)) + 1,
                     "max_seen": seen, "max_seen_bits": math.ceil(math.log2(seen + 1)) + 1,
                     "acc_dtype": L.acc_dtype})
    return rows


__all__ += ["accumulator_table"]
