"""Hard quantization at the end of training: rounded weights, integer codes, formats, a report."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from symog_jax.numerics.calibration import sqnr_db
from symog_jax.numerics.formats import FixedPointFormat
from symog_jax.quantizers.masks import path_str
from symog_jax.quantizers.policy import check_finite, find_formats, is_format_node
from symog_jax.numerics.rounding import quantize, to_codes

PyTree = Any


@dataclasses.dataclass(frozen=True)
class LayerReport:
    """Quantization summary of one parameter leaf.

    Attributes:
      path: ``/``-joined parameter path.
      shape: the leaf's shape.
      format: its concrete :class:`FixedPointFormat`, or another method's description of the
        leaf's quantizer (with ``bits``, ``code_min``, ``code_max``, ``step_for``, ``as_dict``,
        ``label``; e.g. :class:`~symog_jax.methods.syq.SYQFormat`).
      near_level_fraction: fraction of weights within a quarter step of a level *before*
        rounding (1.0 after a successful SYMOG training).
      sqnr_db: SQNR between float and rounded weights, in dB (``inf`` if identical).
      max_abs_error_in_steps: largest ``|w - q(w)| / step``.
    """
    path: str
    shape: tuple[int, ...]
    format: Any
    near_level_fraction: float
    sqnr_db: float
    max_abs_error_in_steps: float

    @property
    def num_params(self) -> int:
        return int(np.prod(self.shape))

    def as_dict(self) -> dict:
        if isinstance(self.format, FixedPointFormat):
            fb = self.format.frac_bits
            fmt = {"kind": "fixed_point", "bits": self.format.bits,
                   "frac_bits": list(fb) if isinstance(fb, tuple) else fb,
                   "signed": self.format.signed, "symmetric": self.format.symmetric}
        else:
            fmt = self.format.as_dict()
        return {"path": self.path, "shape": list(self.shape), **fmt,
                "near_level_fraction": self.near_level_fraction,
                # JSON has no inf: rounding that changed nothing has SQNR null ("exact").
                "sqnr_db": self.sqnr_db if math.isfinite(self.sqnr_db) else None,
                "max_abs_error_in_steps": self.max_abs_error_in_steps}


class HardQuantized(NamedTuple):
    """Result of :func:`hard_quantize`.

    Attributes:
      params: the parameters with quantized leaves rounded to their levels (same dtypes).
      codes: int32 codes at quantized leaves, ``None`` elsewhere.
      formats: concrete formats (``frac_bits`` as Python ints/tuples) at quantized leaves,
        ``None`` elsewhere.
      report: one :class:`LayerReport` per quantized leaf, in tree order.
    """
    params: PyTree
    codes: PyTree
    formats: PyTree
    report: list[LayerReport]

    def weight_bits(self) -> tuple[int, int]:
        """``(bits with quantized weights, bits if everything were float32)``; other leaves
        count as float32 in both."""
        quant = float_bits = 0
        for leaf, fmt in zip(jax.tree_util.tree_leaves(self.params),
                             jax.tree_util.tree_leaves(self.formats, is_leaf=is_format_node)):
            n = int(np.size(leaf))
            float_bits += 32 * n
            quant += (fmt.bits if fmt is not None else 32) * n
            quant += int(getattr(fmt, "overhead_bits", 0))   # e.g. float scales per group
        return quant, float_bits

    def summary(self) -> str:
        """A text table of the per-layer report."""
        lines = [f"{'layer':<40} {'shape':<18} {'bits':>4} {'frac':>6} {'near':>7} {'SQNR dB':>8}"]
        for r in self.report:
            if isinstance(r.format, FixedPointFormat):
                fb = r.format.frac_bits
                frac = str(fb) if isinstance(fb, int) else f"{min(fb)}..{max(fb)}"
            else:
                frac = r.format.label()
            lines.append(f"{r.path:<40} {str(r.shape):<18} {r.format.bits:>4} {frac:>6} "
                         f"{r.near_level_fraction:>7.2%} {r.sqnr_db:>8.2f}")
        q, f = self.weight_bits()
        lines.append(f"weight memory: {q / 8 / 1024:.1f} KiB quantized vs {f / 8 / 1024:.1f} KiB "
                     f"float32 ({f / max(q, 1):.1f}x smaller)")
        return "\n".join(lines)


def _concrete(fmt: FixedPointFormat) -> FixedPointFormat:
    return FixedPointFormat(fmt.bits, np.asarray(fmt.frac_bits), signed=fmt.signed,
                            symmetric=fmt.symmetric, channel_axis=fmt.channel_axis)


def hard_quantize(params: PyTree, state: PyTree) -> HardQuantized:
    """Rounds the quantized leaves of ``params`` to their formats' levels.

    Call outside ``jit``, on concrete values.

    Args:
      params: any parameter pytree (linen variables, NNX state, dict).
      state: the optimizer state of a symog_jax transform (any state containing a
        :class:`~symog_jax.quantizers.policy.QuantizationState`), or a formats tree.

    Returns:
      :class:`HardQuantized` with rounded params, int32 codes, concrete formats and a report.

    Raises:
      ValueError: NaN/inf in the parameters, or no formats in ``state``.

    Example:
      >>> params = {'dense': {'kernel': jnp.linspace(-1, 1, 32).reshape(8, 4),
      ...                     'bias': jnp.zeros(4)}}
      >>> opt_state = symog_jax.symog(2, optax.sgd(0.1), strength=1e-2).init(params)
      >>> result = hard_quantize(params, opt_state)
      >>> result.codes['dense']['kernel'][:, 0].tolist(), result.codes['dense']['bias']
      ([-1, -1, -1, 0, 0, 1, 1, 1], None)
      >>> print(result.summary())
      layer                                    shape              bits   frac    near  SQNR dB
      dense/kernel                             (8, 4)                2      1  37.50%     7.83
      weight memory: 0.0 KiB quantized vs 0.1 KiB float32 (6.0x smaller)
    """
    check_finite(params)
    formats = jax.tree_util.tree_map(lambda f: None if f is None else _concrete(f),
                                     find_formats(state), is_leaf=is_format_node)
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
    try:
        leaf_formats = treedef.flatten_up_to(formats)
    except (ValueError, TypeError) as e:
        raise ValueError(f"the formats do not match the parameters' structure: {e}") from None
    rounded, codes, report = [], [], []
    for (path, w), fmt in zip(leaves_with_path, leaf_formats):
        if fmt is None:
            rounded.append(w)
            codes.append(None)
            continue
        q = quantize(w, fmt)
        wf = jnp.asarray(w, jnp.float32)
        err = jnp.abs(wf - q.astype(jnp.float32)) / fmt.step_for(wf.ndim)
        rounded.append(q)
        codes.append(to_codes(w, fmt))
        report.append(LayerReport(
            path=path_str(path), shape=tuple(np.shape(w)), format=fmt,
            near_level_fraction=int(jnp.count_nonzero(err <= 0.25)) / max(int(np.size(w)), 1),
            sqnr_db=float(sqnr_db(wf, q)), max_abs_error_in_steps=float(jnp.max(err))))
    return HardQuantized(treedef.unflatten(rounded), treedef.unflatten(codes), formats, report)
