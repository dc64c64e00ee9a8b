"""Per-leaf fixed-point formats for a parameter pytree: choosing, storing and mapping them.

A *formats tree* has the structure of the parameters with a :class:`FixedPointFormat` (whose
``frac_bits`` is an int32 array) at each quantized leaf and ``None`` elsewhere. It is a valid
pytree (``None`` has no leaves), so it can sit in optimizer state, go through ``jit`` with the
bit-widths static, and be checkpointed with orbax.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from symog_jax.numerics.calibration import DEFAULT_NUM_CANDIDATES, best_frac_bits
from symog_jax.numerics.formats import FixedPointFormat, check_bits
from symog_jax.quantizers.masks import Mask, path_str, resolve_mask

PyTree = Any
#: Bit-width: one int for all quantized leaves, or ``(path: str, leaf) -> int`` per leaf
#: (e.g. the output of a per-layer bit allocation).
Bits = Union[int, Callable[[str, Any], int]]


def is_format_node(x) -> bool:
    """``is_leaf`` predicate that stops at formats and at ``None`` (unquantized leaves)."""
    return x is None or isinstance(x, FixedPointFormat)


def map_quantized(fn: Callable, formats: PyTree, tree: PyTree, *rest: PyTree) -> PyTree:
    """Applies ``fn(fmt, leaf, *rest_leaves)`` at quantized leaves; keeps ``leaf`` elsewhere.

    Example:
      >>> from symog_jax.numerics.rounding import quantize
      >>> formats = init_formats(params, bits=2)   # kernel: levels -0.5, 0, 0.5; bias: None
      >>> q = map_quantized(lambda f, w: quantize(w, f), formats, params)   # hard-quantize
      >>> q['dense']['kernel'][:, 0].tolist()      # was -1.0, -0.74, -0.48, ..., 0.81
      [-0.5, -0.5, -0.5, -0.0, 0.0, 0.5, 0.5, 0.5]
      >>> q['dense']['bias'] is params['dense']['bias']      # unquantized leaves pass through
      True
    """
    def visit(fmt, leaf, *others):
        return leaf if fmt is None else fn(fmt, leaf, *others)
    return jax.tree_util.tree_map(visit, formats, tree, *rest, is_leaf=is_format_node)


class QuantizationState(NamedTuple):
    """Optimizer-state node holding the formats tree; :func:`find_formats` looks for it."""
    formats: PyTree


def find_formats(state: PyTree) -> PyTree:
    """The formats tree inside an optimizer state (the first :class:`QuantizationState`).

    Also accepts a :class:`QuantizationState` or a formats tree itself.

    Raises:
      ValueError: no formats are found.
    """
    found = []

    def visit(node):
        if isinstance(node, QuantizationState) and not found:
            found.append(node.formats)
        return node

    jax.tree_util.tree_map(visit, state, is_leaf=lambda x: isinstance(x, QuantizationState))
    if found:
        return found[0]
    leaves = jax.tree_util.tree_leaves(state, is_leaf=is_format_node)
    if leaves and any(isinstance(x, FixedPointFormat) for x in leaves) and all(
            is_format_node(x) for x in leaves):
        return state
    raise ValueError("no fixed-point formats found: pass the state of a symog_jax transform "
                     "(e.g. symog(...).init(params)) or a formats tree from init_formats")


def check_finite(params: PyTree, what: str = "parameters") -> None:
    """Raises ``ValueError`` naming the first leaf with NaN or inf (concrete values only)."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if isinstance(leaf, jax.core.Tracer):
            continue
        arr = np.asarray(leaf)
        if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
            raise ValueError(f"{what} leaf '{path_str(path)}' contains NaN or inf")


