"""Signal-to-quantization-noise ratios of a network: per tensor, at the output, and the additive
noise model that predicts the second from the first.

Lin, Talathi & Annapureddy (2016, Sec. 4) model the quantization error of every quantized tensor
(a layer's weights or its input activations) as independent additive noise that reaches the
output with the signal's own gain, so that

    1 / SQNR_out = sum_i 1 / SQNR_i        (SQNRs as power ratios, not dB)

and :func:`predicted_output_sqnr_db` is ``-10 log10(sum_i 10**(-s_i / 10))`` for per-tensor SQNRs
``s_i`` in dB. :func:`measure_noise_model` checks this on a model: it quantizes one tensor at a
time and all of them together, and compares the measured output SQNR (float vs quantized logits)
with the prediction from the tensors' own SQNRs and with the sum of the one-at-a-time output
noises (additivity alone).

Paths: weight formats are keyed by the ``/``-joined path of the leaf inside
``variables["params"]`` (``'conv1/kernel'``); activation formats by the layer's module path
(``'conv2'``, as :func:`~symog_jax.quantizers.activations.quantize_activations` uses them), and
apply to that layer's *input*.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from symog_jax.numerics.calibration import sqnr_db
from symog_jax.numerics.formats import FixedPointFormat
from symog_jax.numerics.optimal_step import fixed_point_format_for
from symog_jax.numerics.rounding import quantize
from symog_jax.quantizers.activations import (check_format_mapping, quantize_activations,
                                              record_layer_inputs)
from symog_jax.quantizers.masks import path_str, resolve_mask

__all__ = [
    "NoiseModelReport",
    "TensorNoise",
    "activation_formats_for",
    "measure_noise_model",
    "measured_sqnr_db",
    "predicted_output_sqnr_db",
    "quantize_params",
    "quantized_output_sqnr_db",
    "weight_formats_for",
]


def predicted_output_sqnr_db(per_tensor_sqnr_db: Sequence[float]) -> float:
    """Output SQNR of the additive noise model: ``-10 log10(sum_i 10**(-s_i / 10))`` in dB.

    Args:
      per_tensor_sqnr_db: SQNRs ``s_i`` in dB of the quantized tensors (a sequence or 1-D array
        of floats; ``inf`` for a tensor quantized without error, which adds no noise).

    Returns:
      A Python float in dB (``inf`` if every entry is ``inf``); at most ``min(s_i)``, and
      ``s - 10 log10(n)`` for ``n`` equal entries ``s``.

    Raises:
      ValueError: the sequence is empty, or holds NaN or ``-inf``.

    Example:
      >>> round(predicted_output_sqnr_db([30.0, 30.0]), 4)      # two equal noises: -3.01 dB
      26.9897
      >>> round(predicted_output_sqnr_db([20.0, 40.0, float("inf")]), 4)
      19.9568
    """
    s = np.asarray(per_tensor_sqnr_db, np.float64).ravel()
    if s.size == 0:
        raise ValueError("predicted_output_sqnr_db: no per-tensor SQNR given")
    if np.any(np.isnan(s)) or np.any(s == -np.inf):
        raise ValueError(f"predicted_output_sqnr_db: SQNRs must be finite or +inf, got "
                         f"{s.tolist()}")
    # 10^(-s/10) computed relative to the smallest SQNR, so that large values do not underflow
    # and small ones do not overflow.
    lo = float(s.min())
    if lo == math.inf:
        return math.inf
    return lo - 10.0 * math.log10(float(np.sum(10.0 ** (-(s - lo) / 10.0))))


def _leaf_paths(params) -> list[str]:
    return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def quantize_params(params, weight_formats: Mapping[str, FixedPointFormat]):
    """``params`` with the leaves named in ``weight_formats`` rounded to their formats.

    Args:
      params: a parameter pytree (e.g. ``variables["params"]``), arrays of any shape.
      weight_formats: ``{leaf path: FixedPointFormat}``; paths ``/``-joined as
        :func:`~symog_jax.quantizers.masks.path_str` writes them (``'conv1/kernel'``).

    Returns:
      A pytree of the same structure; named leaves are
      :func:`~symog_jax.numerics.rounding.quantize`-d (same shape and dtype), others unchanged.

    Raises:
      ValueError: a path of ``weight_formats`` is not a leaf of ``params`` (the message lists
        the leaf paths).

    Example:
      >>> from symog_jax.numerics.formats import symmetric_format
      >>> q = quantize_params(params, {"dense/kernel": symmetric_format(2, 1)})
      >>> q["dense"]["kernel"][:2, 0].tolist(), q["dense"]["bias"] is params["dense"]["bias"]
      ([-0.5, -0.5], True)
    """
    formats = check_format_mapping(weight_formats, "weight_formats", per_tensor=False)
    paths = _leaf_paths(params)
    missing = [p for p in formats if p not in paths]
    if missing:
        raise ValueError(f"weight_formats names {missing[0]!r}, which is not a parameter leaf; "
                         f"leaves: {', '.join(paths[:20])}{' ...' if len(paths) > 20 else ''}")

    def visit(path, leaf):
        fmt = formats.get(path_str(path))
        return leaf if fmt is None else quantize(jnp.asarray(leaf), fmt)

    return jax.tree_util.tree_map_with_path(visit, params)


def _bits_for(bits, path: str, leaf) -> int:
    if callable(bits):
        return bits(path, leaf)
    if isinstance(bits, Mapping):
        if path not in bits:
            raise ValueError(f"no bit-width for {path!r}: bits has {', '.join(map(repr, bits))}")
        return bits[path]
    return bits


def weight_formats_for(params, bits, distribution: str = "gaussian", *, mask=None,
                       rounding: str = "log") -> dict[str, FixedPointFormat]:
    """The model-based format of every selected weight leaf (:func:`fixed_point_format_for`).

    Args:
      params: a parameter pytree (e.g. ``variables["params"]``).
      bits: an int for every leaf, a ``{path: bits}`` dict, or ``(path, leaf) -> int`` (as
        :class:`~symog_jax.quantizers.policy.FormatPolicy` takes).
      distribution: ``"gaussian"``, ``"laplacian"``, ``"uniform"`` or ``"empirical"``.
      mask: which leaves (see :func:`~symog_jax.quantizers.masks.resolve_mask`; default: conv and
        dense kernels).
      rounding: ``"log"`` or ``"mse"`` (see :func:`fixed_point_format_for`).

    Returns:
      ``{path: FixedPointFormat}`` in tree order, signed symmetric per-tensor formats (unsigned
      for a leaf with no negative entry).

    Example:
      >>> weight_formats_for(params, 4)   # kernel: RMS 0.59, step 0.3534 * 0.59 = 2**-2.26
      {'dense/kernel': FixedPointFormat(bits=4, frac_bits=2, symmetric)}
    """
    flags = jax.tree_util.tree_leaves(resolve_mask(mask, params))
    out = {}
    for (path, leaf), flag in zip(jax.tree_util.tree_flatten_with_path(params)[0], flags):
        if flag:
            name = path_str(path)
            out[name] = fixed_point_format_for(np.asarray(leaf), _bits_for(bits, name, leaf),
                                               distribution, rounding=rounding)
    return out


def activation_formats_for(layer_inputs: Sequence[tuple[str, Any]], bits,
                           distribution: str = "gaussian", *, skip_first: bool = True,
                           rounding: str = "log") -> dict[str, FixedPointFormat]:
    """Model-based formats for the recorded inputs of Conv/Dense layers (a calibration batch).

    The counterpart of :func:`~symog_jax.quantizers.activations.calibrate_activation_formats`
    that uses :func:`fixed_point_format_for` (distribution model) instead of an exact search:
    unsigned when a layer's calibration input has no negative value (after ReLU), signed
    symmetric otherwise.

    Args:
      layer_inputs: ``(path, x)`` pairs as returned by
        :func:`~symog_jax.quantizers.activations.record_layer_inputs`; a path recorded several
        times is calibrated on all its inputs together.
      bits: an int, a ``{path: bits}`` dict or ``(path, x) -> int``.
      distribution, rounding: as for :func:`fixed_point_format_for`.
      skip_first: leave out the first layer (whose input is the image).

    Returns:
      ``{layer path: FixedPointFormat}`` in first-call order, for
      :func:`~symog_jax.quantizers.activations.quantize_activations`.

    Raises:
      ValueError: no layer inputs (an empty calibration set), or an input that is empty, all
        zero or non-finite (one line naming the layer).

    Example:
      >>> rec = [("conv1", np.ones((2, 3))), ("fc", np.abs(np.linspace(-1.0, 1.0, 64)))]
      >>> activation_formats_for(rec, 4)     # half-Gaussian model, RMS 0.58: 2**-2.6
      {'fc': FixedPointFormat(bits=4, frac_bits=3, unsigned)}
    """
    if not layer_inputs:
        raise ValueError("activation_formats_for: no layer inputs (empty calibration set)")
    grouped: dict[str, list[np.ndarray]] = {}
    for path, x in layer_inputs:
        grouped.setdefault(path, []).append(np.asarray(x, np.float64).ravel())
    first = layer_inputs[0][0]
    out = {}
    for path, xs in grouped.items():
        if skip_first and path == first:
            continue
        x = np.concatenate(xs)
        try:
            out[path] = fixed_point_format_for(x, _bits_for(bits, path, x), distribution,
                                               rounding=rounding)
        except ValueError as e:
            raise ValueError(f"layer {path!r}: {e}") from None
    return out


def measured_sqnr_db(x, bits: Sequence[int], distribution: str = "gaussian", *,
                     signed: bool | None = None) -> np.ndarray:
    """SQNR of a tensor quantized with :func:`fixed_point_format_for` at several bit-widths.

    A measured SQNR-vs-bits curve, e.g. one row of the table that
    :meth:`symog_jax.quantizers.bit_allocation.SQNRModel.from_table` takes.

    Args:
      x: the tensor (any shape, float).
      bits: the bit-widths, e.g. ``range(2, 9)``.
      distribution, signed: as for :func:`fixed_point_format_for`.

    Returns:
      float64 array ``(len(bits),)`` in dB (``inf`` where the error is zero).

    Example:
      >>> w = np.random.default_rng(0).standard_normal(4096) * 0.1
      >>> np.round(measured_sqnr_db(w, [4, 8]), 1)  # 18.9 and 40.5 dB at the optimal step
      array([18.6, 38.9])
    """
    x32 = np.asarray(x, np.float32)
    if not np.all(np.isfinite(x32)):
        raise ValueError("measured_sqnr_db: the tensor contains NaN or inf")
    signal = float(np.sum(np.square(x32, dtype=np.float64)))
    out = []
    for b in bits:
        fmt = fixed_point_format_for(x32, b, distribution, signed=signed)
        step = np.float32(fmt.step)        # a power of two: x / step and code * step are exact
        xq = np.clip(np.round(x32 / step), fmt.code_min, fmt.code_max) * step  # as quantize()
        noise = float(np.sum(np.square(x32 - xq, dtype=np.float64)))
        out.append(10.0 * math.log10(signal / noise) if noise > 0 else math.inf)
    return np.asarray(out, np.float64)


def quantized_output_sqnr_db(apply_fn: Callable[[Any, Any], Any], params, x, *,
                             weight_formats: Mapping[str, FixedPointFormat] | None = None,
                             activation_formats: Mapping[str, FixedPointFormat] | None = None
                             ) -> float:
    """SQNR of the network output: float logits vs logits with the given tensors quantized.

    Args:
      apply_fn: ``(params, x) -> logits`` (see :func:`measure_noise_model`).
      params: the parameter pytree ``apply_fn`` takes.
      x: the calibration batch (not empty).
      weight_formats, activation_formats: as for :func:`measure_noise_model` (either may be
        empty; with both empty the result is ``inf``).

    Returns:
      ``10 log10(sum y**2 / sum (y - y_q)**2)`` over all logits, a Python float in dB.

    Example:
      >>> from symog_jax.numerics.formats import symmetric_format
      >>> round(quantized_output_sqnr_db(lambda p, x: model.apply({"params": p}, x), params, x,
      ...                                weight_formats={"dense/kernel": symmetric_format(6, 5)}),
      ...       1)
      30.8
    """
    w_formats = check_format_mapping(weight_formats, "weight_formats", per_tensor=False)
    a_formats = check_format_mapping(activation_formats, "activation_formats")
    if np.size(x) == 0:
        raise ValueError("quantized_output_sqnr_db: the calibration batch is empty")
    reference = jnp.asarray(apply_fn(params, x), jnp.float32)
    quantized_params = quantize_params(params, w_formats) if w_formats else params
    with quantize_activations(a_formats):
        quantized = jnp.asarray(apply_fn(quantized_params, x), jnp.float32)
    return float(sqnr_db(reference, quantized))


@dataclasses.dataclass(frozen=True)
class TensorNoise:
    """One quantized tensor in a :class:`NoiseModelReport`.

    Attributes:
      kind: ``"weights"`` or ``"activations"``.
      path: the leaf path (weights) or the layer path whose input it is (activations).
      bits: the format's bit-width.
      tensor_sqnr_db: SQNR of the tensor itself (float vs its quantized values; for activations,
        over the calibration batch, in the float network).
      output_sqnr_db: SQNR of the logits when only this tensor is quantized.
    """

    kind: str
    path: str
    bits: int
    tensor_sqnr_db: float
    output_sqnr_db: float


@dataclasses.dataclass(frozen=True)
class NoiseModelReport:
    """What :func:`measure_noise_model` measures.

    Attributes:
      tensors: one :class:`TensorNoise` per quantized tensor (weights first, in the given order).
      output_sqnr_db: measured output SQNR with every tensor quantized together.
      predicted_sqnr_db: the noise model from the tensors' own SQNRs,
        ``predicted_output_sqnr_db([t.tensor_sqnr_db ...])``.
      additive_sqnr_db: the same combination of the one-at-a-time *output* SQNRs: tests only
        that the noises add, not that each reaches the output unchanged.
    """

    tensors: tuple[TensorNoise, ...]
    output_sqnr_db: float
    predicted_sqnr_db: float
    additive_sqnr_db: float

    @property
    def prediction_error_db(self) -> float:
        """``predicted_sqnr_db - output_sqnr_db`` (positive: the model is optimistic)."""
        return self.predicted_sqnr_db - self.output_sqnr_db

    def table(self) -> str:
        """A plain-text table of the tensors and the three output SQNRs."""
        lines = [f"{'tensor':<28} {'bits':>4} {'tensor dB':>10} {'output dB':>10}"]
        for t in self.tensors:
            lines.append(f"{t.kind[0] + ':' + t.path:<28} {t.bits:>4} {t.tensor_sqnr_db:>10.2f} "
                         f"{t.output_sqnr_db:>10.2f}")
        lines.append(f"all together: measured {self.output_sqnr_db:.2f} dB, predicted from the "
                     f"tensors {self.predicted_sqnr_db:.2f} dB, from the one-at-a-time outputs "
                     f"{self.additive_sqnr_db:.2f} dB")
        return "\n".join(lines)


def measure_noise_model(apply_fn: Callable[[Any, Any], Any], params, x, *,
                        weight_formats: Mapping[str, FixedPointFormat] | None = None,
                        activation_formats: Mapping[str, FixedPointFormat] | None = None
                        ) -> NoiseModelReport:
    """Measures per-tensor and output SQNRs and checks the additive noise model.

    Runs the network ``2 + T`` times on the calibration batch ``x`` (eagerly): in float, with
    each of the ``T`` tensors quantized alone, and with all of them quantized.

    Args:
      apply_fn: ``(params, x) -> logits``, e.g.
        ``lambda p, x: model.apply({**variables, "params": p}, x, train=False)``; it must call
        the Flax layers (activation formats are applied by method interception).
      params: the parameter pytree ``apply_fn`` takes.
      x: the calibration batch (e.g. float32 NHWC images); must not be empty.
      weight_formats: ``{leaf path in params: FixedPointFormat}`` (see :func:`quantize_params`).
      activation_formats: ``{layer path: FixedPointFormat}`` for the layers' inputs (see
        :func:`~symog_jax.quantizers.activations.quantize_activations`).

    Returns:
      :class:`NoiseModelReport` (SQNRs as Python floats in dB).

    Raises:
      ValueError: an empty batch, no formats at all, a weight path that is not a leaf, or an
        activation path that no Conv/Dense layer of the model has.

    Example:
      >>> from symog_jax.numerics.formats import symmetric_format, unsigned_format
      >>> r = measure_noise_model(lambda p, x: model.apply({"params": p}, x), params, x,
      ...                         weight_formats={"dense/kernel": symmetric_format(6, 5)},
      ...                         activation_formats={"dense": unsigned_format(6, 6)})
      >>> [(t.kind, t.path, round(t.tensor_sqnr_db)) for t in r.tensors]
      [('weights', 'dense/kernel', 34), ('activations', 'dense', 40)]
      >>> round(r.output_sqnr_db, 1), round(r.predicted_sqnr_db, 1), round(r.additive_sqnr_db, 1)
      (30.0, 33.1, 30.3)
    """
    w_formats = check_format_mapping(weight_formats, "weight_formats", per_tensor=False)
    a_formats = check_format_mapping(activation_formats, "activation_formats")
    if not w_formats and not a_formats:
        raise ValueError("measure_noise_model: no weight or activation formats given")
    if np.shape(x)[:1] == (0,) or np.size(x) == 0:
        raise ValueError("measure_noise_model: the calibration batch is empty")
    quantize_params(params, w_formats)   # validates the weight paths

    def logits(w_fmts, a_fmts):
        p = quantize_params(params, w_fmts) if w_fmts else params
        with quantize_activations(a_fmts):
            return jnp.asarray(apply_fn(p, x), jnp.float32)

    reference, records = record_layer_inputs(lambda: jnp.asarray(apply_fn(params, x),
                                                                 jnp.float32))
    inputs: dict[str, list[jax.Array]] = {}
    for path, a in records:
        inputs.setdefault(path, []).append(jnp.ravel(jnp.asarray(a, jnp.float32)))
    unknown = [p for p in a_formats if p not in inputs]
    if unknown:
        raise ValueError(f"activation_formats names layer {unknown[0]!r}, which the model does "
                         f"not call; Conv/Dense layers: {', '.join(inputs)}")
    leaves = {path_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}

    tensors = []
    for path, fmt in w_formats.items():
        w = jnp.asarray(leaves[path], jnp.float32)
        tensors.append(TensorNoise("weights", path, int(fmt.bits),
                                   float(sqnr_db(w, quantize(w, fmt))),
                                   float(sqnr_db(reference, logits({path: fmt}, {})))))
    for path, fmt in a_formats.items():
        a = jnp.concatenate(inputs[path])
        tensors.append(TensorNoise("activations", path, int(fmt.bits),
                                   float(sqnr_db(a, quantize(a, fmt))),
                                   float(sqnr_db(reference, logits({}, {path: fmt})))))
    together = float(sqnr_db(reference, logits(w_formats, a_formats)))
    return NoiseModelReport(
        tensors=tuple(tensors), output_sqnr_db=together,
        predicted_sqnr_db=predicted_output_sqnr_db([t.tensor_sqnr_db for t in tensors]),
        additive_sqnr_db=predicted_output_sqnr_db([t.output_sqnr_db for t in tensors]))
