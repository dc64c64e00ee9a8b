"""Per-leaf fixed-point formats for a parameter pytree: choosing, storing and mapping them.

A *formats tree* has the structure of the parameters with a :class:`FixedPointFormat` (whose
``frac_bits`` is an int32 array) at each quantized leaf and ``None`` elsewhere. It is a valid
pytree (``None`` has no leaves), so it can sit in optimizer state, go through ``jit`` with the
bit-widths static, and be checkpointed with orbax.

**Flax NNX.** NNX parameter states hold each array in a ``Variable`` (``nnx.Param``), and
``nnx.Optimizer`` re-wraps every array of the optimizer state in its own ``OptState`` variables.
A format must never sit *inside* a ``Variable`` there: ``nnx.Optimizer`` writes the state back
with ``nnx.update``, which turns a ``FixedPointFormat`` held by a variable into a plain
``State({0: frac_bits})`` and loses its bit-width. So :class:`QuantizationState` stores the formats
with the variables removed (:func:`unwrap_variables`) and remembers where they were; the
functions here accept parameters and updates with or without NNX variables.
"""

from __future__ import annotations

import dataclasses
import numbers
import sys
from typing import Any, Callable, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from symog_jax.numerics.calibration import DEFAULT_NUM_CANDIDATES, best_frac_bits
from symog_jax.numerics.formats import FixedPointFormat, check_bits
from symog_jax.numerics.levels import Levels
from symog_jax.quantizers.masks import Mask, path_str, resolve_mask

PyTree = Any
#: Bit-width: one int for all quantized leaves, or ``(path: str, leaf) -> int`` per leaf
#: (e.g. the output of a per-layer bit allocation).
Bits = Union[int, Callable[[str, Any], int]]


def is_format_node(x) -> bool:
    """``is_leaf`` predicate that stops at formats (any kind of
    :class:`~symog_jax.numerics.levels.Levels`) and at ``None`` (unquantized leaves)."""
    return x is None or isinstance(x, Levels)


def _variable_type():
    """``flax.nnx.Variable`` if Flax NNX has been imported (else no tree can hold one)."""
    module = sys.modules.get("flax.nnx.variablelib")
    return getattr(module, "Variable", None)


def is_variable(x) -> bool:
    """Whether ``x`` is a Flax NNX ``Variable`` (``nnx.Param``, ``nnx.BatchStat``, ...)."""
    var = _variable_type()
    return var is not None and isinstance(x, var)


def unwrap_variables(tree: PyTree) -> PyTree:
    """``tree`` with every Flax NNX ``Variable`` replaced by its value (like ``nnx.as_pure``).

    Example:
      >>> from flax import nnx
      >>> unwrap_variables({'w': nnx.Param(jnp.ones(2))})
      {'w': Array([1., 1.], dtype=float32)}
    """
    if _variable_type() is None or not any(
            is_variable(x) for x in jax.tree_util.tree_leaves(tree, is_leaf=is_variable)):
        return tree                       # unchanged (not rebuilt) when there is nothing to do
    return jax.tree_util.tree_map(lambda x: x.get_value() if is_variable(x) else x, tree,
                                  is_leaf=is_variable)


def _unwrap_leaf(x):
    """``(array, rewrap)`` for a parameter leaf that may be held by an NNX ``Variable``."""
    if not is_variable(x):
        return x, lambda v: v
    leaves, treedef = jax.tree_util.tree_flatten(x)
    if len(leaves) != 1:
        raise ValueError(f"expected a Variable holding one array, got {type(x).__name__} with "
                         f"{len(leaves)} leaves")
    return leaves[0], lambda v: treedef.unflatten([v])


