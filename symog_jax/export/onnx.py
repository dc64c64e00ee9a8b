"""The integer program as an ONNX model that onnxruntime runs on integer kernels.

:func:`program_to_onnx` turns an :class:`~symog_jax.export.integer_inference.IntegerProgram`
into an ONNX graph (opset 17) with input ``images`` (uint8 ``(N, H, W, C)``, the raw pixels)
and outputs ``logit_codes`` (int64 ``(N, classes)``, the program's codes at step ``2**-F``)
and ``logits`` (float32, ``codes * 2**-F``).

**Which integer form, and why.** Measured with onnxruntime 1.32 on a 2-core CPU (issue 30):
``QLinearConv`` (uint8 activations, int8 weights) takes 0.24-0.39x the time of a float
``Conv``; ``ConvInteger`` followed by a float requantization 3-10x *more* than float. So every
conv/dense whose output is an 8-bit activation code is one ``QLinearConv`` (a dense layer is a
1x1 ``QLinearConv`` on ``(N, K, 1, 1)``: unlike ``QLinearMatMul`` it takes the int32 bias and
per-output-channel weight scales). The explicit QLinear operators are used rather than QDQ
pairs because their semantics are fixed by the spec; a QDQ graph only becomes integer if the
runtime's optimiser chooses to fuse it.

**Requantization.** ``QLinearConv`` computes ``clip(rint(float32(acc + bias) * x_scale *
w_scale[c] / y_scale) + y_zp)`` (round half to even). Here ``x_scale = 2**-in_frac`` and
``y_scale = 2**-out_frac`` (the fixed-point activation steps), so the product of scales is
``w_scale[c]`` times a power of two, exactly. Per output channel, the weight codes times an
integer ``c`` (kept within 7 bits: onnxruntime's u8s8 kernels on AVX2 machines without VNNI
saturate int16 pair sums with 8-bit weights), the int32 bias and the float32 scale are *fitted*
(:mod:`symog_jax.export.qlinear_fit`) so that the float requantization switches at the same
accumulators as the program's integer one, over every accumulator the layer can reach, and the
fit is verified by emulating the kernel's float32 arithmetic at every switch point. Measured:
every channel fits in trained 2-bit-weight networks, without batch norm (power-of-two
multipliers) and with it, with 4-bit and 8-bit outputs (SYMOG W2A4 and W2A8 VGG7 x0.125 give the
program's codes bit for bit on all 10,000 CIFAR-10 test images through ``QLinearConv``); 8-bit
weights leave ``c = 1`` and most of their batch-norm channels have no exact fit: they get the
partial fit meeting the most switch points from the lowest code up, the export names them, and a
code can flip by one where an accumulator lies at such a channel's rounding boundary.
``qlinear="exact"`` keeps only the channels with a proven fit on ``QLinearConv``: a layer where
at most half lack one computes those on ``ConvInteger`` + the exact integer requantization
beside it (``Concat`` and a channel ``Gather`` restore the order), a layer where more lack one
is all ``ConvInteger``.

**Tensors that do not fit 8 bits** -- the input at the fine step (a run without
``input_bits``), the residual stream, concatenations, pooled averages, logits, all at step
``2**-F`` with up to 31-bit codes -- are int64 tensors computed with exact integer ops (``Add``,
``Mul``, ``Mod``, ``Div``, ``Clip``, ``ReduceSum``, ``Concat``, slices). A conv/dense that
*writes* such a tensor (a ResNet block's last conv, the logits layer, a DenseNet layer's new
channels) cannot use ``QLinearConv`` (its output is 8 bits); it is ``ConvInteger`` (dense:
``MatMulInteger``) with int32 accumulation followed by the program's exact fixed-point
requantization in int64 (``Mod`` with ``fmod=0`` gives the floor remainder, hence round half to
even), so those layers give the program's codes bit for bit -- at ``ConvInteger``'s speed,
which is why a ResNet is slower here than LeNet5 or VGG7 (whose only such layer is the small
logits dense). Every conv/dense *reads* 8-bit codes (uint8 with zero point 0, or 128 for
signed codes); a program whose layer reads wider codes (no ``act_bits``, or no ``input_bits``
for the first layer) is refused with a one-line error.

**Layout.** Images come in NHWC (as the numpy program takes them), are looked up in the
per-channel table (``Gather`` on ``pixel + 256 * channel``) and transposed once to NCHW;
``flatten`` transposes back to NHWC order before reshaping, so the dense weights are the
program's. Pools: ``MaxPool`` on uint8 codes (max of codes = codes of the max); on int64
tensors and for averages, window slices with ``Max`` / a sum and a round-half-even division.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from symog_jax.export import integer_inference as ii
from symog_jax.export.qlinear_fit import QLinearFit, fit_qlinear
from symog_jax.files import write_bytes_atomic

__all__ = ["OPSET", "program_to_float_onnx", "program_to_onnx", "save_onnx", "onnx_op_counts"]

OPSET = 17
_I64_MIN, _I64_MAX = np.iinfo(np.int64).min, np.iinfo(np.int64).max


def _onnx():
    try:
        import onnx  # noqa: F401 - optional dependency
        from onnx import helper, numpy_helper
    except ImportError:
        raise ImportError("ONNX export needs the onnx package: pip install 'symog_jax[onnx]'"
                          ) from None
    return onnx, helper, numpy_helper


@dataclasses.dataclass
class _Val:
    """A tensor of the ONNX graph: ``kind`` ``'u8'`` (uint8 = code + zp) or ``'i64'`` (codes);
    ``shape`` without the batch dimension, NCHW order for images (``(C, H, W)``) or ``(K,)``."""
    name: str
    kind: str
    zp: int
    shape: tuple


def _u8_zero_point(lo: int, hi: int) -> int | None:
    """Zero point that puts codes ``[lo, hi]`` in uint8, or ``None``."""
    zp = 0 if lo >= 0 else 128
    return zp if lo + zp >= 0 and hi + zp <= 255 else None


class _Graph:
    def __init__(self):
        self.onnx, self.helper, self.nh = _onnx()
        self.nodes, self.inits, self.count = [], [], 0

    def fresh(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, value, dtype, hint: str = "c") -> str:
        name = self.fresh(hint)
        self.inits.append(self.nh.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type: str, inputs, hint: str = "t", **attrs) -> str:
        out = self.fresh(hint)
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    # -- exact int64 arithmetic ---------------------------------------------------------------
    def clip(self, x: str, lo: int, hi: int) -> str:
        return self.op("Clip", [x, self.const(lo, np.int64), self.const(hi, np.int64)])

    def div_half_even(self, num: str, den: np.ndarray) -> str:
        """``round_half_even(num / den)`` for int64 ``num`` and positive int64 ``den``."""
        d = self.const(den, np.int64, "den")
        r = self.op("Mod", [num, d], fmod=0)                 # floor remainder, 0 <= r < den
        q = self.op("Div", [self.op("Sub", [num, r]), d])     # exact
        r2 = self.op("Add", [r, r])
        odd = self.op("Equal", [self.op("Mod", [q, self.const(2, np.int64)], fmod=0),
                                self.const(1, np.int64)])
        up = self.op("Or", [self.op("Greater", [r2, d]),
                            self.op("And", [self.op("Equal", [r2, d]), odd])])
        return self.op("Add", [q, self.op("Cast", [up], to=self.onnx.TensorProto.INT64)])

    def requantize(self, acc: str, m, k, b, lo: int, hi: int, spatial: bool) -> str:
        """The program's ``clip(round_half_even((acc * m + b) / 2**k))`` on int64 ``acc``."""
        shape = (-1, 1, 1) if spatial else (-1,)
        v = self.op("Add", [self.op("Mul", [acc, self.const(np.reshape(m, shape), np.int64)]),
                            self.const(np.reshape(b, shape), np.int64)])
        den = np.reshape(np.left_shift(np.int64(1), np.asarray(k, np.int64)), shape)
        return self.clip(self.div_half_even(v, den), lo, hi)

    def convert(self, x: str, frm: int, to: int) -> str:
        """Codes at step ``2**-frm`` to step ``2**-to`` (exact shift or round half to even)."""
        d = to - frm
        if d == 0:
            return x
        if d > 0:
            return self.op("Mul", [x, self.const(1 << d, np.int64)])
        return self.div_half_even(x, np.int64(1 << (-d)))

    def to_i64(self, v: _Val) -> str:
        if v.kind == "i64":
            return v.name
        x = self.op("Cast", [v.name], to=self.onnx.TensorProto.INT64)
        return self.op("Sub", [x, self.const(v.zp, np.int64)]) if v.zp else x

    def to_u8(self, x: str, lo: int, hi: int, shape, what: str) -> _Val:
        zp = _u8_zero_point(lo, hi)
        if zp is None:
            raise ValueError(f"{what} reads codes in [{lo}, {hi}], wider than 8 bits; the ONNX "
                             "export needs 8-bit activation codes at every conv/dense input "
                             "(train with act_bits <= 8, and input_bits 8 for the first layer)")
        x = self.clip(x, lo, hi)
        if zp:
            x = self.op("Add", [x, self.const(zp, np.int64)])
        return _Val(self.op("Cast", [x], to=self.onnx.TensorProto.UINT8), "u8", zp, shape)

    def window_slices(self, x: str, shape, window, strides, pads) -> tuple[list[str], tuple]:
        """Slices ``x[:, :, dy::sh, dx::sw]`` of a padded NCHW tensor, one per window offset."""
        (kh, kw), (sh, sw) = window, strides
        C, Ho, Wo = _pool_shape(shape, window, strides, pads)
        out = []
        for dy in range(kh):
            for dx in range(kw):
                out.append(self.op("Slice", [
                    x, self.const([dy, dx], np.int64), self.const(
                        [dy + (Ho - 1) * sh + 1, dx + (Wo - 1) * sw + 1], np.int64),
                    self.const([2, 3], np.int64), self.const([sh, sw], np.int64)]))
        return out, (C, Ho, Wo)

    def pad_hw(self, x: str, pads, fill: int) -> str:
        if not any(pads):
            return x
        t, l_, b, r = pads
        return self.op("Pad", [x, self.const([0, 0, t, l_, 0, 0, b, r], np.int64),
                               self.const(fill, np.int64)], mode="constant")


