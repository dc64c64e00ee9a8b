"""Integer-only reference inference (numpy) for any exported registry model.

Everything between the uint8 image and the integer logits is integer arithmetic:

* **Input.** The trained model sees the normalised image ``x = (p / 255 - mean) / std`` in
  float. Here a per-channel lookup table ``lut[c, p]`` (256 integer entries per channel, built at
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
* **The graph** is the model's own structure (:mod:`symog_jax.models.structure`), so every
  registry model runs, at any width or pruned ``widths``: a conv/dense with the batch norm and
  ReLU that alone follow it is one integer layer, and writes its codes in the input format of
  the layer that alone reads it (through max-pooling and flattening).
* **Pooling.** Max-pooling runs on the codes: rounding to a format is monotone, so
  ``round(max(y)) = max(round(y))``. Average pooling (DenseNet transitions) and global average
  pooling sum codes and divide with round-half-to-even integer division, straight into the
  output format.
* **Residual stream, concatenations.** The trained model keeps a ResNet's block inputs/outputs
  (the shortcut path) and a DenseNet's concatenated features in float. Here they are held as
  codes at the fine step ``2**-F`` (signed ``fine_bits`` bits, saturating; default 31 bits, so
  ``|value| < 2**(30-F) = 1024`` at F=20): the last BN of a block (and of a projection
  shortcut) is requantized to ``2**-F``, the shortcut codes (option A: subsampled and
  zero-padded) are added, ReLU clips at 0; a DenseNet layer's new channels are written at
  ``2**-F`` and concatenated. A layer reading such a tensor gets it rounded to its activation
  format by a shift with round-half-to-even.
* **Pre-activation batch norm** (DenseNet: BN-ReLU on a concatenation, before each conv) is a
  per-channel integer requantization of the fine codes, ``clip(round_half_even((x * m + b) /
  2**k))``, straight into the next conv's input format (its ReLU the clip at 0).
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
stream, float activations: at most half a fine step per rounding), the multipliers' 31 bits and
float32 rounding in the Flax model; a code can differ where a value lies within that of a
rounding boundary.

**Wide settings** (``fine_frac_bits=36, fine_bits=48, mult_bits=46``: int64 fine codes and
multipliers) remove the first two: measured on 1-epoch W2A8 runs of ResNet-20, ResNet-56 and
DenseNet-40 (10,000 CIFAR-10 test images), every class and logit equals the Flax model's
evaluated in float64, while the default settings differ on 7, 63 and 3 images. Against float32
Flax some differ in either setting (3, 27 and 1 with the wide program): there the float32 model
itself differs from its float64 evaluation. A batch norm on the fine stream (DenseNet) keeps
31-bit multipliers and multiplies exactly with :func:`requantize_wide`, whose product can
exceed int64.

Matrix products: the integer products are summed exactly. Where the worst case is below
``2**53``, they are computed as float64 BLAS products of the integer values, which are then
exact (every partial sum is an integer below ``2**53``); otherwise with numpy int64 matmul
(``exact_int=True`` forces that everywhere).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from symog_jax.export.packing import decode_codes, read_npz
from symog_jax.models.layers import BN_EPSILON
from symog_jax.models.registry import MODEL_NAMES, create_model
from symog_jax.models.structure import Structure

__all__ = ["DEFAULT_FINE_BITS", "DEFAULT_FINE_FRAC_BITS", "IntAffine", "IntegerProgram",
           "IntLayer", "accumulator_worst_case", "build_program", "check_program_settings",
           "int64_products_overflow", "load_program", "requant_params", "requantize",
           "requantize_wide", "round_shift_half_even", "run_integer", "div_round_half_even",
           "structure_of"]


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
        ``|acc_bound * m| < 2**62`` and ``|b| < 2**62`` for the *rounded* ``m`` and ``b``
        (always, also where rounding reaches a bound); ``|m / 2**k - M| <= 2**-k / 2``.
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
    bound = max(int(acc_bound), 1)

    def fits(m_int: int, b_int: int) -> bool:       # the contract, in exact integers
        return (abs(m_int) < 2 ** mult_bits and abs(bound * m_int) < 2 ** 62
                and abs(b_int) < 2 ** 62)

    for c, (mc, bc) in enumerate(zip(M, B)):
        k = 62
        while k > 0 and (abs(mc) * 2.0 ** k >= lim_m or abs(bc) * 2.0 ** k >= 2.0 ** 62):
            k -= 1
        m_int, b_int = round(mc * 2.0 ** k), round(bc * 2.0 ** k)
        # Rounding can reach a bound that the real value stays below (e.g. M = (2**31 - 0.25)
        # / 2**40 rounds to m = 2**31): one shift less then keeps the contract.
        while k > 0 and not fits(m_int, b_int):
            k -= 1
            m_int, b_int = round(mc * 2.0 ** k), round(bc * 2.0 ** k)
        if not fits(m_int, b_int):
            raise ValueError(f"requantization multiplier {mc} or offset {bc} is too large for "
                             f"{mult_bits}-bit multipliers")
        m_out[c], k_out[c], b_out[c] = m_int, k, b_int
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


_SPLIT = 31


def requantize_wide(x, m, k, b, lo: int, hi: int) -> np.ndarray:
    """:func:`requantize` computed exactly for ``|x| < 2**55`` and ``|m| < 2**31``.

    ``x * m`` may then exceed int64; the product is split at ``2**31`` (``x = xh 2**31 + xl``,
    ``b = bh 2**31 + bl``) so every partial product and sum fits, and the rounding reads the
    remainder in two parts. Used for the batch norms on the fine stream (DenseNet), whose
    inputs can have up to ``fine_bits`` bits.

    Args:
      x: int64 ``(..., C)``; m: ``|m| < 2**31``, k: ``0..62``, b: ``|b| < 2**62``, int64 ``(C,)``.
      lo, hi: clip range.

    Returns:
      int64 codes, shape of ``x``.

    Example (``2**40 * 3 / 2**41 = 1.5`` rounds to 2; ``-2**40 * 5 / 2**41 = -2.5`` to -2)::

      >>> x = np.array([[2 ** 40], [-(2 ** 40)]])
      >>> requantize_wide(x, np.array([3]), np.array([41]), np.array([0]), -9, 9).ravel().tolist()
      [2, -2]
    """
    x = np.asarray(x, np.int64)
    m, k, b = (np.asarray(v, np.int64) for v in (m, k, b))
    S = np.int64(_SPLIT)
    mask = (np.int64(1) << S) - 1
    xh, xl = x >> S, x & mask
    bh, bl = b >> S, b & mask
    t = xl * m + bl                                  # |t| < 2**62 + 2**31
    u = xh * m + bh + (t >> S)                       # value = u * 2**31 + tl
    tl = t & mask
    # k >= 31: q = u >> j with j = k - 31; remainder r * 2**31 + tl against 2**(k - 1)
    j = np.maximum(k - S, 0)
    q_hi = u >> j
    r = u - (q_hi << j)
    half_r = np.where(j > 0, np.int64(1) << np.maximum(j - 1, 0), 0)
    odd_hi = (q_hi & 1) == 1
    up_hi = np.where(j > 0,
                     (r > half_r) | ((r == half_r) & ((tl > 0) | odd_hi)),
                     (tl > (np.int64(1) << (S - 1))) | ((tl == (np.int64(1) << (S - 1)))
                                                        & odd_hi))
    # k < 31: q = u * 2**(31 - k) + (tl >> k); remainder tl mod 2**k against 2**(k - 1)
    kk = np.minimum(k, S)
    sh = S - kk
    big = np.abs(u) >= (np.int64(1) << np.maximum(62 - sh, 0))   # would not fit: saturate
    q_lo = np.where(big, np.sign(u) * (np.int64(1) << 62), (u << sh) + (tl >> kk))
    r_lo = tl & ((np.int64(1) << kk) - 1)
    half_lo = np.where(kk > 0, np.int64(1) << np.maximum(kk - 1, 0), 0)
    up_lo = np.where(kk > 0, (r_lo > half_lo) | ((r_lo == half_lo) & ((q_lo & 1) == 1)),
                     False) & ~big
    out = np.where(k >= S, q_hi + up_hi, q_lo + up_lo)
    return np.clip(out, lo, hi)


def int64_products_overflow(program: IntegerProgram) -> str | None:
    """Why plain int64 ``x * m + b`` could overflow in ``program``'s batch norms on the fine
    stream (wide settings, ``fine_bits > 31``), or ``None`` when it cannot.

    The numpy program computes those exactly (:func:`requantize_wide`); the JAX and ONNX
    forms use one int64 product and refuse such programs with this reason.
    """
    for i, op in enumerate(program.ops):
        if op["op"] != "affine":
            continue
        A = program.affines[op["name"]]
        _, lo, hi = program.ops[op["inputs"][0]]["out"]
        worst = max(abs(lo), abs(hi)) * int(np.abs(A.m).max(initial=0)) + \
            int(np.abs(A.b).max(initial=0))
        if worst >= 2 ** 63:
            return (f"batch norm {A.name}: |x * m + b| may reach 2**{math.log2(worst):.1f} "
                    f"with fine_bits={program.fine_bits} (int64 holds 2**63); export with "
                    "fine_bits <= 31 for this runtime")
    return None


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
    """One conv/dense layer of the integer program (with its batch norm and ReLU folded).

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
class IntAffine:
    """A batch norm that no conv/dense precedes alone (DenseNet's pre-activation BN on a
    concatenation), with its ReLU: per channel ``clip(round_half_even((x * m + b) / 2**k))``.

    Attributes:
      name: the batch norm's module path; ``in_frac``: the input codes' step; ``m, k, b``:
      int64 ``(C,)``; ``out_frac, out_lo, out_hi``: output step and clip range.
    """
    name: str
    in_frac: int
    m: np.ndarray
    k: np.ndarray
    b: np.ndarray
    out_frac: int
    out_lo: int
    out_hi: int

    _META = ("name", "in_frac", "out_frac", "out_lo", "out_hi")