def map_quantized(fn: Callable, formats: PyTree, tree: PyTree, *rest: PyTree) -> PyTree:
    """Applies ``fn(fmt, leaf, *rest_leaves)`` at quantized leaves; keeps ``leaf`` elsewhere.

    ``tree`` and ``rest`` may hold their arrays in Flax NNX ``Variable`` objects or not (the
    result has the structure of ``tree``); ``fn`` always sees arrays.

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
        if fmt is None:
            return leaf
        value, rewrap = _unwrap_leaf(leaf)
        return rewrap(fn(fmt, value, *(_unwrap_leaf(o)[0] for o in others)))
    return jax.tree_util.tree_map(visit, unwrap_variables(formats), tree, *rest,
                                  is_leaf=is_format_node)


@jax.tree_util.register_pytree_with_keys_class
class QuantizationState:
    """Optimizer-state node holding the formats tree; :func:`find_formats` looks for it.

    Attributes:
      formats: the formats tree, without Flax NNX variables (see the module docstring).
      layout: ``None``, or the tree structure of the formats as the parameters were given (with
        their NNX variables), which :func:`find_formats` restores. Static (not a leaf).

    Example:
      >>> from flax import nnx
      >>> state = QuantizationState({'w': nnx.Param(FixedPointFormat(2, 1))})
      >>> type(state.formats['w']).__name__          # stored without the variable ...
      'FixedPointFormat'
      >>> type(find_formats(state)['w']).__name__     # ... and given back with it
      'Param'
    """

    __slots__ = ("formats", "layout")

    def __init__(self, formats: PyTree, layout=None):
        if layout is None:
            wrapped = jax.tree_util.tree_structure(formats, is_leaf=is_format_node)
            formats = unwrap_variables(formats)
            if jax.tree_util.tree_structure(formats, is_leaf=is_format_node) != wrapped:
                layout = wrapped
        object.__setattr__(self, "formats", formats)
        object.__setattr__(self, "layout", layout)

    def __setattr__(self, name, value):
        raise AttributeError("QuantizationState is immutable: use with_formats(...)")

    def with_formats(self, formats: PyTree) -> "QuantizationState":
        """The same state with new formats (without NNX variables) and the same layout."""
        return QuantizationState(unwrap_variables(formats), self.layout)

    def tree_flatten_with_keys(self):
        return ((jax.tree_util.GetAttrKey("formats"), self.formats),), self.layout

    @classmethod
    def tree_unflatten(cls, layout, children):
        # Bypass __init__: the children may be tracers or NNX optimizer-state variables.
        obj = object.__new__(cls)
        object.__setattr__(obj, "formats", children[0])
        object.__setattr__(obj, "layout", layout)
        return obj

    def __iter__(self):                      # unpacks like the former NamedTuple
        return iter((self.formats,))

    def __eq__(self, other):
        return (isinstance(other, QuantizationState) and self.layout == other.layout
                and self.formats == other.formats)

    __hash__ = None

    def __repr__(self):
        return f"QuantizationState(formats={self.formats!r})"


def _is_masked(x) -> bool:
    return isinstance(x, optax.MaskedNode)


def _with_layout(state: QuantizationState) -> PyTree:
    """The formats of ``state`` without optimizer variables, with the parameters' variables."""
    formats = unwrap_variables(state.formats)     # nnx.Optimizer: OptArray in frac_bits
    if state.layout is None:
        return formats
    return state.layout.unflatten(jax.tree_util.tree_leaves(formats, is_leaf=is_format_node))


def _merge_partitions(trees: list) -> PyTree:
    """One formats tree from the states of ``optax.multi_transform``/``optax.partition``.

    Each group's transform sees the other groups' leaves as ``optax.MaskedNode``; a masked
    position is filled from the next state that has it; what no state has becomes ``None``.
    """
    def is_slot(x):
        return is_format_node(x) or _is_masked(x) or is_variable(x)

    merged, treedef = jax.tree_util.tree_flatten(trees[0], is_leaf=is_slot)
    for other in trees[1:]:
        leaves, other_def = jax.tree_util.tree_flatten(other, is_leaf=is_slot)
        if other_def != treedef:
            continue                  # not a partition of the same parameters
        merged = [o if _is_masked(m) else m for m, o in zip(merged, leaves)]
    return treedef.unflatten([None if _is_masked(m) else m for m in merged])


def find_formats(state: PyTree) -> PyTree:
    """The formats tree inside an optimizer state.

    That is the first :class:`QuantizationState`; where it has no format for a leaf because
    ``optax.multi_transform``/``optax.partition`` gave that leaf to another group, the other
    groups' states fill it in (leaves of groups without formats are ``None``). Also accepts a
    :class:`QuantizationState` or a formats tree itself, and the optimizer state of
    ``nnx.Optimizer`` (``opt.opt_state``). The result has the structure of the parameters that
    the transform was initialised with (with their NNX variables, if they had any).

    Raises:
      ValueError: no formats are found.

    Example:
      >>> find_formats(opt_state)['dense']
      {'bias': None, 'kernel': FixedPointFormat(bits=2, frac_bits=1, symmetric)}
    """
    found = []

    def visit(node):
        if isinstance(node, QuantizationState):
            found.append(node)
        return node

    jax.tree_util.tree_map(visit, state, is_leaf=lambda x: isinstance(x, QuantizationState))
    if found:
        return _merge_partitions([_with_layout(q) for q in found])
    leaves = jax.tree_util.tree_leaves(state, is_leaf=is_format_node)
    if leaves and any(x is not None for x in leaves) and all(is_format_node(x) for x in leaves):
        return state
    raise ValueError("no fixed-point formats found: pass the state of a symog_jax transform "
                     "(e.g. symog(...).init(params)) or a formats tree from init_formats (or "
                     "of any kind of levels)")