@dataclasses.dataclass(frozen=True)
class FormatPolicy:
    """How formats are chosen for the leaves of a parameter pytree.

    Attributes:
      bits: bit-width for every quantized leaf, or ``(path, leaf) -> int``.
      mask: which leaves to quantize (see :func:`symog_jax.quantizers.masks.resolve_mask`); default
        conv/dense kernels only.
      per_channel: one step per output channel (along ``channel_axis``) instead of per tensor.
      channel_axis: the output-channel axis (``-1`` for Flax kernels).
      signed, symmetric: the code range (see :class:`FixedPointFormat`).
      num_candidates: exponents tried by the exact MSE search.
      reestimate_every: re-choose the formats from the current parameters every this many
        steps (``None``: keep the formats chosen at ``init``).
      reestimate_until: last step count at which re-estimation may happen (``None``: no limit).
        ``reestimate_every=W, reestimate_until=W`` re-chooses once, after a W-step float warm-up.
    """

    bits: Bits
    mask: Mask = None
    per_channel: bool = False
    channel_axis: int = -1
    signed: bool = True
    symmetric: bool = True
    num_candidates: int = DEFAULT_NUM_CANDIDATES
    reestimate_every: int | None = None
    reestimate_until: int | None = None

    def __post_init__(self):
        if not callable(self.bits):
            check_bits(self.bits, signed=self.signed, symmetric=self.symmetric)
        if self.reestimate_every is not None and (
                isinstance(self.reestimate_every, bool)
                or not isinstance(self.reestimate_every, int) or self.reestimate_every < 1):
            raise ValueError(f"reestimate_every must be a positive int or None, "
                             f"got {self.reestimate_every!r}")

    def _bits_for(self, path: str, leaf) -> int:
        bits = self.bits(path, leaf) if callable(self.bits) else self.bits
        try:
            return check_bits(bits, signed=self.signed, symmetric=self.symmetric)
        except (TypeError, ValueError) as e:
            raise type(e)(f"leaf '{path}': {e}") from None

    def _frac_bits(self, bits: int, leaf) -> jax.Array:
        return best_frac_bits(leaf, bits, signed=self.signed, symmetric=self.symmetric,
                              channel_axis=self.channel_axis if self.per_channel else None,
                              num_candidates=self.num_candidates).astype(jnp.int32)

    def init(self, params: PyTree) -> PyTree:
        """Chooses the MSE-optimal format of every selected leaf: a formats tree.

        Raises:
          ValueError: NaN/inf in the parameters, a mask that selects nothing, or bad bits.
        """
        check_finite(params)
        flags = resolve_mask(self.mask, params)

        def make(path, flag, leaf):
            if not flag:
                return None
            name = path_str(path)
            if not jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating):
                raise TypeError(f"leaf '{name}' is selected for quantization but has dtype "
                                f"{jnp.asarray(leaf).dtype}")
            bits = self._bits_for(name, leaf)
            if self.per_channel and np.ndim(leaf) == 0:
                raise ValueError(f"leaf '{name}' is a scalar: it has no channel axis")
            return FixedPointFormat(bits, self._frac_bits(bits, leaf), signed=self.signed,
                                    symmetric=self.symmetric, channel_axis=self.channel_axis)

        return jax.tree_util.tree_map_with_path(make, flags, params)

    def reestimate(self, params: PyTree, formats: PyTree) -> PyTree:
        """New formats for the same leaves and bit-widths from ``params`` (traceable)."""
        # Not map_quantized: unquantized positions must stay None (not the parameter leaf), so
        # the result has the structure of ``formats`` (required by ``lax.cond``).
        return jax.tree_util.tree_map(
            lambda f, w: None if f is None else f.replace_frac_bits(self._frac_bits(f.bits, w)),
            formats, params, is_leaf=is_format_node)

    def maybe_reestimate(self, count, params: PyTree, formats: PyTree) -> PyTree:
        """:meth:`reestimate` when ``count`` is a positive multiple of ``reestimate_every``."""
        if self.reestimate_every is None:
            return formats
        if params is None:
            raise ValueError("re-estimating formats needs params: call update(g, s, params)")
        due = jnp.logical_and(count > 0, count % self.reestimate_every == 0)
        if self.reestimate_until is not None:
            due = jnp.logical_and(due, count <= self.reestimate_until)
        if not isinstance(due, jax.core.Tracer):
            # Called eagerly: decide in Python; lax.cond would be traced and compiled every call.
            return self.reestimate(params, formats) if bool(due) else formats
        return jax.lax.cond(due, lambda: self.reestimate(params, formats), lambda: formats)


def init_formats(params: PyTree, bits: Bits, **policy_kwargs) -> PyTree:
    """Shortcut for ``FormatPolicy(bits, **policy_kwargs).init(params)``.

    Example:
      >>> formats = init_formats({'dense': {'kernel': w, 'bias': b}}, bits=4)
      >>> formats['dense']['kernel']         # w spans [-1, 1]: step 1/8, levels -7/8 .. 7/8
      FixedPointFormat(bits=4, frac_bits=3, symmetric)
      >>> formats['dense']['bias'] is None   # biases are not quantized by default
      True
    """
    return FormatPolicy(bits, **policy_kwargs).init(params)