@dataclasses.dataclass
class IntegerProgram:
    """The integer network.

    Attributes:
      model: the model's name; ``fine_frac_bits``, ``fine_bits``, ``mult_bits``,
        ``input_frac``: settings; ``lut``: ``(C, 256)`` int64 input table
        (stored as int32 where it fits).
      layers: ``{path: IntLayer}`` (conv/dense); ``affines``: ``{path: IntAffine}``.
      ops: the graph, in order; op ``i`` writes tensor ``i``: dicts with ``op`` (``input``,
        ``layer``, ``affine``, ``relu``, ``max_pool``, ``avg_pool``, ``global_avg_pool``,
        ``flatten``, ``add``, ``concat``, ``pad_channels``), ``inputs`` (tensor indices),
        ``out`` (``[frac, lo, hi]`` of its codes) and the op's attributes; the last op's
        tensor is the logits.
    """
    model: str
    fine_frac_bits: int
    fine_bits: int
    mult_bits: int
    input_frac: int
    lut: np.ndarray
    layers: dict
    affines: dict = dataclasses.field(default_factory=dict)
    ops: list = dataclasses.field(default_factory=list)

    def to_arrays(self) -> tuple[dict, dict]:
        """``(meta, arrays)``: JSON-able description and the npz arrays (keys ``program/...``)."""
        small = np.abs(self.lut).max(initial=0) < 2 ** 31
        arrays = {"input/lut": self.lut.astype(np.int32 if small else np.int64)}
        layers, affines = [], []
        for i, (name, L) in enumerate(self.layers.items()):
            rec = {f: getattr(L, f) for f in IntLayer._META}
            rec["w_key"] = f"codes/{name}/kernel"       # the packed weight codes
            for a in ("m", "k", "b"):
                key = f"program/{i}/{a}"
                arrays[key] = getattr(L, a).astype(np.int64)
                rec[a + "_key"] = key
            layers.append(rec)
        for i, (name, A) in enumerate(self.affines.items()):
            rec = {f: getattr(A, f) for f in IntAffine._META}
            for a in ("m", "k", "b"):
                key = f"program/affine{i}/{a}"
                arrays[key] = getattr(A, a).astype(np.int64)
                rec[a + "_key"] = key
            affines.append(rec)
        meta = {"model": self.model, "fine_frac_bits": self.fine_frac_bits,
                "fine_bits": self.fine_bits, "mult_bits": self.mult_bits,
                "input_frac": self.input_frac, "lut_key": "input/lut", "layers": layers,
                "affines": affines, "ops": self.ops,
                "requantization": "out = clip(round_half_even((acc * m + b) / 2**k), out_lo, "
                                  "out_hi), int64; acc = sum(in_code * w_code)",
                "logits": f"codes of the last op times 2**-{self.fine_frac_bits}"}
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


