"""Hard quantization at the end of training: rounded weights, integer codes, formats, a report.

:func:`hard_quantize` rounds every leaf of a parameter tree that has a format (any kind of
:class:`~symog_jax.numerics.levels.Levels`) and reports each one. A method's ``finalize`` builds
its formats tree and calls it; the fixed-point methods pass their optimizer state, whose
formats :func:`~symog_jax.quantizers.policy.find_formats` collects.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from symog_jax.numerics.calibration import sqnr_db
from symog_jax.numerics.levels import Levels
from symog_jax.quantizers.masks import path_str
from symog_jax.quantizers.policy import check_finite, find_formats, is_format_node

__all__ = ["HardQuantized", "LayerReport", "hard_quantize"]

PyTree = Any


@dataclasses.dataclass(frozen=True)
class LayerReport:
    """Quantization summary of one parameter leaf.

    Attributes:
      path: ``/``-joined parameter path.
      shape: the leaf's shape.
      format: its concrete format (:class:`~symog_jax.numerics.levels.Levels`: fixed point,
        SYQ, GDRQ, scaled, ...).
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
        """JSON-able: path, shape, the format's record, and the statistics."""
        return {"path": self.path, "shape": list(self.shape), **self.format.to_record(),
                "near_level_fraction": self.near_level_fraction,
                # JSON has no inf: rounding that changed nothing has SQNR null ("exact").
                "sqnr_db": self.sqnr_db if math.isfinite(self.sqnr_db) else None,
                "max_abs_error_in_steps": self.max_abs_error_in_steps}


class HardQuantized(NamedTuple):
    """Result of :func:`hard_quantize`.

    Attributes:
      params: the parameters with quantized leaves rounded to their levels (same dtypes).
      codes: int32 codes at quantized leaves, ``None`` elsewhere.
      formats: concrete formats at quantized leaves, ``None`` elsewhere.
      report: one :class:`LayerReport` per quantized leaf, in tree order.
    """
    params: PyTree
    codes: PyTree
    formats: PyTree
    report: list[LayerReport]

    def weight_bits(self) -> tuple[int, int]:
        """``(bits with quantized weights, bits if everything were float32)``; other leaves
        count as float32 in both; a format's ``overhead_bits`` (e.g. float scales) count."""
        quant = float_bits = 0
        for leaf, fmt in zip(jax.tree_util.tree_leaves(self.params),
                             jax.tree_util.tree_leaves(self.formats, is_leaf=is_format_node)):
            n = int(np.size(leaf))
            float_bits += 32 * n
            quant += 32 * n if fmt is None else fmt.bits * n + int(fmt.overhead_bits)
        return quant, float_bits

    def summary(self) -> str:
        """A text table of the per-layer report (``frac``: the format's label)."""
        lines = [f"{'layer':<40} {'shape':<18} {'bits':>4} {'frac':>6} {'near':>7} {'SQNR dB':>8}"]
        for r in self.report:
            lines.append(f"{r.path:<40} {str(r.shape):<18} {r.format.bits:>4} "
                         f"{r.format.label():>6} {r.near_level_fraction:>7.2%} {r.sqnr_db:>8.2f}")
        q, f = self.weight_bits()
        lines.append(f"weight memory: {q / 8 / 1024:.1f} KiB quantized vs {f / 8 / 1024:.1f} KiB "
                     f"float32 ({f / max(q, 1):.1f}x smaller)")
        return "\n".join(lines)


def _round_leaf(path: str, w, fmt: Levels):
    """``(rounded leaf, int32 codes, LayerReport)`` of one quantized leaf."""
    q = fmt.quantize(w)
    near, max_err = fmt.rounding_stats(w)
    report = LayerReport(path=path, shape=tuple(np.shape(w)), format=fmt,
                         near_level_fraction=near,
                         sqnr_db=float(sqnr_db(jnp.asarray(w, jnp.float32), q)),
                         max_abs_error_in_steps=max_err)
    return q, fmt.to_codes(w), report


def hard_quantize(params: PyTree, formats_or_state: PyTree) -> HardQuantized:
    """Rounds the quantized leaves of ``params`` to their formats' levels.

    Call outside ``jit``, on concrete values.

    Args:
      params: any parameter pytree (linen variables, NNX state, dict).
      formats_or_state: a tree shaped like ``params`` with a format (any kind of
        :class:`~symog_jax.numerics.levels.Levels`) at each quantized leaf and ``None``
        elsewhere, or the optimizer state of a symog_jax transform (any state containing a
        :class:`~symog_jax.quantizers.policy.QuantizationState`).

    Returns:
      :class:`HardQuantized` with rounded params, int32 codes, concrete formats and a report.

    Raises:
      ValueError: NaN/inf in the parameters, no formats in ``formats_or_state``, or formats
        that do not match the parameters' structure.

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
    formats = jax.tree_util.tree_map(lambda f: None if f is None else f.concrete(),
                                     find_formats(formats_or_state), is_leaf=is_format_node)
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
        q, c, r = _round_leaf(path_str(path), w, fmt)
        rounded.append(q)
        codes.append(c)
        report.append(r)
    return HardQuantized(treedef.unflatten(rounded), treedef.unflatten(codes), formats, report)
