"""GDRQ: group-based distribution reshaping (Scale-Clip) and uniform weight quantization.

Yu et al. 2019, "GDRQ: Group-based Distribution Reshaping for Quantization", arXiv 1908.01477.
Only the abstract is known to us: weights (and activations) are *reshaped* by a "Scale-Clip"
(clipping at a multiple of a statistic of the tensor, recomputed during training) before
uniform quantization, the filters of a layer are split into *groups* that each get their own
reshaping and scale, and the scales can be *folded* into the following layers so that the
deployed network computes with integer kernels. Everything else below is our choice, made a
parameter where it matters.

Pure JAX functions on Flax kernels: conv kernels ``(..., cin, cout)`` (any number of spatial
dimensions), dense kernels ``(in, out)``; groups always split the **output channels** (the last
axis), so one group is a set of whole filters.

Quantizer, for ``b`` bits (``n = 2**(b-1) - 1`` positive levels, codes ``-n..n``) and ``G``
groups of ``cout / G`` filters (``G`` must divide ``cout``):

1. **Grouping** (:func:`group_assignment`, parameter ``grouping``): ``"contiguous"`` (the
   default: filter ``c`` is in group ``c // (cout / G)``) or ``"norm"`` (filters sorted by their
   L2 norm, recomputed from the current weights, the ``cout / G`` smallest in group 0, ...).
   *Contiguous is the default* because its assignment is fixed: a group's learned scale always
   belongs to the same filters, the assignment costs nothing to store, and checkpoints/resumes
   cannot see groups change under them. ``"norm"`` is what "groups of filters with similar
   statistics" suggests, and is offered for comparison: its groups can change from one step to
   the next (the scale of group ``g`` then belongs to the ``g``-th norm quantile).
2. **Scale-Clip** (:func:`group_clip`): the clip of group ``g`` is
   ``t_g = clip_k * mean|W_g|`` over all weights of the group (``scale_clip=True``), or
   ``t_g = max|W_g|`` (``scale_clip=False``: plain uniform quantization of the full range). The
   statistic is recomputed from the current weights on every call and has a stopped gradient.
   The mean of ``|W|`` (not the standard deviation or the max) is the statistic because it is
   cheap and robust to outliers. :mod:`symog_jax.methods.gdrq`'s default ``clip_k`` depends on
   the bit-width: the MSE-optimal multiple for Gaussian weights, :data:`GAUSSIAN_CLIP_K`
   (1.53 at 2 bits, 3.10 at 4 bits, 4.91 at 8 bits; a fixed 2.0 loses 0.8 dB SQNR at 2 and 3
   bits, 4.9 dB at 4 bits and 26 dB at 8 bits on Gaussian weights).
3. **Codes**: step ``delta_g = t_g / n``; ``codes = round(clip(W / delta_g, -n, n))`` (round
   half to even), so the clip ``t_g`` is the top level.
4. **Learned scale**: ``Q(W) = codes * alpha_g``, with ``alpha_g`` one trainable positive scalar
   per group (initialised to ``delta_g``). To make ``codes * alpha_g`` *exact* in float32 (the
   exported parameters are then exactly codes times scales, in any precision, and folding loses
   nothing in the kernel), the scale used is ``alpha_g`` with its mantissa rounded to
   ``25 - b`` bits (:func:`channel_scales`, relative change below ``2**-(24 - b)``).

Gradients (:func:`gdrq_quantize`, a :func:`jax.custom_vjp`; the exact derivative of the
straight-through surrogate ``alpha_g * clip(W / delta_g, -n, n)``):

* ``dL/dW = (alpha_g / delta_g) * dL/dQ`` where ``|W / delta_g| <= n`` (inside the clip,
  boundary included), ``0`` outside: rounding is straight-through, the clip's gradient passes
  inside the range only. With ``scale_clip=False`` every weight is inside.
* ``dL/dalpha_g = sum_{i in g} codes_i * dL/dQ_i`` (through the mantissa rounding unchanged).
* ``delta_g``, the grouping and the clip have no gradient.

Activations are not handled here: the trainer quantizes them (``act_bits``, calibrated
power-of-two steps); the activation Scale-Clip of the paper is not implemented.

Folding (:func:`fold_group_scales`): the per-output-channel scale ``s_c = alpha_{g(c)}``
commutes with the convolution, ``conv(x, codes * s) + b = s * conv(x, codes) + b``, so the
deployed layer runs the integer kernel ``codes`` followed by a per-channel affine map, which is
merged into a following batch norm (``gamma' = gamma * s``, ``mean' = (mean - b) / s``) or kept
as an output scale and bias where there is none.

After training, :class:`GDRQFormat` describes a quantized kernel as levels (the ``"gdrq"`` kind
of :class:`~symog_jax.numerics.levels.Levels`): the clip of each group fixes the codes, the
learned scales give their values.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from symog_jax.numerics.levels import Levels

__all__ = [
    "GAUSSIAN_CLIP_K",
    "GROUPINGS",
    "FoldedLayer",
    "GDRQFormat",
    "channel_scales",
    "check_gdrq_args",
    "check_groups_divide",
    "code_max",
    "default_clip_k",
    "fold_group_scales",
    "gdrq_codes",
    "gdrq_quantize",
    "group_assignment",
    "group_clip",
    "group_steps",
]

#: Ways to split a layer's filters into groups (see the module docstring).
GROUPINGS = ("contiguous", "norm")

#: ``{bits: k}``: the Scale-Clip multiple ``k`` (clip ``t = k * mean|W|``) that minimises the
#: mean squared quantization error of standard Gaussian weights on GDRQ's grid (codes
#: ``-n..n``, ``n = 2**(bits-1) - 1``, step ``t / n``, round to nearest, saturate at ``t``).
#: Derivation (done once, offline; ``tests/test_gdrq.py`` checks it independently): for
#: ``W ~ N(0, 1)``, ``mean|W| = sqrt(2 / pi)``; the error ``E[(W - Q_k(W))**2]`` is a sum over
#: the ``2n + 1`` code intervals of closed-form truncated-Gaussian moments
#: (``int x**2 phi = Phi - x phi``, ``int x phi = -phi``), minimised over ``k`` by a grid search
#: on ``[0.5, 14]`` refined with Brent's method, rounded to 3 decimals. SQNR at the optimum
#: (dB): 7.21, 13.29, 18.90, 24.33, 29.71, 35.11, 40.54 for 2..8 bits; with ``k = 2``: 6.39,
#: 12.47, 14.04, 14.38, 14.46, 14.48, 14.48 (the clip, not the step, limits it beyond 3 bits).
GAUSSIAN_CLIP_K = {2: 1.534, 3: 2.447, 4: 3.101, 5: 3.633, 6: 4.098, 7: 4.521, 8: 4.914}


def default_clip_k(bits: int) -> float:
    """The default Scale-Clip multiple for ``bits``-bit GDRQ: :data:`GAUSSIAN_CLIP_K`.

    Example:
      >>> default_clip_k(2), default_clip_k(4)
      (1.534, 3.101)
    """
    return GAUSSIAN_CLIP_K[_static_int(bits, "bits", 2, 8)]


# -- argument checks ---------------------------------------------------------------------------
def _static_int(value: Any, name: str, lo: int, hi: int | None = None) -> int:
    if isinstance(value, jax.core.Tracer):
        raise TypeError(f"{name} must be a static Python int, not a traced value")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} of type "
                        f"{type(value).__name__}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        raise ValueError(f"{name} must be in [{lo}, {hi if hi is not None else 'inf'}], "
                         f"got {value}")
    return value


def _check_clip_k(clip_k: Any) -> float:
    if isinstance(clip_k, jax.core.Tracer):
        raise TypeError("clip_k must be a static Python number, not a traced value")
    if isinstance(clip_k, (bool, np.bool_)) or not isinstance(clip_k, numbers.Real):
        raise TypeError(f"clip_k must be a real number > 0, got {clip_k!r}")
    clip_k = float(clip_k)
    if not (np.isfinite(clip_k) and clip_k > 0):
        raise ValueError(f"clip_k must be a finite number > 0, got {clip_k!r}")
    return clip_k


def _check_grouping(grouping: Any) -> str:
    if not isinstance(grouping, str) or grouping not in GROUPINGS:
        raise ValueError(f"unknown GDRQ grouping {grouping!r}; valid groupings are "
                         f"{', '.join(repr(g) for g in GROUPINGS)}")
    return grouping


def check_gdrq_args(bits: int, groups: int, clip_k: float = 2.0, scale_clip: bool = True,
                    grouping: str = "contiguous") -> tuple[int, int, float, bool, str]:
    """Validates the GDRQ hyper-parameters (static Python values).

    Args:
      bits: weight bits, an integer in ``[2, 8]``.
      groups: groups per layer, an integer ``>= 1``.
      clip_k: Scale-Clip multiple of ``mean|W_g|``, finite and ``> 0``.
      scale_clip: ``True``: clip at ``clip_k * mean|W_g|``; ``False``: at ``max|W_g|``.
      grouping: one of :data:`GROUPINGS`.

    Returns:
      ``(bits, groups, clip_k, scale_clip, grouping)`` as Python ``int, int, float, bool, str``.

    Raises:
      ValueError: a value out of range (one line naming the parameter and the value).
      TypeError: a value of the wrong type (or a traced value).

    Example:
      >>> check_gdrq_args(np.int64(4), 2, 3)
      (4, 2, 3.0, True, 'contiguous')
    """
    bits = _static_int(bits, "bits", 2, 8)
    groups = _static_int(groups, "groups", 1)
    clip_k = _check_clip_k(clip_k)
    if not isinstance(scale_clip, (bool, np.bool_)):
        raise TypeError(f"scale_clip must be a bool, got {scale_clip!r}")
    return bits, groups, clip_k, bool(scale_clip), _check_grouping(grouping)


def check_groups_divide(kernel_shape: Sequence[int], groups: int, name: str = "kernel") -> int:
    """Checks that ``groups`` divides the output channels (last axis) of a kernel.

    Args:
      kernel_shape: ``(..., cin, cout)``, at least 2-D.
      groups: groups per layer, ``>= 1``.
      name: the layer's name for the error message.

    Returns:
      The group size ``cout // groups`` (a Python int).

    Raises:
      ValueError: (one line, naming the layer and its channel count) ``groups`` does not divide
        ``cout``, or the kernel is not at least 2-D.

    Example:
      >>> check_groups_divide((5, 5, 1, 32), 4, "conv1")
      8
      >>> check_groups_divide((512, 10), 4, "fc2")
      Traceback (most recent call last):
      ...
      ValueError: gdrq: layer fc2 has 10 output channels, which groups=4 does not divide (use groups in [1, 2, 5, 10], or --float-first-last for a classifier layer)
    """  # noqa: E501
    shape = tuple(int(d) for d in kernel_shape)
    groups = _static_int(groups, "groups", 1)
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"gdrq: layer {name} needs a non-empty kernel of at least 2 dimensions "
                         f"((in, out) or (..., cin, cout)), got shape {shape}")
    if shape[-1] % groups:
        divisors = [g for g in range(1, min(shape[-1], 16) + 1) if shape[-1] % g == 0]
        raise ValueError(f"gdrq: layer {name} has {shape[-1]} output channels, which "
                         f"groups={groups} does not divide (use groups in {divisors}, or "
                         f"--float-first-last for a classifier layer)")
    return shape[-1] // groups


def code_max(bits: int) -> int:
    """Largest code ``n = 2**(bits-1) - 1`` of the symmetric ``bits``-bit quantizer.

    Example:
      >>> code_max(2), code_max(4), code_max(8)
      (1, 7, 127)
    """
    return 2 ** (_static_int(bits, "bits", 2, 8) - 1) - 1


def _as_kernel(w: Any) -> jax.Array:
    w = jnp.asarray(w)
    if not jnp.issubdtype(w.dtype, jnp.floating):
        if jnp.issubdtype(w.dtype, jnp.complexfloating):
            raise TypeError(f"w must be real, got dtype {w.dtype}")
        w = w.astype(jnp.float32)
    return w


# -- groups and statistics ---------------------------------------------------------------------
def group_assignment(w: Any, groups: int, grouping: str = "contiguous") -> jax.Array:
    """The group of each output channel (filter) of a kernel.

    Args:
      w: kernel ``(..., cin, cout)``; ``groups`` must divide ``cout``.
      groups: number of groups ``G``.
      grouping: ``"contiguous"``: filter ``c`` -> ``c // (cout / G)``; ``"norm"``: filters
        ranked by their L2 norm (ascending, ties by index; from the current weights, no
        gradient), rank ``r`` -> ``r // (cout / G)``.

    Returns:
      ``int32`` array ``(cout,)`` with values in ``[0, G)``, each taken ``cout / G`` times.

    Example:
      >>> w = jnp.array([[3.0, 0.1, 2.0, 0.2]])
      >>> group_assignment(w, 2).tolist(), group_assignment(w, 2, "norm").tolist()
      ([0, 0, 1, 1], [1, 0, 1, 0])
    """
    w = _as_kernel(w)
    size = check_groups_divide(w.shape, groups)
    grouping = _check_grouping(grouping)
    cout = w.shape[-1]
    if grouping == "contiguous":
        return jnp.arange(cout, dtype=jnp.int32) // size
    flat = jax.lax.stop_gradient(w).astype(jnp.float32).reshape(-1, cout)
    norms = jnp.sum(flat * flat, axis=0)
    order = jnp.argsort(norms, stable=True)
    rank = jnp.zeros((cout,), jnp.int32).at[order].set(jnp.arange(cout, dtype=jnp.int32))
    return rank // size


def group_clip(w: Any, group_of: Any, groups: int, clip_k: float = 2.0,
               scale_clip: bool = True) -> jax.Array:
    """The clip ``t_g`` of every group: ``clip_k * mean|W_g|`` or ``max|W_g|`` (stopped gradient).

    Args:
      w: kernel ``(..., cin, cout)``.
      group_of: ``(cout,)`` integer group of each filter (:func:`group_assignment`), each group
        of equal size.
      groups: number of groups ``G``.
      clip_k: Scale-Clip multiple (static, ``> 0``).
      scale_clip: ``False``: the clip is the group's ``max|W|`` (``clip_k`` unused).

    Returns:
      ``float32`` array ``(G,)``.

    Example:
      >>> w = jnp.array([[1.0, -4.0], [3.0, 0.0]])
      >>> group_clip(w, jnp.array([0, 1]), 2, clip_k=1.5).tolist()
      [3.0, 3.0]
      >>> group_clip(w, jnp.array([0, 1]), 2, scale_clip=False).tolist()
      [3.0, 4.0]
    """
    w = _as_kernel(w)
    groups = _static_int(groups, "groups", 1)
    clip_k = _check_clip_k(clip_k)
    cout = w.shape[-1]
    a = jnp.abs(jax.lax.stop_gradient(w).astype(jnp.float32)).reshape(-1, cout)
    group_of = jnp.asarray(group_of, jnp.int32)
    if scale_clip:
        per_group = a.shape[0] * (cout // groups)
        total = jax.ops.segment_sum(jnp.sum(a, axis=0), group_of, num_segments=groups)
        return jnp.float32(clip_k) * (total / jnp.float32(per_group))
    return jax.ops.segment_max(jnp.max(a, axis=0), group_of, num_segments=groups)


def group_steps(w: Any, bits: int, groups: int, clip_k: float = 2.0, scale_clip: bool = True,
                grouping: str = "contiguous") -> tuple[jax.Array, jax.Array]:
    """The quantizer step ``delta_g = t_g / n`` of every group, and the group assignment.

    This is also the initial value of the learned scales ``alpha``.

    Args:
      w: kernel ``(..., cin, cout)``.
      bits, groups, clip_k, scale_clip, grouping: see :func:`check_gdrq_args`.

    Returns:
      ``(steps, group_of)``: ``float32 (G,)`` and ``int32 (cout,)``.

    Example:
      >>> steps, group_of = group_steps(jnp.array([[1.0, -4.0], [3.0, 0.0]]), 2, 1,
      ...                               scale_clip=False)
      >>> steps.tolist(), group_of.tolist()
      ([4.0], [0, 0])
    """
    bits, groups, clip_k, scale_clip, grouping = check_gdrq_args(bits, groups, clip_k,
                                                                 scale_clip, grouping)
    w = _as_kernel(w)
    group_of = group_assignment(w, groups, grouping)
    t = group_clip(w, group_of, groups, clip_k, scale_clip)
    return t / jnp.float32(code_max(bits)), group_of


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _round_mantissa(a: jax.Array, mant_bits: int) -> jax.Array:
    """``a`` with its mantissa rounded to ``mant_bits`` bits; straight-through derivative."""
    m, e = jnp.frexp(a)
    return jnp.ldexp(jnp.round(m * (2.0 ** mant_bits)) / (2.0 ** mant_bits), e)


@_round_mantissa.defjvp
def _round_mantissa_jvp(mant_bits, primals, tangents):
    return _round_mantissa(primals[0], mant_bits), tangents[0]


def channel_scales(alpha: Any, group_of: Any, bits: int) -> jax.Array:
    """Per-output-channel scale ``alpha_{g(c)}``, mantissa rounded so ``code * scale`` is exact.

    The float32 mantissa is rounded to ``25 - bits`` bits (round half to even), so that the
    product of any code ``|c| <= 2**(bits-1) - 1`` and the scale is exactly representable in
    float32.

    Args:
      alpha: ``(G,)`` positive group scales.
      group_of: ``(cout,)`` integer group of each filter.
      bits: weight bits (2..8).

    Returns:
      ``float32`` array ``(cout,)``.

    Example:
      >>> channel_scales(jnp.array([0.5, 0.25]), jnp.array([1, 0, 1]), 2).tolist()
      [0.25, 0.5, 0.25]
    """
    bits = _static_int(bits, "bits", 2, 8)
    alpha = jnp.asarray(alpha, jnp.float32)
    return _round_mantissa(alpha, 25 - bits)[jnp.asarray(group_of, jnp.int32)]


def _channel_steps(w: jax.Array, bits, groups, clip_k, scale_clip, grouping):
    steps, group_of = group_steps(w, bits, groups, clip_k, scale_clip, grouping)
    step_c = steps[group_of]
    return jnp.where(step_c > 0, step_c, jnp.float32(1.0)), group_of


def _float_codes(w: jax.Array, step_c: jax.Array, n: int) -> jax.Array:
    return jnp.round(jnp.clip(w.astype(jnp.float32) / step_c, -n, n))


# -- quantizer ---------------------------------------------------------------------------------
@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _gdrq(w, scale_c, step_c, n):
    return (_float_codes(w, step_c, n) * scale_c).astype(w.dtype)


def _gdrq_fwd(w, scale_c, step_c, n):
    return _gdrq(w, scale_c, step_c, n), (w, scale_c, step_c)


def _gdrq_bwd(n, res, g):
    w, scale_c, step_c = res
    x = w.astype(jnp.float32) / step_c
    inside = jnp.abs(x) <= n
    g32 = g.astype(jnp.float32)
    dw = jnp.where(inside, g32 * (scale_c / step_c), 0.0).astype(w.dtype)
    codes = jnp.round(jnp.clip(x, -n, n))
    dscale = jnp.sum((codes * g32).reshape(-1, w.shape[-1]), axis=0).astype(scale_c.dtype)
    return dw, dscale, jnp.zeros_like(step_c)


_gdrq.defvjp(_gdrq_fwd, _gdrq_bwd)


def gdrq_quantize(w: Any, alpha: Any, bits: int = 2, clip_k: float = 2.0,
                  scale_clip: bool = True, grouping: str = "contiguous") -> jax.Array:
    """GDRQ fake-quantization ``Q(W) = codes(W) * alpha_{g(c)}`` with the custom gradient above.

    ``G = alpha.shape[0]`` groups; ``codes`` are :func:`gdrq_codes`; the scale is
    :func:`channel_scales` (``alpha`` with a rounded mantissa). Works under ``jit``, ``grad``
    and ``vmap``.

    Args:
      w: kernel ``(..., cin, cout)``, floating (integers are cast to ``float32``).
      alpha: ``(G,)`` positive group scales; ``G`` must divide ``cout``.
      bits, clip_k, scale_clip, grouping: see :func:`check_gdrq_args` (static).

    Returns:
      Array of ``w.shape`` and dtype, equal to ``gdrq_codes(...) * channel_scales(...)``.

    Raises:
      ValueError: bad hyper-parameters, ``alpha`` not 1-D, or ``G`` not dividing ``cout``.

    Example:
      >>> w = jnp.array([[0.1, -1.0], [0.9, 0.2]])
      >>> gdrq_quantize(w, jnp.array([0.5, 2.0]), bits=2, scale_clip=False).tolist()
      [[0.0, -2.0], [0.5, 0.0]]
    """
    alpha = jnp.asarray(alpha)
    if alpha.ndim != 1:
        raise ValueError(f"alpha must be 1-D (one scale per group), got shape {alpha.shape}")
    groups = alpha.shape[0]
    bits, groups, clip_k, scale_clip, grouping = check_gdrq_args(bits, groups, clip_k,
                                                                 scale_clip, grouping)
    w = _as_kernel(w)
    step_c, group_of = _channel_steps(w, bits, groups, clip_k, scale_clip, grouping)
    scale_c = _round_mantissa(alpha.astype(jnp.float32), 25 - bits)[group_of]
    return _gdrq(w, scale_c, jax.lax.stop_gradient(step_c), code_max(bits))


def gdrq_codes(w: Any, bits: int = 2, groups: int = 1, clip_k: float = 2.0,
               scale_clip: bool = True, grouping: str = "contiguous",
               dtype: Any = jnp.int32) -> jax.Array:
    """Integer codes ``round(clip(W / delta_g, -n, n))`` of :func:`gdrq_quantize`.

    Args:
      w: kernel ``(..., cin, cout)``.
      bits, groups, clip_k, scale_clip, grouping: see :func:`check_gdrq_args`.
      dtype: dtype of the codes (default ``int32``).

    Returns:
      Array of ``w.shape`` with values in ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]``.

    Example:
      >>> w = jnp.array([[0.25, -1.5], [0.75, 0.5], [-0.375, 0.0]])
      >>> gdrq_codes(w, bits=3, groups=2, scale_clip=False).tolist()   # -1.5 -> -2 (to even)
      [[1, -3], [3, 1], [-2, 0]]
    """
    bits, groups, clip_k, scale_clip, grouping = check_gdrq_args(bits, groups, clip_k,
                                                                 scale_clip, grouping)
    w = _as_kernel(w)
    step_c, _ = _channel_steps(w, bits, groups, clip_k, scale_clip, grouping)
    return _float_codes(w, step_c, code_max(bits)).astype(dtype)


# -- folding -----------------------------------------------------------------------------------
class FoldedLayer(NamedTuple):
    """A GDRQ layer with its scales folded out of the kernel (:func:`fold_group_scales`).

    Attributes:
      kernel: the integer codes (int32, the kernel's shape); the layer computes
        ``conv(x, kernel)`` (or ``x @ kernel``) with no bias, then:
      out_scale, out_bias: ``float32 (cout,)`` per-channel affine map ``y * out_scale +
        out_bias``, where no batch norm follows (``None`` otherwise);
      batch_norm: where a batch norm follows, its folded parameters ``{"scale", "bias",
        "mean", "var"}`` (``float32 (cout,)``, same epsilon as before), applied to the raw
        integer-kernel output (``None`` otherwise).
    """
    kernel: jax.Array
    out_scale: jax.Array | None
    out_bias: jax.Array | None
    batch_norm: dict | None


def fold_group_scales(codes: Any, channel_scale: Any, bias: Any = None,
                      batch_norm: dict | None = None) -> FoldedLayer:
    """Folds the per-channel scale (and the layer's bias) out of a GDRQ kernel.

    With ``s = channel_scale``, ``b = bias`` (0 if ``None``) and ``u = conv(x, codes)``, the
    quantized layer computes ``s * u + b``. Without ``batch_norm`` that is returned as
    ``out_scale = s``, ``out_bias = b``. With an inference batch norm ``gamma * (y - mean) /
    sqrt(var + eps) + beta`` after the layer it becomes the batch norm of ``u`` with
    ``gamma' = gamma * s``, ``mean' = (mean - b) / s``, ``var`` and ``beta`` unchanged (so the
    same ``eps`` applies; a missing ``"scale"`` counts as ones, a missing ``"bias"`` as zeros).

    Args:
      codes: integer codes, kernel shape ``(..., cin, cout)``.
      channel_scale: ``(cout,)`` positive scales (e.g. :func:`channel_scales` or
        ``GDRQFormat.scale``).
      bias: the layer's ``(cout,)`` bias, or ``None``.
      batch_norm: the following batch norm's ``{"scale", "bias", "mean", "var"}`` (Flax
        ``params`` and ``batch_stats`` of a ``BatchNorm``), or ``None``.

    Returns:
      A :class:`FoldedLayer`.

    Example:
      >>> f = fold_group_scales(jnp.array([[1, -1]]), jnp.array([0.5, 2.0]), jnp.array([1.0, 0.0]))
      >>> f.kernel.tolist(), f.out_scale.tolist(), f.out_bias.tolist(), f.batch_norm
      ([[1, -1]], [0.5, 2.0], [1.0, 0.0], None)
      >>> bn = {"scale": jnp.ones(2), "bias": jnp.zeros(2), "mean": jnp.array([2.0, 4.0]),
      ...       "var": jnp.ones(2)}
      >>> folded = fold_group_scales(jnp.array([[1, -1]]), jnp.array([0.5, 2.0]),
      ...                            jnp.array([1.0, 0.0]), bn).batch_norm
      >>> folded["scale"].tolist(), folded["mean"].tolist()
      ([0.5, 2.0], [2.0, 2.0])
    """
    codes = jnp.asarray(codes)
    if not jnp.issubdtype(codes.dtype, jnp.integer):
        raise TypeError(f"codes must be integers, got dtype {codes.dtype}")
    cout = codes.shape[-1] if codes.ndim >= 2 else None
    s = jnp.asarray(channel_scale, jnp.float32)
    if cout is None or s.shape != (cout,):
        raise ValueError(f"channel_scale must have shape (cout,) = ({cout},) for codes of shape "
                         f"{codes.shape}, got {s.shape}")
    b = jnp.zeros((cout,), jnp.float32) if bias is None else jnp.asarray(bias, jnp.float32)
    if b.shape != (cout,):
        raise ValueError(f"bias must have shape ({cout},), got {b.shape}")
    kernel = codes.astype(jnp.int32)
    if batch_norm is None:
        return FoldedLayer(kernel, s, b, None)
    missing = {"mean", "var"} - set(batch_norm)
    if missing:
        raise ValueError(f"batch_norm needs 'mean' and 'var' (missing {sorted(missing)})")
    gamma = jnp.asarray(batch_norm.get("scale", jnp.ones((cout,))), jnp.float32)
    beta = jnp.asarray(batch_norm.get("bias", jnp.zeros((cout,))), jnp.float32)
    mean = jnp.asarray(batch_norm["mean"], jnp.float32)
    var = jnp.asarray(batch_norm["var"], jnp.float32)
    folded = {"scale": gamma * s, "bias": beta, "mean": (mean - b) / s, "var": var}
    return FoldedLayer(kernel, None, None, folded)


# -- the format of a finalized kernel ----------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class GDRQFormat(Levels):
    """What a GDRQ-quantized kernel is: symmetric integer codes times a scale per filter group.

    The codes are :func:`gdrq_codes`' with the groups' clips fixed: ``round(clip(x / delta_c,
    -n, n))`` with ``delta_c = clip[group_of[c]] / n`` (``n = code_max``; a zero step counts as
    1). Equality compares values (arrays element-wise).

    Attributes:
      bits: weight bits (codes ``-(2**(bits-1)-1)..2**(bits-1)-1``).
      scale: ``float32 (cout,)`` numpy array, the scale of each output channel
        (``alpha`` of its group, mantissa-rounded so ``code * scale`` is exact in float32).
      group_of: ``int (cout,)`` numpy array, the group of each output channel.
      groups: number of groups ``G``.
      grouping: ``"contiguous"`` or ``"norm"``.
      clip: ``float32 (G,)`` numpy array, the clip ``t_g`` the codes were computed with.

    Example:
      >>> fmt = GDRQFormat(2, np.array([0.5, 0.5, 2.0, 2.0], np.float32), np.array([0, 0, 1, 1]),
      ...                  2, "contiguous", np.array([1.0, 4.0], np.float32))
      >>> fmt.code_min, fmt.code_max, fmt.step_for(4).shape, fmt.label(), fmt.overhead_bits
      (-1, 1, (1, 1, 1, 4), 'g2-contig', 64)
      >>> fmt.to_codes(jnp.array([[0.4, 0.6, -1.9, 2.1]])).tolist()
      [[0, 1, 0, 1]]
    """
    kind = "gdrq"

    bits: int
    scale: np.ndarray
    group_of: np.ndarray
    groups: int
    grouping: str
    clip: np.ndarray

    @property
    def code_max(self) -> int:
        return code_max(self.bits)

    @property
    def code_min(self) -> int:
        return -code_max(self.bits)

    def step_for(self, x_ndim: int, dtype=jnp.float32) -> jax.Array:
        """The per-output-channel scale, shape ``(1, ..., 1, cout)`` of rank ``x_ndim``."""
        return jnp.asarray(self.scale, dtype).reshape((1,) * (x_ndim - 1) + (-1,))

    def _channel_steps(self) -> jax.Array:
        """``delta_c`` as :func:`group_steps` computes it, zeros replaced by 1, ``(cout,)``."""
        steps = jnp.asarray(self.clip, jnp.float32) / jnp.float32(self.code_max)
        step_c = steps[jnp.asarray(self.group_of, jnp.int32)]
        return jnp.where(step_c > 0, step_c, jnp.float32(1.0))

    def to_codes(self, x) -> jax.Array:
        """int32 codes ``round(clip(x / delta_c, -n, n))`` (half to even), channels last."""
        return _float_codes(_as_kernel(x), self._channel_steps(), self.code_max).astype(jnp.int32)

    def rounding_stats(self, x) -> tuple[float, float]:
        """In units of the clip's step ``delta``: the fraction of entries whose *clipped*
        position is within a quarter step of its code (the Scale-Clip is part of the method),
        and the largest unclipped distance."""
        pos = np.asarray(_as_kernel(x), np.float32) / np.asarray(self._channel_steps())
        codes = np.asarray(self.to_codes(x))
        n = self.code_max
        near = np.count_nonzero(np.abs(np.clip(pos, -n, n) - codes) <= 0.25)
        return near / max(pos.size, 1), float(np.max(np.abs(pos - codes))) if pos.size else 0.0

    def group_scales(self) -> np.ndarray:
        """``float32 (G,)``: the scale of each group."""
        out = np.zeros(self.groups, np.float32)
        out[self.group_of] = self.scale
        return out

    @property
    def overhead_bits(self) -> int:
        """float32 group scales, plus the group of each filter where it is not implied."""
        extra = 0
        if self.grouping != "contiguous" and self.groups > 1:
            extra = int(self.scale.size) * math.ceil(math.log2(self.groups))
        return 32 * self.groups + extra

    def label(self) -> str:
        return f"g{self.groups}-{self.grouping[:6]}"

    def to_record(self) -> dict:
        """Everything, as lists (the record alone rebuilds the format)."""
        return {"kind": self.kind, "bits": self.bits, "groups": self.groups,
                "grouping": self.grouping, "group_scales": self.group_scales().tolist(),
                "clip": np.asarray(self.clip, np.float64).tolist(),
                "group_of": np.asarray(self.group_of).tolist(),
                "code_min": self.code_min, "code_max": self.code_max}

    @classmethod
    def from_record(cls, record, arrays=None) -> "GDRQFormat":
        """Per-channel scales from ``arrays["step"]`` if given, else from the group scales."""
        group_of = np.asarray(record["group_of"], np.int64)
        if arrays is not None and "step" in arrays:
            scale = np.asarray(arrays["step"], np.float32).reshape(-1)
        else:
            scale = np.asarray(record["group_scales"], np.float32)[group_of]
        return cls(int(record["bits"]), scale, group_of, int(record["groups"]),
                   str(record["grouping"]), np.asarray(record["clip"], np.float32))

    @classmethod
    def examples(cls):
        # scales within 1 / (2 n) of the steps clip / n: every level in its own rounding cell
        return [(cls(2, np.array([0.5, 0.5, 2.0, 2.0], np.float32), np.array([0, 0, 1, 1]), 2,
                     "contiguous", np.array([0.625, 2.5], np.float32)), (3, 4)),
                (cls(4, np.array([0.25, 0.125, 0.25], np.float32), np.array([1, 0, 1]), 2,
                     "norm", np.array([0.875, 1.75], np.float32)), (2, 2, 2, 3))]