def _pool_shape(shape, window, strides, pads) -> tuple:
    """``(C, Ho, Wo)`` of a window op over ``(C, H, W)`` with ONNX pads."""
    C, H, W = shape
    return (C, (H + pads[0] + pads[2] - window[0]) // strides[0] + 1,
            (W + pads[1] + pads[3] - window[1]) // strides[1] + 1)


def _pads(shape, window, strides, padding: str) -> list[int]:
    """ONNX ``[top, left, bottom, right]`` of flax/XLA SAME padding (extra at the end)."""
    if padding != "SAME":
        return [0, 0, 0, 0]
    (t, b), (l_, r) = (ii._same_pads(shape[1], window[0], strides[0]),
                       ii._same_pads(shape[2], window[1], strides[1]))
    return [t, l_, b, r]


class _Emitter:
    def __init__(self, prog: ii.IntegerProgram, image_shape, qlinear: bool | str = True):
        self.qlinear_ok = qlinear
        self.p, self.g, self.image_shape = prog, _Graph(), tuple(int(d) for d in image_shape)
        self.vals: list[_Val] = []
        self.inexact_channels: dict[str, int] = {}
        self.split_channels: dict[str, int] = {}

    def fmt(self, t: int):
        return self.p.ops[t]["out"]

    def emit_input(self, op):
        f, lo, hi = op["out"]
        H, W, C = self.image_shape
        g = self.g
        if self.p.lut.shape[0] != C:
            raise ValueError(f"image_shape has {C} channels, the program's table "
                             f"{self.p.lut.shape[0]}")
        zp = _u8_zero_point(lo, hi)
        table = (self.p.lut.astype(np.int64) + (zp or 0)).reshape(-1)
        pix = g.op("Cast", ["images"], to=g.onnx.TensorProto.INT64)
        idx = g.op("Add", [pix, g.const(256 * np.arange(C), np.int64)])
        dtype = np.uint8 if zp is not None else np.int64
        codes = g.op("Gather", [g.const(table, dtype, "lut"), idx], axis=0)
        nchw = g.op("Transpose", [codes], perm=[0, 3, 1, 2])
        return _Val(nchw, "u8" if zp is not None else "i64", zp or 0, (C, H, W))

    def layer_input(self, L: ii.IntLayer, v: _Val, frm: int) -> _Val:
        g = self.g
        if frm != L.in_frac:
            x = g.clip(g.convert(g.to_i64(v), frm, L.in_frac), L.in_lo, L.in_hi)
            return g.to_u8(x, L.in_lo, L.in_hi, v.shape, f"layer {L.name}")
        if v.kind == "u8":
            return v
        return g.to_u8(v.name, L.in_lo, L.in_hi, v.shape, f"layer {L.name}")

    def emit_layer(self, op, src: _Val):
        L = self.p.layers[op["name"]]
        g = self.g
        x = self.layer_input(L, src, self.fmt(op["inputs"][0])[0])
        if np.abs(L.w).max(initial=0) > 127:
            raise ValueError(f"layer {L.name}: weight codes beyond int8; the ONNX export needs "
                             "weights of at most 8 bits")
        if L.kind == "conv":
            kh, kw, cin, cout = L.w.shape
            w = np.transpose(L.w, (3, 2, 0, 1)).astype(np.int8)
            pads = _pads(x.shape, (kh, kw), (L.stride, L.stride), L.padding)
            _, Ho, Wo = _pool_shape(x.shape, (kh, kw), (L.stride, L.stride), pads)
            out_shape, attrs = (cout, Ho, Wo), {"strides": [L.stride] * 2, "pads": pads,
                                                "kernel_shape": [kh, kw]}
        else:
            cin, cout = L.w.shape
            w = L.w.T.reshape(cout, cin, 1, 1).astype(np.int8)
            out_shape, attrs = (cout,), {"kernel_shape": [1, 1]}
            x = _Val(g.op("Reshape", [x.name, g.const([0, -1, 1, 1], np.int64)]), "u8", x.zp,
                     (cin, 1, 1))
        zp_out = _u8_zero_point(L.out_lo, L.out_hi)
        if self.qlinear_ok and zp_out is not None:
            fit = fit_qlinear(L)
            if fit.int32_ok and (self.qlinear_ok != "exact" or fit.exact.all()):
                y = self.qlinear(L, x, fit, zp_out, attrs)
            elif fit.int32_ok and fit.exact.mean() >= 0.5:
                y = self.split_layer(L, x, w, fit, zp_out, attrs)
            else:
                y = None
            if y is not None:
                if L.kind == "dense":
                    y = g.op("Reshape", [y, g.const([0, -1], np.int64)])
                return _Val(y, "u8", zp_out, out_shape)
        y = self.integer_layer(L, x, w, attrs, np.arange(L.w.shape[-1]))
        if zp_out is not None:
            return g.to_u8(y, L.out_lo, L.out_hi, out_shape, f"layer {L.name}")
        return _Val(y, "i64", 0, out_shape)

    def integer_layer(self, L, x: _Val, w, attrs, channels) -> str:
        """``ConvInteger`` / ``MatMulInteger`` + the exact int64 requantization of the output
        ``channels`` of layer ``L`` (``w``: its int8 weights, OIHW)."""
        g = self.g
        if L.kind == "conv":
            acc = g.op("ConvInteger", [x.name, g.const(w[channels], np.int8, "w"),
                                       g.const(x.zp, np.uint8)], **attrs)
        else:
            acc = g.op("MatMulInteger", [g.op("Reshape", [x.name, g.const([0, -1], np.int64)]),
                                         g.const(L.w[:, channels], np.int8, "w"),
                                         g.const(x.zp, np.uint8)])
        acc = g.op("Cast", [acc], to=g.onnx.TensorProto.INT64)
        return g.requantize(acc, L.m[channels], L.k[channels], L.b[channels], L.out_lo,
                            L.out_hi, L.kind == "conv")

    def split_layer(self, L, x: _Val, w, fit: QLinearFit, zp_out: int, attrs) -> str:
        """The channels with an exact fit on ``QLinearConv``, the few others on
        ``ConvInteger`` with the exact requantization, put back in order (uint8)."""
        g = self.g
        fast, slow = np.nonzero(fit.exact)[0], np.nonzero(~fit.exact)[0]
        y_fast = self.qlinear(L, x, fit, zp_out, attrs, fast)
        y_slow = self.integer_layer(L, x, w, attrs, slow)
        shape = (len(slow),) + ((1, 1) if L.kind == "dense" else ())
        y_slow = g.to_u8(y_slow, L.out_lo, L.out_hi, shape, f"layer {L.name}").name
        if L.kind == "dense":
            y_slow = g.op("Reshape", [y_slow, g.const([0, -1, 1, 1], np.int64)])
        both = g.op("Concat", [y_fast, y_slow], axis=1)
        order = np.argsort(np.concatenate([fast, slow]))     # back to the layer's channels
        self.split_channels[L.name] = int(len(slow))
        return g.op("Gather", [both, g.const(order, np.int64, "order")], axis=1)

    def qlinear(self, L, x: _Val, fit: QLinearFit, zp_out: int, attrs,
                channels=None) -> str:
        """``QLinearConv`` for layer ``L`` (its output ``channels``, default all) with the
        fitted per-channel ``(c, beta, s)``."""
        g = self.g
        channels = np.arange(fit.w.shape[-1]) if channels is None else channels
        fit = dataclasses.replace(fit, w=fit.w[..., channels], scale=fit.scale[channels],
                                  bias=fit.bias[channels], exact=fit.exact[channels],
                                  exact_below=fit.exact_below[channels])
        w = np.transpose(fit.w, (3, 2, 0, 1)) if L.kind == "conv" else \
            fit.w.T.reshape(fit.w.shape[1], fit.w.shape[0], 1, 1)
        self.inexact_channels[L.name] = int(np.sum(~fit.exact))
        x_scale, y_scale = 2.0 ** -L.in_frac, 2.0 ** -L.out_frac
        # the kernel multiplies x_scale * w_scale / y_scale: powers of two, so exactly s
        w_scale = (fit.scale.astype(np.float64) * y_scale / x_scale).astype(np.float32)
        y = g.op("QLinearConv", [
            x.name, g.const(x_scale, np.float32), g.const(x.zp, np.uint8),
            g.const(w, np.int8, "w"), g.const(w_scale, np.float32, "w_scale"),
            g.const(np.zeros(w.shape[0]), np.int8), g.const(y_scale, np.float32),
            g.const(zp_out, np.uint8), g.const(fit.bias, np.int32, "bias")], **attrs)
        lo, hi = L.out_lo + zp_out, L.out_hi + zp_out
        if lo > 0 or hi < 255:                  # a format narrower than uint8 saturation
            y = g.op("Clip", [y, g.const(lo, np.uint8), g.const(hi, np.uint8)])
        return y

    def emit_pool(self, op, src: _Val) -> _Val:
        g = self.g
        kind = op["op"]
        window = tuple(op.get("window", src.shape[1:]))
        strides = tuple(op.get("strides", (1, 1)))
        pads = _pads(src.shape, window, strides, op.get("padding", "VALID"))
        if kind == "max_pool" and src.kind == "u8":
            y = g.op("MaxPool", [src.name], kernel_shape=list(window), strides=list(strides),
                     pads=pads)
            return _Val(y, "u8", src.zp, _pool_shape(src.shape, window, strides, pads))
        x = g.to_i64(src)
        f_in = self.fmt(op["inputs"][0])[0]
        f, lo, hi = op["out"]
        if kind == "global_avg_pool":
            total = g.op("ReduceSum", [x, g.const([2, 3], np.int64)], keepdims=0)
            count, shape = src.shape[1] * src.shape[2], (src.shape[0],)
        else:
            fill = _I64_MIN if kind == "max_pool" else 0
            parts, shape = g.window_slices(g.pad_hw(x, pads, fill), src.shape, window, strides,
                                           pads)
            total = parts[0]
            for part in parts[1:]:       # Max/Sum take no int64 in onnxruntime: pairwise
                total = g.op("Max" if kind == "max_pool" else "Add", [total, part])
            count = window[0] * window[1]
            if kind == "max_pool":
                return _Val(total, "i64", 0, shape)
        d = f - f_in                            # the program's _divide
        num = g.op("Mul", [total, g.const(1 << d, np.int64)]) if d > 0 else total
        den = count * (1 << (-d)) if d < 0 else count
        return _Val(g.clip(g.div_half_even(num, np.int64(den)), lo, hi), "i64", 0, shape)

    def emit(self, op, srcs: list[_Val]) -> _Val:
        g, kind = self.g, op["op"]
        f, lo, hi = op["out"]
        if kind == "layer":
            return self.emit_layer(op, srcs[0])
        if kind == "affine":
            A = self.p.affines[op["name"]]
            y = g.requantize(g.to_i64(srcs[0]), A.m, A.k, A.b, A.out_lo, A.out_hi,
                             len(srcs[0].shape) == 3)
            return _Val(y, "i64", 0, srcs[0].shape)
        if kind == "relu":
            return _Val(g.clip(g.to_i64(srcs[0]), max(lo, 0), hi), "i64", 0, srcs[0].shape)
        if kind == "flatten":
            s = srcs[0]
            x = g.op("Transpose", [s.name], perm=[0, 2, 3, 1]) if len(s.shape) == 3 else s.name
            y = g.op("Reshape", [x, g.const([0, -1], np.int64)])
            return _Val(y, s.kind, s.zp, (int(np.prod(s.shape)),))
        if kind in ("max_pool", "avg_pool", "global_avg_pool"):
            return self.emit_pool(op, srcs[0])
        if kind in ("add", "concat"):
            parts = [g.convert(g.to_i64(s), self.fmt(t)[0], f)
                     for s, t in zip(srcs, op["inputs"])]
            if kind == "add":
                return _Val(g.clip(g.op("Add", parts), lo, hi), "i64", 0, srcs[0].shape)
            y = g.op("Concat", parts, axis=1)
            shape = (sum(s.shape[0] for s in srcs),) + tuple(srcs[0].shape[1:])
            return _Val(y, "i64", 0, shape)
        if kind == "pad_channels":
            s, st = srcs[0], int(op["stride"])
            C, H, W = s.shape
            x = g.op("Slice", [g.to_i64(s), g.const([0, 0], np.int64),
                               g.const([H, W], np.int64), g.const([2, 3], np.int64),
                               g.const([st, st], np.int64)])
            extra = int(op["channels"]) - C
            y = g.op("Pad", [x, g.const([0, 0, 0, 0, 0, extra, 0, 0], np.int64),
                             g.const(0, np.int64)], mode="constant")
            return _Val(y, "i64", 0, (int(op["channels"]), -(-H // st), -(-W // st)))
        raise ValueError(f"ONNX export: the integer program has an op {kind!r} this exporter "
                         "does not know")


def program_to_onnx(program: ii.IntegerProgram, image_shape, *, name: str | None = None,
                    qlinear: bool | str = True):
    """The ONNX model (an ``onnx.ModelProto``, opset 17) of an integer program.

    Args:
      program: from :func:`~symog_jax.export.integer_inference.build_program` or
        :func:`~symog_jax.export.integer_inference.load_program`.
      image_shape: ``(H, W, C)`` of the images (the export manifest's
        ``model["image_shape"]``).
      name: the graph's name (default the program's model name).
      qlinear: ``True`` (default): layers writing 8-bit codes are ``QLinearConv`` (fast, float
        requantization, see the module docstring); ``"exact"``: only for the output
        channels whose fit is proven exact (the others as with ``False``; see the module
        docstring), so the codes are always the program's;
        ``False``: every layer is ``ConvInteger`` / ``MatMulInteger`` + the exact integer
        requantization (bit-identical to the program, and several times slower than float in
        onnxruntime).

    Returns:
      The model; input ``images`` uint8 ``(N, H, W, C)``, outputs ``logit_codes`` int64
      ``(N, classes)`` (the program's codes at ``2**-F``) and ``logits`` float32.

    Raises:
      ValueError (one line): a conv/dense reading codes wider than 8 bits (a run without
        ``act_bits``, or without ``input_bits`` for the first layer), weights wider than 8
        bits, an op this exporter does not know, a program whose int64 products could overflow
        (:func:`~symog_jax.export.integer_inference.int64_products_overflow`).
      ImportError: the ``onnx`` package is missing.
    """
    overflow = ii.int64_products_overflow(program)
    if overflow:
        raise ValueError(f"the ONNX form computes in int64: {overflow}")
    if len(tuple(image_shape)) != 3:
        raise ValueError(f"image_shape must be (H, W, C), got {image_shape}")
    if qlinear not in (True, False, "exact"):
        raise ValueError(f"qlinear must be True, False or 'exact', got {qlinear!r}")
    em = _Emitter(program, image_shape, qlinear)
    g = em.g
    for op in program.ops:
        if op["op"] == "input":
            em.vals.append(em.emit_input(op))
        else:
            em.vals.append(em.emit(op, [em.vals[t] for t in op["inputs"]]))
    last = em.vals[-1]
    if len(last.shape) != 1:
        raise ValueError("ONNX export: the program's last op does not give (N, classes) logits")
    codes = g.to_i64(last)
    g.nodes.append(g.helper.make_node("Identity", [codes], ["logit_codes"]))
    as_f = g.op("Cast", ["logit_codes"], to=g.onnx.TensorProto.FLOAT)
    g.nodes.append(g.helper.make_node(
        "Mul", [as_f, g.const(2.0 ** -program.fine_frac_bits, np.float32)], ["logits"]))
    H, W, C = em.image_shape
    TP = g.onnx.TensorProto
    graph = g.helper.make_graph(
        g.nodes, name or program.model or "integer_program",
        [g.helper.make_tensor_value_info("images", TP.UINT8, ["N", H, W, C])],
        [g.helper.make_tensor_value_info("logit_codes", TP.INT64, ["N", last.shape[0]]),
         g.helper.make_tensor_value_info("logits", TP.FLOAT, ["N", last.shape[0]])],
        g.inits)
    model = g.helper.make_model(graph, opset_imports=[g.helper.make_opsetid("", OPSET)],
                                producer_name="symog_jax")
    model.ir_version = 8
    g.helper.set_model_props(model, {
        "fine_frac_bits": str(program.fine_frac_bits),
        "logits": f"logit_codes * 2**-{program.fine_frac_bits}",
        # channels whose QLinearConv requantization is not proven equal to the program's
        "qlinear_inexact_channels": json.dumps(em.inexact_channels),
        # channels of QLinearConv layers computed by ConvInteger instead (exact mode)
        "integer_kernel_channels": json.dumps(em.split_channels)})
    g.onnx.checker.check_model(model)
    return model


class _FloatEmitter:
    """The program's network in float32: the dequantized folded weights, no activation
    quantization (for speed comparisons: "the same network exported in float")."""

    def __init__(self, prog: ii.IntegerProgram, image_shape, mean, std):
        self.p, self.g = prog, _Graph()
        self.image_shape = tuple(int(d) for d in image_shape)
        self.mean, self.std = mean, std

    def input(self, op) -> str:
        g, C = self.g, self.image_shape[-1]
        p = np.arange(256, dtype=np.float32)[None, :]
        if self.mean is not None:
            table = (p / np.float32(255) - np.asarray(self.mean, np.float32).reshape(-1, 1)) / \
                np.asarray(self.std, np.float32).reshape(-1, 1)
        else:
            table = self.p.lut * 2.0 ** -op["out"][0]
        pix = g.op("Cast", ["images"], to=g.onnx.TensorProto.INT64)
        idx = g.op("Add", [pix, g.const(256 * np.arange(C), np.int64)])
        x = g.op("Gather", [g.const(np.reshape(table, -1), np.float32, "lut"), idx], axis=0)
        return g.op("Transpose", [x], perm=[0, 3, 1, 2])

    def affine_out(self, y: str, M, B, in_frac, out_frac, out_lo, spatial: bool,
                   scale_in: bool) -> str:
        g = self.g
        shape = (-1, 1, 1) if spatial else (-1,)
        if scale_in:
            y = g.op("Mul", [y, g.const(np.reshape(M * 2.0 ** (in_frac - out_frac), shape),
                                        np.float32)])
        y = g.op("Add", [y, g.const(np.reshape(B * 2.0 ** -out_frac, shape), np.float32)])
        return g.op("Relu", [y]) if out_lo >= 0 else y

    def layer(self, op, x: str, shape) -> tuple[str, tuple]:
        g, L = self.g, self.p.layers[op["name"]]
        M = L.m * 2.0 ** -L.k.astype(np.float64)
        B = L.b * 2.0 ** -L.k.astype(np.float64)
        scale = M * 2.0 ** (L.in_frac - L.out_frac)                    # real weight / code
        if L.kind == "conv":
            kh, kw, _, cout = L.w.shape
            w = np.transpose(L.w * scale, (3, 2, 0, 1))
            pads = _pads(shape, (kh, kw), (L.stride, L.stride), L.padding)
            y = g.op("Conv", [x, g.const(w, np.float32, "w"),
                              g.const(B * 2.0 ** -L.out_frac, np.float32)],
                     strides=[L.stride] * 2, pads=pads, kernel_shape=[kh, kw])
            _, Ho, Wo = _pool_shape(shape, (kh, kw), (L.stride, L.stride), pads)
            out = (cout, Ho, Wo)
        else:
            y = g.op("Gemm", [x, g.const(L.w * scale, np.float32, "w"),
                              g.const(B * 2.0 ** -L.out_frac, np.float32)])
            out = (L.w.shape[1],)
        return (g.op("Relu", [y]) if L.out_lo >= 0 else y), out

    def emit(self, op, xs: list, shapes: list) -> tuple[str, tuple]:
        g, kind = self.g, op["op"]
        if kind == "layer":
            return self.layer(op, xs[0], shapes[0])
        if kind == "affine":
            A = self.p.affines[op["name"]]
            return self.affine_out(xs[0], A.m * 2.0 ** -A.k.astype(np.float64),
                                   A.b * 2.0 ** -A.k.astype(np.float64), A.in_frac, A.out_frac,
                                   A.out_lo, len(shapes[0]) == 3, True), shapes[0]
        if kind == "relu":
            return g.op("Relu", [xs[0]]), shapes[0]
        if kind == "flatten":
            x = g.op("Transpose", [xs[0]], perm=[0, 2, 3, 1]) if len(shapes[0]) == 3 else xs[0]
            return g.op("Reshape", [x, g.const([0, -1], np.int64)]), (int(np.prod(shapes[0])),)
        if kind == "global_avg_pool":
            y = g.op("GlobalAveragePool", [xs[0]])
            return g.op("Reshape", [y, g.const([0, -1], np.int64)]), (shapes[0][0],)
        if kind in ("max_pool", "avg_pool"):
            window, strides = tuple(op["window"]), tuple(op["strides"])
            pads = _pads(shapes[0], window, strides, op["padding"])
            attrs = {"kernel_shape": list(window), "strides": list(strides), "pads": pads}
            if kind == "avg_pool":
                attrs["count_include_pad"] = 1           # flax counts SAME padding as zeros
            y = g.op("MaxPool" if kind == "max_pool" else "AveragePool", [xs[0]], **attrs)
            return y, _pool_shape(shapes[0], window, strides, pads)
        if kind == "add":
            return g.op("Add", xs), shapes[0]             # a ReLU after it is its own op
        if kind == "concat":
            return g.op("Concat", xs, axis=1), (sum(s[0] for s in shapes),) + shapes[0][1:]
        if kind == "pad_channels":
            st, (C, H, W) = int(op["stride"]), shapes[0]
            x = g.op("Slice", [xs[0], g.const([0, 0], np.int64), g.const([H, W], np.int64),
                               g.const([2, 3], np.int64), g.const([st, st], np.int64)])
            extra = int(op["channels"]) - C
            y = g.op("Pad", [x, g.const([0, 0, 0, 0, 0, extra, 0, 0], np.int64),
                             g.const(0.0, np.float32)], mode="constant")
            return y, (int(op["channels"]), -(-H // st), -(-W // st))
        raise ValueError(f"float ONNX export: unknown op {kind!r}")


def program_to_float_onnx(program: ii.IntegerProgram, image_shape, *, input_mean=None,
                          input_std=None):
    """The program's network in float32 ONNX (``Conv``/``Gemm`` with the dequantized weights,
    batch norm and bias folded, no activation quantization): the float baseline for speed.

    Args:
      program, image_shape: as for :func:`program_to_onnx`.
      input_mean, input_std: the normalisation (per channel); without them the input is the
        program's table ``lut * 2**-input_frac``.

    Returns:
      An ``onnx.ModelProto``: input ``images`` uint8 ``(N, H, W, C)``, output ``logits``
      float32 ``(N, classes)``.
    """
    em = _FloatEmitter(program, image_shape, input_mean, input_std)
    g = em.g
    names, shapes = [], []
    H, W, C = em.image_shape
    for op in program.ops:
        if op["op"] == "input":
            names.append(em.input(op))
            shapes.append((C, H, W))
        else:
            n, s = em.emit(op, [names[t] for t in op["inputs"]],
                           [shapes[t] for t in op["inputs"]])
            names.append(n)
            shapes.append(s)
    g.nodes.append(g.helper.make_node("Identity", [names[-1]], ["logits"]))
    TP = g.onnx.TensorProto
    graph = g.helper.make_graph(
        g.nodes, (program.model or "program") + "_float",
        [g.helper.make_tensor_value_info("images", TP.UINT8, ["N", H, W, C])],
        [g.helper.make_tensor_value_info("logits", TP.FLOAT, ["N", shapes[-1][0]])], g.inits)
    model = g.helper.make_model(graph, opset_imports=[g.helper.make_opsetid("", OPSET)],
                                producer_name="symog_jax")
    model.ir_version = 8
    g.onnx.checker.check_model(model)
    return model


def save_onnx(model, path) -> int:
    """Writes ``model`` to ``path`` atomically (temporary file, then ``os.replace``).

    Returns:
      The file's size in bytes.
    """
    path = write_bytes_atomic(path, model.SerializeToString())
    return path.stat().st_size


def onnx_op_counts(model) -> dict:
    """``{op_type: count}`` of a model's nodes.

    Example:
      >>> class _M:  # any object with graph.node[i].op_type
      ...     class graph:
      ...         node = [type("N", (), {"op_type": t}) for t in ("Add", "QLinearConv", "Add")]
      >>> onnx_op_counts(_M)
      {'Add': 2, 'QLinearConv': 1}
    """
    counts: dict = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts
