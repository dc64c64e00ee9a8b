"""SYQ: symmetric binary / ternary weight quantization with learned group scales.

Faraone et al., "SYQ: Learning Symmetric Quantization For Efficient Deep Neural Networks",
CVPR 2018. Pure JAX functions on Flax kernels: conv kernels ``(kh, kw, cin, cout)`` (any number
of spatial dimensions in front of ``(cin, cout)``), dense kernels ``(in, out)``.

Quantization. With the per-layer threshold ``t = eta * max|W|`` (a constant for
differentiation) and positive scales ``alpha`` (one per group of weights),

* ternary (``0 < eta < 1``): ``Q(W) = sign(W) * 1[|W| > t] * alpha_g``, levels
  ``{-alpha_g, 0, +alpha_g}``;
* binary (``eta == 0``): ``Q(W) = sign(W) * alpha_g`` with **sign(0) = +1** (also for ``-0.0``),
  so every weight is ``+-alpha_g``: binary has no zero level.

Gradients (:func:`jax.custom_vjp`, the rule of the reference implementation, where ``sign`` has
an identity gradient and the zero mask is not applied to it):

* ``dL/dW = A * dL/dQ`` with the scale map ``A = alpha_g`` where ``|W| > t`` and ``1``
  elsewhere (binary: ``alpha_g`` everywhere). The latent gradient is neither zeroed nor clipped.
* ``dL/dalpha_g = sum_{i in g, |W_i| > t} sign(W_i) * dL/dQ_i`` (binary: over all of ``g``).

Granularity of ``alpha`` (:data:`GRANULARITIES`, shapes from :func:`syq_scale_shape`; scales
always keep the kernel's rank, so they broadcast against it and are stored as Flax params as is):

* ``"layer"``: one scale, shape ``(1,) * ndim``;
* ``"channel"``: one scale per output channel (filter), shape ``(1, ..., 1, cout)``; this is
  *not* the reference's row-wise scaling (earlier versions of these docs called it that);
* ``"row"`` (the reference code's row-wise, ``rows_quant``): one scale per kernel row, i.e.
  per index of the first spatial axis, shared by the row's columns, input and output channels:
  shape ``(kh, 1, 1, 1)`` for a 2-D conv; a dense kernel gets one scale for the layer, shape
  ``(1, 1)`` (the reference's fully connected branch);
* ``"pixel"`` (pixel-wise, the paper's default for conv layers): one scale per kernel position,
  shape ``(kh, kw, 1, 1)``; a dense kernel has no spatial position, so it gets one scale for
  the layer, shape ``(1, 1)`` (as the paper does for fully connected layers).

Conventions settled against the reference code (julianfaraone/SYQ,
``tensorpack/examples/SYQ-AlexNet/quantize.py``):

* the threshold is ``eta * max|W|`` over the whole kernel, with a stopped gradient;
* the scale map is ``alpha`` where ``W > t`` or ``W < -t`` (strict) and ``1`` elsewhere; the
  latent gradient is ``A * dL/dQ``;
* a weight with ``|W| == t`` exactly is quantized to 0 here (``1[|W| > t]``). The reference
  zeroes only ``-t < W < t`` but scales only ``|W| > t``, so it maps ``|W| == t`` to
  ``sign(W) * 1``, which is not a level of the quantizer; we do not reproduce that.
* the reference initializes the scales from a file (or 1.0); :func:`init_syq_scales` uses the
  mean ``|W|`` of each group.

The scales are expected to be positive; that is not checked (it cannot be under ``jit``).

After training, :class:`SYQFormat` describes a quantized kernel as levels (the
``"syq"`` kind of :class:`~symog_jax.numerics.levels.Levels`): codes in ``{-1, 0, 1}``
(``{-1, 1}`` binary) times the scales, with the layer's threshold fixed.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from symog_jax.numerics.levels import Levels, RecordNeedsArrays

__all__ = [
    "GRANULARITIES",
    "SYQFormat",
    "check_syq_args",
    "init_syq_scales",
    "syq_codes",
    "syq_quantize",
    "syq_scale_shape",
    "syq_threshold",
]

#: Supported scale granularities (see the module docstring).
GRANULARITIES = ("layer", "channel", "row", "pixel")


def _check_eta(eta: Any) -> float:
    if isinstance(eta, jax.core.Tracer):
        raise TypeError("eta must be a static Python number in [0, 1), not a traced value "
                        "(it decides binary vs ternary at trace time)")
    if isinstance(eta, (bool, np.bool_)):
        raise TypeError(f"eta must be a real number in [0, 1), got the bool {eta!r}")
    if not isinstance(eta, numbers.Real):
        arr = np.asarray(eta) if isinstance(eta, (np.ndarray, jax.Array)) else None
        if arr is None or arr.ndim != 0 or arr.dtype.kind not in "iuf":
            raise TypeError(f"eta must be a real number in [0, 1), got {eta!r} of type "
                            f"{type(eta).__name__}")
        eta = arr.item()
    eta = float(eta)
    if not 0.0 <= eta < 1.0:
        raise ValueError(f"eta must be in [0, 1) (0 means binary weights), got eta={eta!r}")
    return eta


def _check_granularity(granularity: Any) -> str:
    if not isinstance(granularity, str) or granularity not in GRANULARITIES:
        raise ValueError(f"unknown SYQ granularity {granularity!r}; valid granularities are "
                         f"{', '.join(repr(g) for g in GRANULARITIES)}")
    return granularity


def check_syq_args(eta: float, granularity: str) -> tuple[float, str]:
    """Validates the SYQ hyper-parameters.

    Args:
      eta: threshold ratio, a real number in ``[0, 1)``; ``0`` means binary weights.
      granularity: one of :data:`GRANULARITIES`.

    Returns:
      ``(float(eta), granularity)``.

    Raises:
      ValueError: ``eta`` outside ``[0, 1)`` (the message names the value) or an unknown
        granularity (the message names it and lists the valid ones).
      TypeError: ``eta`` is not a real number (or is a traced value).

    Example:
      >>> import numpy as np
      >>> check_syq_args(np.float32(0.25), "pixel")
      (0.25, 'pixel')
    """
    return _check_eta(eta), _check_granularity(granularity)


def _check_kernel_shape(kernel_shape: Sequence[int]) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in kernel_shape)
    except TypeError as err:
        raise TypeError(f"kernel shape must be a sequence of ints, got {kernel_shape!r}") from err
    if len(shape) < 2:
        raise ValueError(f"SYQ needs a kernel with at least 2 dimensions ((in, out) dense or "
                         f"(..., cin, cout) conv), got shape {shape}")
    if any(d < 1 for d in shape):
        raise ValueError(f"SYQ needs a non-empty kernel, got shape {shape}")
    return shape


def syq_scale_shape(kernel_shape: Sequence[int], granularity: str) -> tuple[int, ...]:
    """Shape of the scales ``alpha`` for a kernel of ``kernel_shape``; same rank as the kernel.

    Args:
      kernel_shape: ``(kh, kw, cin, cout)`` conv (any number of spatial dims) or ``(in, out)``
        dense; at least 2-D, no zero-size dimension.
      granularity: ``"layer"`` -> ``(1,) * ndim``; ``"channel"`` -> ``(1, ..., 1, cout)``;
        ``"row"`` -> ``(kh, 1, ..., 1)`` for a conv, ``(1, 1)`` for a dense kernel;
        ``"pixel"`` -> ``spatial + (1, 1)``, i.e. ``(kh, kw, 1, 1)`` for a 2-D conv and
        ``(1, 1)`` (one scale) for a dense kernel.

    Returns:
      A tuple of Python ints.

    Example:
      >>> syq_scale_shape((3, 3, 16, 32), "pixel"), syq_scale_shape((128, 10), "channel")
      ((3, 3, 1, 1), (1, 10))
      >>> syq_scale_shape((5, 3, 16, 32), "row"), syq_scale_shape((128, 10), "row")
      ((5, 1, 1, 1), (1, 1))
    """
    shape = _check_kernel_shape(kernel_shape)
    granularity = _check_granularity(granularity)
    ndim = len(shape)
    if granularity == "layer":
        return (1,) * ndim
    if granularity == "channel":
        return (1,) * (ndim - 1) + (shape[-1],)
    if granularity == "row":
        return shape[:1] + (1,) * (ndim - 1) if ndim > 2 else (1, 1)
    return shape[:-2] + (1, 1)


def _as_float(x: Any, name: str) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        if jnp.issubdtype(x.dtype, jnp.complexfloating):
            raise TypeError(f"{name} must be real, got dtype {x.dtype}")
        x = x.astype(jnp.float32)
    return x


def _check_kernel(w: Any) -> jax.Array:
    w = _as_float(w, "w")
    _check_kernel_shape(w.shape)
    return w


def init_syq_scales(w: Any, granularity: str) -> jax.Array:
    """Initial scales: the mean ``|W|`` of each group (all of the group's entries).

    Args:
      w: kernel, at least 2-D, shape ``(..., cin, cout)``.
      granularity: one of :data:`GRANULARITIES`.

    Returns:
      ``float32`` array of shape ``syq_scale_shape(w.shape, granularity)``.

    Example:
      >>> import jax.numpy as jnp
      >>> w = jnp.array([[1.0, -2.0], [-3.0, 0.0]])
      >>> init_syq_scales(w, "channel").tolist()
      [[2.0, 1.0]]
    """
    w = _check_kernel(w)
    scale_shape = syq_scale_shape(w.shape, granularity)
    axes = tuple(i for i, (d, s) in enumerate(zip(w.shape, scale_shape)) if s == 1)
    scales = jnp.mean(jnp.abs(w.astype(jnp.float32)), axis=axes, keepdims=True)
    return scales.reshape(scale_shape)


def syq_threshold(w: Any, eta: float) -> jax.Array:
    """The per-layer threshold ``t = eta * max|W|`` (whole kernel), with a stopped gradient.

    Args:
      w: kernel, at least 2-D.
      eta: threshold ratio in ``[0, 1)`` (static).

    Returns:
      A scalar of ``w``'s floating dtype (``float32`` for integer input).

    Example:
      >>> import jax.numpy as jnp
      >>> float(syq_threshold(jnp.array([[0.5, -4.0], [1.0, 2.0]]), 0.25))
      1.0
    """
    eta = _check_eta(eta)
    w = _check_kernel(w)
    return _threshold(w, eta)


def _threshold(w: jax.Array, eta: float) -> jax.Array:
    w = jax.lax.stop_gradient(w)
    return (jnp.max(jnp.abs(w)) * jnp.asarray(eta, w.dtype)).astype(w.dtype)


def _keep(w: jax.Array, eta: float) -> jax.Array | None:
    """Boolean mask of the non-zero levels (``|W| > t``); ``None`` for binary (all kept)."""
    if eta == 0.0:
        return None
    return jnp.abs(w) > _threshold(w, eta)


def _unbroadcast(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Sums ``x`` (already broadcast to the kernel shape) down to ``shape``."""
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, s in enumerate(shape) if s == 1 and x.shape[lead + i] != 1)
    return jnp.sum(x, axis=axes, keepdims=True).reshape(shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _syq(w: jax.Array, alpha: jax.Array, eta: float) -> jax.Array:
    dtype = jnp.result_type(w.dtype, alpha.dtype)
    a = jnp.broadcast_to(alpha.astype(dtype), w.shape)
    q = jnp.where(w >= 0, a, -a)
    keep = _keep(w, eta)
    if keep is not None:
        q = jnp.where(keep, q, jnp.zeros((), dtype))
    return q


def _syq_fwd(w, alpha, eta):
    return _syq(w, alpha, eta), (w, alpha)


def _syq_bwd(eta, res, g):
    w, alpha = res
    a = jnp.broadcast_to(alpha.astype(g.dtype), w.shape)
    signed_g = jnp.where(w >= 0, g, -g)
    keep = _keep(w, eta)
    if keep is not None:
        a = jnp.where(keep, a, jnp.ones((), g.dtype))
        signed_g = jnp.where(keep, signed_g, jnp.zeros((), g.dtype))
    dw = (a * g).astype(w.dtype)
    dalpha = _unbroadcast(signed_g, alpha.shape).astype(alpha.dtype)
    return dw, dalpha


_syq.defvjp(_syq_fwd, _syq_bwd)


def _check_alpha(alpha: Any, w: jax.Array) -> jax.Array:
    alpha = _as_float(alpha, "alpha")
    ok = alpha.ndim <= w.ndim
    if ok:
        try:
            ok = np.broadcast_shapes(alpha.shape, w.shape) == w.shape
        except ValueError:
            ok = False
    if not ok:
        expected = ", ".join(f"{g}: {syq_scale_shape(w.shape, g)}" for g in GRANULARITIES)
        raise ValueError(f"alpha shape {alpha.shape} does not broadcast to the kernel shape "
                         f"{w.shape}; expected a SYQ scale shape ({expected}) or another shape "
                         f"broadcastable to {w.shape}")
    return alpha


def syq_quantize(w: Any, alpha: Any, eta: float = 0.05) -> jax.Array:
    """SYQ fake-quantization ``Q(W) = sign(W) * 1[|W| > eta * max|W|] * alpha`` (custom VJP).

    Forward: ternary levels ``{-alpha, 0, +alpha}`` for ``eta > 0``; binary ``+-alpha`` with
    ``sign(0) = +1`` for ``eta == 0``. Backward: ``dL/dW = A * dL/dQ`` (``A`` is ``alpha`` where
    ``|W| > t`` and 1 elsewhere; binary: ``alpha`` everywhere) and ``dL/dalpha`` is the sum of
    ``sign(W) * dL/dQ`` over each scale's entries with ``|W| > t``; ``t`` is a constant. Works
    under ``jit``, ``grad`` and ``vmap``.

    Args:
      w: kernel, at least 2-D, floating (integers are cast to ``float32``).
      alpha: scales, usually of shape ``syq_scale_shape(w.shape, granularity)``; any shape of
        rank ``<= w.ndim`` broadcastable to ``w.shape`` is accepted. Expected positive.
      eta: threshold ratio in ``[0, 1)``, static (a Python number).

    Returns:
      Array of ``w.shape`` and dtype ``jnp.result_type(w.dtype, alpha.dtype)``.

    Raises:
      ValueError: ``eta`` outside ``[0, 1)``, a kernel of rank < 2, or an ``alpha`` that does
        not broadcast to ``w.shape`` (the message names both shapes).

    Example:
      >>> import jax.numpy as jnp
      >>> w = jnp.array([[0.02, -1.0], [0.6, -0.3]])
      >>> alpha = jnp.array([[0.5, 2.0]])
      >>> syq_quantize(w, alpha, eta=0.5).tolist()
      [[0.0, -2.0], [0.5, 0.0]]
    """
    eta = _check_eta(eta)
    w = _check_kernel(w)
    alpha = _check_alpha(alpha, w)
    return _syq(w, alpha, eta)


def syq_codes(w: Any, eta: float = 0.05, dtype: Any = jnp.int8) -> jax.Array:
    """Integer codes of :func:`syq_quantize`: ``syq_codes(w, eta) * alpha == syq_quantize(...)``.

    Args:
      w: kernel, at least 2-D.
      eta: threshold ratio in ``[0, 1)`` (static).
      dtype: integer (or float) dtype of the codes.

    Returns:
      Array of ``w.shape``: codes in ``{-1, 0, +1}`` (ternary) or ``{-1, +1}`` (binary,
      ``sign(0) = +1``).

    Example:
      >>> import jax.numpy as jnp
      >>> w = jnp.array([[0.02, -1.0], [0.0, -0.3]])
      >>> syq_codes(w, 0.5).tolist(), syq_codes(w, 0.0).tolist()
      ([[0, -1], [0, 0]], [[1, -1], [1, -1]])
    """
    eta = _check_eta(eta)
    w = _check_kernel(w)
    codes = jnp.where(w >= 0, 1, -1).astype(dtype)
    keep = _keep(w, eta)
    if keep is not None:
        codes = jnp.where(keep, codes, jnp.zeros((), dtype))
    return codes


@dataclasses.dataclass(frozen=True, eq=False)
class SYQFormat(Levels):
    """What a SYQ-quantized kernel is: codes in {-1, 0, 1} times a scale per group.

    The codes are those of :func:`syq_codes` with the threshold fixed: ternary (``bits=2``)
    ``sign(x) * 1[|x| > threshold]``, binary (``bits=1``) ``sign(x)`` with ``sign(0) = +1``.
    Equality compares values (arrays element-wise).

    Attributes:
      bits: 2 (ternary) or 1 (binary).
      scale: float32 numpy array broadcastable to the kernel (``alpha``).
      threshold: the layer's ``eta * max|W|`` (0 for binary).
      granularity: ``'layer'``, ``'channel'``, ``'row'`` or ``'pixel'``.

    Example:
      >>> fmt = SYQFormat(2, np.array([[0.5, 2.0]], np.float32), 0.25, "channel")
      >>> fmt.to_codes(jnp.array([[0.2, -1.0], [0.3, 0.25]])).tolist()
      [[0, -1], [1, 0]]
      >>> fmt.quantize(jnp.array([[0.2, -1.0], [0.3, 0.25]])).tolist()
      [[0.0, -2.0], [0.5, 0.0]]
    """
    kind = "syq"

    bits: int
    scale: np.ndarray
    threshold: float
    granularity: str

    code_min = -1
    code_max = 1

    def step_for(self, x_ndim: int, dtype=jnp.float32) -> jax.Array:
        """The scale, broadcastable against the kernel (as stored: the kernel's rank)."""
        return jnp.asarray(self.scale, dtype)

    def to_codes(self, x) -> jax.Array:
        """int32 codes: ``sign(x) * 1[|x| > threshold]`` (ternary) or ``sign(x)`` (binary,
        ``sign(0) = +1``)."""
        x = jnp.asarray(x)
        x = x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)
        codes = jnp.where(x >= 0, 1, -1).astype(jnp.int32)
        if self.bits == 1:
            return codes
        # the threshold in x's dtype, as syq_threshold computes it, so the comparison agrees
        keep = jnp.abs(x) > jnp.asarray(self.threshold, x.dtype)
        return jnp.where(keep, codes, jnp.zeros((), jnp.int32))

    def code_levels(self) -> np.ndarray:
        """``[-1, 0, 1]`` (ternary) or ``[-1, 1]`` (binary: no zero level)."""
        return np.array([-1, 1] if self.bits == 1 else [-1, 0, 1], np.int32)

    @property
    def overhead_bits(self) -> int:
        """Storage of the float32 scales."""
        return 32 * int(self.scale.size)

    def label(self) -> str:
        return f"{self.granularity[:5]}x{self.scale.size}"

    def to_record(self) -> dict:
        """The kind, bits, granularity, threshold, the scales' count and range, code range (the
        scales themselves are the ``"step"`` array)."""
        return {"kind": self.kind, "bits": self.bits, "granularity": self.granularity,
                "threshold": self.threshold, "num_scales": int(self.scale.size),
                "scale_min": float(self.scale.min()), "scale_max": float(self.scale.max()),
                "code_min": self.code_min, "code_max": self.code_max}

    @classmethod
    def from_record(cls, record, arrays=None) -> "SYQFormat":
        """The scales come from ``arrays["step"]``, or, for one scale, from the record. A
        record without ``threshold`` or ``granularity`` (written by hand) gets 0 and
        ``"layer"``: its levels are right, its codes of new values may not be."""
        if arrays is not None and "step" in arrays:
            scale = np.asarray(arrays["step"], np.float32)
        elif int(record.get("num_scales", 0)) == 1:
            scale = np.asarray(record["scale_min"], np.float32)
        else:
            raise RecordNeedsArrays(f"a SYQ record with {record.get('num_scales')} scales needs "
                                    "its 'step' array (the scales)")
        return cls(int(record["bits"]), scale, float(record.get("threshold", 0.0)),
                   str(record.get("granularity", "layer")))

    @classmethod
    def examples(cls):
        pixel = np.array([0.5, 0.75, 1.0, 1.25], np.float32).reshape(2, 2, 1, 1)
        return [(cls(2, np.array([[0.5]], np.float32), 0.25, "layer"), (4, 3)),
                (cls(1, np.array([[0.5, 1.0, 2.0]], np.float32), 0.0, "channel"), (4, 3)),
                (cls(2, pixel, 0.375, "pixel"), (2, 2, 3, 2))]