def check_finite(params: PyTree, what: str = "parameters") -> None:
    """Raises ``ValueError`` naming the first leaf with NaN or inf (concrete values only)."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if isinstance(leaf, jax.core.Tracer):
            continue
        arr = np.asarray(leaf)
        if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
            raise ValueError(f"{what} leaf '{path_str(path)}' contains NaN or inf")


def _static_int(value):
    """An int, also from a concrete integer array (``optax.inject_hyperparams`` passes numeric
    arguments as arrays); a traced value or anything else is returned as it is."""
    if isinstance(value, (bool, jax.core.Tracer)) or value is None or callable(value):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) == 0 and \
            np.asarray(value).dtype.kind in "iu":
        return int(value)
    return value


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

    Integer settings may be given as concrete integer arrays (``optax.inject_hyperparams`` turns
    numbers into arrays). Under ``jit`` they arrive traced: ``bits`` and ``channel_axis`` are
    then taken from the existing formats, ``reestimate_every``/``reestimate_until`` work traced,
    and :meth:`init` (which needs them concrete) raises a ``TypeError`` that names them.

    Example:
      >>> policy = FormatPolicy(4, per_channel=True, reestimate_every=100)
      >>> policy.init(params)['dense']['kernel'].frac_bits       # one exponent per column
      (2, 3, 3, 2)
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
        for name in ("bits", "channel_axis", "num_candidates", "reestimate_every",
                     "reestimate_until"):
            object.__setattr__(self, name, _static_int(getattr(self, name)))
        if not callable(self.bits) and not isinstance(self.bits, jax.core.Tracer):
            check_bits(self.bits, signed=self.signed, symmetric=self.symmetric)
        every = self.reestimate_every
        if every is not None and not isinstance(every, jax.core.Tracer) and (
                isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ValueError(f"reestimate_every must be a positive int or None, "
                             f"got {self.reestimate_every!r}")

    def _require_static(self, *names):
        traced = [n for n in names if isinstance(getattr(self, n), jax.core.Tracer)]
        if traced:
            raise TypeError(
                f"FormatPolicy needs {', '.join(traced)} as concrete integers here, got traced "
                f"values (under optax.inject_hyperparams pass static_args={tuple(traced)!r})")

    def _bits_for(self, path: str, leaf) -> int:
        bits = self.bits(path, leaf) if callable(self.bits) else self.bits
        try:
            return check_bits(bits, signed=self.signed, symmetric=self.symmetric)
        except (TypeError, ValueError) as e:
            raise type(e)(f"leaf '{path}': {e}") from None

    def _frac_bits(self, bits: int, leaf, channel_axis: int | None = None) -> jax.Array:
        self._require_static("num_candidates")
        axis = self.channel_axis if channel_axis is None else channel_axis
        return best_frac_bits(leaf, bits, signed=self.signed, symmetric=self.symmetric,
                              channel_axis=axis if self.per_channel else None,
                              num_candidates=self.num_candidates).astype(jnp.int32)

    def init(self, params: PyTree) -> PyTree:
        """Chooses the MSE-optimal format of every selected leaf: a formats tree.

        Raises:
          ValueError: NaN/inf in the parameters, a mask that selects nothing, or bad bits.
        """
        self._require_static("bits", "channel_axis", "num_candidates")
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
        """New formats for the same leaves and bit-widths from ``params`` (traceable).

        The result has the structure of ``formats`` without NNX variables; ``params`` may have
        them or not.
        """
        # Not map_quantized: unquantized positions must stay None (not the parameter leaf), so
        # the result has the structure of ``formats`` (required by ``lax.cond``).
        def new(f, w):
            if f is None:
                return None
            return f.replace_frac_bits(self._frac_bits(f.bits, _unwrap_leaf(w)[0],
                                                       f.channel_axis))
        return jax.tree_util.tree_map(new, unwrap_variables(formats), params,
                                      is_leaf=is_format_node)

    def maybe_reestimate(self, count, params: PyTree, formats: PyTree) -> PyTree:
        """:meth:`reestimate` when ``count`` is a positive multiple of ``reestimate_every``."""
        formats = unwrap_variables(formats)
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