DEFAULT_FINE_FRAC_BITS = 20   # why 20: the module docstring, "Default fine step"
DEFAULT_FINE_BITS = 31


def structure_of(model: dict, channels: int) -> Structure:
    """The :class:`~symog_jax.models.structure.Structure` of an export's ``model`` entry
    (``{"name", "num_classes", "width", "widths", "image_shape"}``), from the registry.

    Raises:
      ValueError: not a registry model (one line).
    """
    name = str(model.get("name", ""))
    if name not in MODEL_NAMES:
        raise ValueError(f"integer inference needs a registry model ({', '.join(MODEL_NAMES)}) "
                         f"or its structure; not {name!r}")
    module = create_model(name, int(model["num_classes"]), width=float(model.get("width", 1.0)),
                          widths=model.get("widths"))
    shape = model.get("image_shape") or (32, 32, channels)
    return module.structure(tuple(shape))


class _Compiler:
    """Turns a structure plus the exported parameters into program ops (see build_program)."""

    TRANSPARENT = ("max_pool", "flatten")       # ops that keep the codes' format

    def __init__(self, net, s: Structure, F: int, fmax: int, mult_bits: int):
        self.net, self.s, self.F, self.fmax, self.mult_bits = net, s, F, fmax, mult_bits
        self.acts = {p: _fmt_range(f) for p, f in net.act_formats.items()}
        self.users: list[list[int]] = [[] for _ in s.nodes]
        for i, node in enumerate(s.nodes):
            for j in node.inputs:
                self.users[j].append(i)
        self.ops: list[dict] = []
        self.formats: list[tuple] = []           # (frac, lo, hi) per tensor
        self.nonneg: list[bool] = []
        self.tensor: dict[int, int] = {}          # structure node -> program tensor
        self.layers, self.affines = {}, {}

    # -- formats ----------------------------------------------------------------------------
    def layer_input_target(self, c: int, nonneg: bool) -> tuple:
        path = self.s.nodes[c].path
        if path in self.acts:
            return self.acts[path]
        return (self.F, 0 if nonneg else -self.fmax, self.fmax)

    def consumer_layer(self, j: int) -> int | None:
        """The conv/dense that alone reads node ``j`` (through max-pool/flatten), if any."""
        while j != self.s.output and len(self.users[j]) == 1:
            c = self.users[j][0]
            op = self.s.nodes[c].op
            if op in ("conv", "dense"):
                return c
            if op not in self.TRANSPARENT:
                return None
            j = c
        return None

    def out_format(self, end: int, nonneg: bool) -> tuple:
        """Codes a value ending at node ``end`` is written in: its sole consumer layer's input
        format, the fine step for logits and for tensors several ops (or a join) read."""
        if end == self.s.output:
            return (self.F, -self.fmax, self.fmax)
        c = self.consumer_layer(end)
        if c is not None:
            f, lo, hi = self.layer_input_target(c, nonneg)
            return (f, max(lo, 0) if nonneg else lo, hi)
        return (self.F, 0 if nonneg else -self.fmax, self.fmax)

    def emit(self, op: dict, fmt: tuple, nonneg: bool, nodes: Sequence[int]) -> int:
        op["out"] = [int(v) for v in fmt]
        self.ops.append(op)
        self.formats.append(tuple(int(v) for v in fmt))
        self.nonneg.append(bool(nonneg))
        for n in nodes:
            self.tensor[n] = len(self.ops) - 1
        return len(self.ops) - 1

    def fuse(self, i: int, kinds: Sequence[str]) -> tuple[list[int], dict]:
        """Nodes ``i`` and the following batch norm / relu that alone read it."""
        chain, found, j = [i], {}, i
        for kind in kinds:
            if j != self.s.output and len(self.users[j]) == 1 and \
                    self.s.nodes[self.users[j][0]].op == kind:
                j = self.users[j][0]
                chain.append(j)
                found[kind] = j
        return chain, found

    # -- folding ----------------------------------------------------------------------------
    def bn_fold(self, path: str, bias: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
        params, stats = self.net.hq.params, self.net.batch_stats
        bnp, bns = _get(params, path), _get(stats, path)
        g = np.asarray(bnp["scale"], np.float64) / np.sqrt(
            np.asarray(bns["var"], np.float64) + eps)
        h = (bias - np.asarray(bns["mean"], np.float64)) * g + np.asarray(bnp["bias"],
                                                                          np.float64)
        return g, h

    # -- nodes ------------------------------------------------------------------------------
    def compile(self) -> None:
        for i, node in enumerate(self.s.nodes):
            if i in self.tensor:
                continue                          # folded into an earlier op
            getattr(self, "node_" + node.op)(i, node)

    def node_input(self, i, node):
        fmt = self.out_format(i, nonneg=False)
        mean = np.asarray(self.net.input_mean, np.float32)
        std = np.asarray(self.net.input_std, np.float32)
        p = np.arange(256, dtype=np.float32)[None, :]
        x = (p / np.float32(255.0) - mean[:, None]) / std[:, None]       # (C, 256) float32
        lut = np.clip(np.rint(x.astype(np.float64) * 2.0 ** fmt[0]), fmt[1], fmt[2])
        self.lut = lut.astype(np.int64)
        self.emit({"op": "input", "inputs": []},
                  (fmt[0], int(self.lut.min()), int(self.lut.max())), False, [i])

    def node_conv(self, i, node):
        chain, found = self.fuse(i, ("batch_norm", "relu"))
        relu = "relu" in found
        t = self.tensor[node.inputs[0]]
        tf, tlo, thi = self.formats[t]
        target = self.layer_input_target(i, self.nonneg[t])
        if target[0] == tf:
            fi, li, hi_ = tf, max(tlo, target[1]), min(thi, target[2])
        else:
            fi, li, hi_ = target
        fo, lo_o, hi_o = self.out_format(chain[-1], relu)
        if relu:
            lo_o = max(lo_o, 0)
        name = node.path
        fmt = _get(self.net.hq.formats, f"{name}/kernel")
        if fmt is None:
            raise ValueError(f"layer {name} keeps float weights (float_first_last, or a method "
                             "that quantizes nothing); integer-only inference needs integer "
                             "weight codes in every layer")
        w = np.asarray(_get(self.net.hq.codes, f"{name}/kernel"), np.int64)
        s_w = _channel_steps(fmt, w.shape, name)
        C = w.shape[-1]
        bias = np.asarray(_get(self.net.hq.params, name).get("bias", np.zeros(C)), np.float64)
        g, h = np.ones(C), bias
        if "batch_norm" in found:
            bn = self.s.nodes[found["batch_norm"]]
            g, h = self.bn_fold(bn.path, bias, bn.attrs.get("epsilon", BN_EPSILON))
        fan_in = int(np.prod(w.shape[:-1]))
        bound = accumulator_worst_case(fan_in, fmt.code_min, fmt.code_max, li, hi_)
        if bound >= 2 ** 62:
            raise ValueError(f"layer {name}: the accumulator may reach {bound} >= 2**62")
        m, k, b = requant_params(2.0 ** (-fi) * s_w * g / 2.0 ** (-fo), h / 2.0 ** (-fo),
                                 mult_bits=self.mult_bits, acc_bound=bound)
        stride, padding = 1, "VALID"
        if node.op == "conv":
            strides = set(node.attrs["strides"])
            padding = node.attrs["padding"]
            if len(strides) != 1 or padding not in ("SAME", "VALID") or \
                    node.attrs["groups"] != 1:
                raise ValueError(f"layer {name}: integer inference supports square strides, "
                                 "SAME/VALID padding and ungrouped convs")
            stride = strides.pop()
        self.layers[name] = IntLayer(name, node.op, w.astype(np.int32), int(stride), padding,
                                     fi, li, hi_, m, k, b, fo, lo_o, hi_o, bound,
                                     "int32" if bound < 2 ** 31 else "int64")
        self.emit({"op": "layer", "name": name, "inputs": [t]}, (fo, lo_o, hi_o), relu, chain)

    node_dense = node_conv

    def node_batch_norm(self, i, node):
        chain, found = self.fuse(i, ("relu",))
        relu = "relu" in found
        t = self.tensor[node.inputs[0]]
        tf, tlo, thi = self.formats[t]
        fo, lo_o, hi_o = self.out_format(chain[-1], relu)
        if relu:
            lo_o = max(lo_o, 0)
        C = node.shape[-1]
        g, h = self.bn_fold(node.path, np.zeros(C), node.attrs.get("epsilon", BN_EPSILON))
        # requantize_wide multiplies exactly for 31-bit multipliers and any fine input
        m, k, b = requant_params(2.0 ** (-tf) * g / 2.0 ** (-fo), h / 2.0 ** (-fo),
                                 mult_bits=min(self.mult_bits, _SPLIT),
                                 acc_bound=min(max(abs(tlo), abs(thi)), 2 ** _SPLIT - 1))
        self.affines[node.path] = IntAffine(node.path, tf, m, k, b, fo, lo_o, hi_o)
        self.emit({"op": "affine", "name": node.path, "inputs": [t]}, (fo, lo_o, hi_o), relu,
                  chain)

    def node_relu(self, i, node):
        t = self.tensor[node.inputs[0]]
        f, lo, hi = self.formats[t]
        self.emit({"op": "relu", "inputs": [t]}, (f, max(lo, 0), hi), True, [i])

    def _same_format(self, i, node, attrs: dict):
        t = self.tensor[node.inputs[0]]
        self.emit({"op": node.op, "inputs": [t], **attrs}, self.formats[t], self.nonneg[t], [i])

    def node_max_pool(self, i, node):
        self._same_format(i, node, {"window": list(node.attrs["window"]),
                                    "strides": list(node.attrs["strides"]),
                                    "padding": node.attrs["padding"]})

    def node_flatten(self, i, node):
        self._same_format(i, node, {})

    def _averaging(self, i, node, attrs: dict):
        t = self.tensor[node.inputs[0]]
        nonneg = self.nonneg[t]
        self.emit({"op": node.op, "inputs": [t], **attrs}, self.out_format(i, nonneg), nonneg,
                  [i])

    def node_avg_pool(self, i, node):
        self._averaging(i, node, {"window": list(node.attrs["window"]),
                                  "strides": list(node.attrs["strides"]),
                                  "padding": node.attrs["padding"]})

    def node_global_avg_pool(self, i, node):
        self._averaging(i, node, {})

    def _join(self, i, node):
        ts = [self.tensor[j] for j in node.inputs]
        nonneg = all(self.nonneg[t] for t in ts)
        lo = 0 if nonneg else -self.fmax
        if node.op == "concat":
            lo = min(min(self.formats[t][1] for t in ts), 0) if not nonneg else 0
        self.emit({"op": node.op, "inputs": ts}, (self.F, lo, self.fmax), nonneg, [i])

    node_add = _join
    node_concat = _join

    def node_pad_channels(self, i, node):
        t = self.tensor[node.inputs[0]]
        f, lo, hi = self.formats[t]
        self.emit({"op": "pad_channels", "inputs": [t], "stride": int(node.attrs["stride"]),
                   "channels": int(node.shape[-1])}, (f, min(lo, 0), max(hi, 0)),
                  self.nonneg[t], [i])


def check_program_settings(fine_frac_bits: int, fine_bits: int, mult_bits: int) -> None:
    """Refuses integer-program settings outside what int64 arithmetic holds (one line).

    ``fine_bits`` in 2..56 (a global average pool sums up to 64 fine codes in int64),
    ``fine_frac_bits`` in 0..(fine_bits - 2) (at least one integer bit besides the sign), and
    ``mult_bits`` in 2..62.

    Example:
      >>> check_program_settings(20, 31, 31)
      >>> check_program_settings(40, 31, 31)
      Traceback (most recent call last):
      ...
      ValueError: fine_frac_bits must be in 0..29 (fine_bits - 2), got 40
    """
    for name, v in (("fine_frac_bits", fine_frac_bits), ("fine_bits", fine_bits),
                    ("mult_bits", mult_bits)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {v!r}")
    if not 2 <= fine_bits <= 56:
        raise ValueError(f"fine_bits must be in 2..56, got {fine_bits}")
    if not 0 <= fine_frac_bits <= fine_bits - 2:
        raise ValueError(f"fine_frac_bits must be in 0..{fine_bits - 2} (fine_bits - 2), got "
                         f"{fine_frac_bits}")
    if not 2 <= mult_bits <= 62:
        raise ValueError(f"mult_bits must be in 2..62, got {mult_bits}")


def build_program(net, *, fine_frac_bits: int = DEFAULT_FINE_FRAC_BITS,
                  fine_bits: int = DEFAULT_FINE_BITS, mult_bits: int = 31,
                  structure: Structure | None = None) -> IntegerProgram:
    """The integer program of an exported network (:class:`~symog_jax.export.integer.
    ExportedNetwork`, as :func:`~symog_jax.export.integer.load_integer` returns it).

    The program follows the model's structure (:mod:`symog_jax.models.structure`): every
    conv/dense with the batch norm and ReLU that alone follow it becomes one integer layer;
    a batch norm on its own (DenseNet's pre-activation BN) an integer per-channel
    requantization; pools, flattening, residual additions (option-A zero padding or
    projections), concatenations and the global average pool work on the codes. A layer
    writes its codes in the input format of the layer that alone reads it (through max-pool
    and flattening); every other tensor -- the residual stream, a concatenation, logits, float
    activations -- is held at the fine step ``2**-F``.

    Args:
      net: the exported network.
      fine_frac_bits: ``F``: the step ``2**-F`` of every tensor the trained model keeps in
        float (normalised input, ResNet residual stream, float activations, logits); default
        20 (the smallest measured ``F`` at which no code differs from Flax, see the module
        docstring).
      fine_bits: signed bits of those fine codes (saturating): range ``+-(2**(fine_bits-1)-1)``;
        default 31 (``|value| < 1024`` at ``F = 20``).
      mult_bits: bits of the requantization multipliers.
      structure: the model's structure (default: built from the registry with ``net.model``).

    Raises:
      ValueError (one line): a model that is not in the registry (and no structure), a kernel
        the method kept in float (the first/last layer of ``float_first_last``, or nothing
        quantized), weight scales that vary inside a dot product (SYQ pixel-wise), or a
        requantization that does not fit.
    """
    check_program_settings(fine_frac_bits, fine_bits, mult_bits)
    if structure is None:
        structure = structure_of(net.model, len(np.asarray(net.input_mean).reshape(-1)))
    F, fmax = int(fine_frac_bits), 2 ** (int(fine_bits) - 1) - 1
    comp = _Compiler(net, structure, F, fmax, int(mult_bits))
    comp.compile()
    if comp.tensor.get(structure.output) != len(comp.ops) - 1:
        raise ValueError("integer inference: the model's output is not its last operation")
    return IntegerProgram(str(net.model.get("name", "")), F, int(fine_bits), int(mult_bits),
                          comp.formats[0][0], comp.lut, comp.layers,
                          comp.affines, comp.ops)


def load_program(path) -> IntegerProgram:
    """The integer program stored in an export file (no float parameter is read).

    Raises:
      ValueError: the file has no integer program (the message says why, e.g. SYQ pixel-wise
        scales or float weights), or one written before programs held their graph; a broken
        or tampered file (one line naming the file and field, see
        :func:`~symog_jax.export.packing.validate_export`).
    """
    manifest, arrays = read_npz(path)
    meta = manifest.get("integer_program")
    if meta is None:
        raise ValueError(f"{path} has no integer program: {manifest.get('integer_program_error')}")
    if "ops" not in meta:
        raise ValueError(f"{path} holds an integer program without its graph (export version "
                         f"{manifest.get('version')}); export the run again")
    try:
        return _program(meta, manifest, arrays)
    except (KeyError, TypeError, IndexError, AttributeError) as e:
        raise ValueError(f"{path}: malformed integer program ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None


def _program(meta: dict, manifest: dict, arrays: dict) -> IntegerProgram:
    by_key = {r["codes_key"]: r for r in manifest["params"] if r["quantized"]}
    layers, affines = {}, {}
    for rec in meta["layers"]:
        kw = {f: rec[f] for f in IntLayer._META}
        kw.update({a: arrays[rec[a + "_key"]].astype(np.int64) for a in ("m", "k", "b")})
        w = by_key[rec["w_key"]]
        raw = arrays[rec["w_key"]]
        kw["w"] = decode_codes(raw, w["storage"], w["code_min"], w["shape"], w["code_max"])
        layers[rec["name"]] = IntLayer(**kw)
    for rec in meta["affines"]:
        kw = {f: rec[f] for f in IntAffine._META}
        kw.update({a: arrays[rec[a + "_key"]].astype(np.int64) for a in ("m", "k", "b")})
        affines[rec["name"]] = IntAffine(**kw)
    return IntegerProgram(meta["model"], meta["fine_frac_bits"], meta["fine_bits"],
                          meta["mult_bits"], meta["input_frac"],
                          arrays[meta["lut_key"]].astype(np.int64), layers, affines,
                          meta["ops"])


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


def _convert(codes: np.ndarray, frm: int, to: int) -> np.ndarray:
    """Codes at step ``2**-frm`` -> step ``2**-to`` (exact shift, or round half to even)."""
    d = to - frm
    return codes * (1 << d) if d >= 0 else div_round_half_even(codes, 1 << (-d))


def _windows(a: np.ndarray, window, strides, padding: str, fill: int) -> np.ndarray:
    """``(N, Ho, Wo, C, kh, kw)`` pooling windows of NHWC ``a`` (SAME pads with ``fill``)."""
    kh, kw_ = window
    sh, sw = strides
    if padding == "SAME":
        a = np.pad(a, ((0, 0), _same_pads(a.shape[1], kh, sh), _same_pads(a.shape[2], kw_, sw),
                       (0, 0)), constant_values=fill)
    win = np.lib.stride_tricks.sliding_window_view(a, (kh, kw_), axis=(1, 2))
    return win[:, ::sh, ::sw]


def _divide(total: np.ndarray, count: int, frm: int, to: int, lo: int, hi: int) -> np.ndarray:
    """``round_half_even(total * 2**-frm / count / 2**-to)`` clipped, integer-only."""
    d = to - frm
    num = total * (1 << d) if d >= 0 else total
    den = count * (1 << (-d)) if d < 0 else count
    return np.clip(div_round_half_even(num, den), lo, hi)


def _run_op(prog: IntegerProgram, op: dict, xs: list, fmts: list, stats: dict,
            exact_int: bool) -> np.ndarray:
    kind, (f, lo, hi) = op["op"], op["out"]
    if kind == "layer":
        L = prog.layers[op["name"]]
        a = xs[0]
        if fmts[0][0] != L.in_frac:        # e.g. the residual stream into a block's conv1
            a = np.clip(_convert(a, fmts[0][0], L.in_frac), L.in_lo, L.in_hi)
        return _layer(L, a, stats, exact_int)
    if kind == "affine":
        A = prog.affines[op["name"]]
        return requantize_wide(xs[0], A.m, A.k, A.b, A.out_lo, A.out_hi)
    if kind == "relu":
        return np.maximum(xs[0], 0)
    if kind == "flatten":
        return xs[0].reshape(xs[0].shape[0], -1)
    if kind == "max_pool":       # rounding is monotone: max of codes = codes of the max
        fill = np.iinfo(np.int64).min
        return _windows(xs[0], op["window"], op["strides"], op["padding"], fill).max(
            axis=(4, 5))
    if kind == "avg_pool":       # flax counts SAME padding as zeros
        win = _windows(xs[0], op["window"], op["strides"], op["padding"], 0)
        return _divide(win.sum(axis=(4, 5)), int(np.prod(op["window"])), fmts[0][0], f, lo, hi)
    if kind == "global_avg_pool":
        a = xs[0]
        return _divide(a.sum(axis=(1, 2)), a.shape[1] * a.shape[2], fmts[0][0], f, lo, hi)
    if kind in ("add", "concat"):
        parts = [_convert(x, g[0], f) for x, g in zip(xs, fmts)]
        if kind == "add":
            return np.clip(parts[0] + parts[1], lo, hi)
        return np.concatenate(parts, axis=-1)
    if kind == "pad_channels":
        s = op["stride"]
        a = xs[0][:, ::s, ::s, :]
        return np.pad(a, ((0, 0), (0, 0), (0, 0), (0, op["channels"] - a.shape[-1])))
    raise ValueError(f"integer program: unknown op {kind!r}")


def _forward(prog: IntegerProgram, images: np.ndarray, stats: dict, exact_int: bool):
    C = prog.lut.shape[0]
    last_use = {}
    for i, op in enumerate(prog.ops):
        for t in op["inputs"]:
            last_use[t] = i
    values: dict[int, np.ndarray] = {}
    for i, op in enumerate(prog.ops):
        if op["op"] == "input":
            values[i] = prog.lut[np.arange(C)[None, None, None, :],
                                 images.astype(np.int64)].astype(np.int64)
        else:
            fmts = [prog.ops[t]["out"] for t in op["inputs"]]
            values[i] = _run_op(prog, op, [values[t] for t in op["inputs"]], fmts, stats,
                                exact_int)
        for t in op["inputs"]:
            if last_use[t] == i:
                del values[t]              # free tensors no later op reads
    return values[len(prog.ops) - 1]


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
