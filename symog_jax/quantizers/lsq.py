"""LSQ: fake quantization with a learned step size, its gradient, scale and initialisation.

Esser et al., "Learned Step Size Quantization", ICLR 2020 (arXiv 1902.08153). Pure JAX
functions on Flax kernels (conv ``(..., cin, cout)``, dense ``(in, out)``); the method built on
them is :mod:`symog_jax.methods.lsq`.

**Quantizer** (paper eq. 1-2). With a positive step ``s`` and the signed symmetric code range
``-Q_N .. Q_P``, ``Q_N = Q_P = 2**(bits-1) - 1`` (2 bits: ternary ``{-1, 0, 1} * s``; the paper
uses ``Q_N = 2**(b-1)``, two's complement, which has no ternary case and no symmetric levels),

    v_bar = round(clip(v / s, -Q_N, Q_P)),        v_hat = v_bar * s.

**Gradients** (paper eq. 3 and the straight-through estimator for ``v``), with ``x = v / s``:

    d v_hat / d s = -x + round(x)   if -Q_N < x < Q_P
                  = -Q_N            if x <= -Q_N
                  = Q_P             if x >= Q_P
    d v_hat / d v = 1 if -Q_N < x < Q_P else 0.

The inequalities are the paper's: a value exactly at a clip bound takes the clipped branch (a
plain ``jnp.clip`` would give half of each there). Rounding is half to even (``jnp.round``).

**Gradient scale** (paper section 2.2): the step's gradient is multiplied by
``g = 1 / sqrt(N_w * Q_P)`` with the paper's trick, ``s_used = s * g - stop(s * g) + stop(s)``
(:func:`scale_grad`: the value is ``s``, the derivative ``g``). ``N_w`` is the number of weights
that share the step: the whole tensor per tensor (the paper), the output channel's weights per
channel (our choice, which keeps every channel's step on the paper's per-tensor footing).

**Initialisation** (paper section 2): ``s0 = 2 * mean(|v|) / sqrt(Q_P)`` over the weights
sharing the step (:func:`init_step`).

**Power-of-two steps** (not in LSQ; as TQT, Jain et al., MLSys 2020, learns its thresholds):
the learned variable is ``l = log2(s)`` and the step is ``s = 2**round(l)`` with the rounding
straight-through, so ``d s / d l = ln(2) * s`` (:func:`power_of_two_step`). (TQT learns the
log2 of the clipping threshold and rounds it up; we learn the step's and round to nearest.)
The gradient scale then applies to ``l``. Such a step is a fixed-point format's
``2**-frac_bits``.

**Exact products** (not in LSQ): a free step is used with its float32 mantissa rounded to
``25 - bits`` bits (straight-through; a relative change below ``2**-17`` at 8 bits), so that
``code * step`` is exact in float32 for every code, as the integer export needs
(:func:`exact_product_step`).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["GRANULARITIES", "MIN_STEP", "code_max", "exact_product_step", "grad_scale_factor",
           "init_step", "learned_step", "lsq_codes", "lsq_quantize", "power_of_two_step",
           "round_ste", "scale_grad", "step_shape", "weights_per_step"]

#: One learned step per tensor or per output channel (last kernel axis).
GRANULARITIES = ("tensor", "channel")
#: Smallest initial step: an all-zero kernel would otherwise start at 0 (or log2 0 = -inf).
MIN_STEP = 1e-8


def code_max(bits: int) -> int:
    """``Q_P = Q_N = 2**(bits-1) - 1``, the largest code of a signed symmetric ``bits``-bit step.

    Raises:
      ValueError: ``bits`` is not an integer in ``[2, 24]``.

    Example:
      >>> code_max(2), code_max(4)
      (1, 7)
    """
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or not 2 <= bits <= 24:
        raise ValueError(f"bits must be an integer in [2, 24], got {bits!r}")
    return 2 ** (int(bits) - 1) - 1


def _check_granularity(granularity: str) -> None:
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")


def step_shape(kernel_shape: tuple[int, ...], granularity: str) -> tuple[int, ...]:
    """Shape of the step(s) of a kernel: ``(1,) * ndim`` per tensor, ``(1, ..., 1, cout)`` per
    channel (the kernel's rank, so the step broadcasts against it).

    Example:
      >>> step_shape((3, 3, 8, 16), "channel"), step_shape((10, 4), "tensor")
      ((1, 1, 1, 16), (1, 1))
    """
    _check_granularity(granularity)
    if len(kernel_shape) == 0:
        raise ValueError("a kernel needs at least one axis, got a scalar")
    ones = (1,) * (len(kernel_shape) - 1)
    return ones + ((kernel_shape[-1],) if granularity == "channel" else (1,))


def weights_per_step(kernel_shape: tuple[int, ...], granularity: str) -> int:
    """``N_w`` of the gradient scale: the number of weights that share one step.

    Example:
      >>> weights_per_step((3, 3, 8, 16), "tensor"), weights_per_step((3, 3, 8, 16), "channel")
      (1152, 72)
    """
    n = int(np.prod(kernel_shape))
    steps = int(np.prod(step_shape(kernel_shape, granularity)))
    return n // steps


def grad_scale_factor(num_weights: int, bits: int) -> float:
    """The paper's gradient scale ``g = 1 / sqrt(N_w * Q_P)``.

    Example:
      >>> grad_scale_factor(100, 2), grad_scale_factor(4, 4) == 1 / math.sqrt(28)
      (0.1, True)
    """
    if isinstance(num_weights, bool) or not isinstance(num_weights, numbers.Integral) \
            or num_weights < 1:
        raise ValueError(f"num_weights must be a positive integer, got {num_weights!r}")
    return 1.0 / math.sqrt(int(num_weights) * code_max(bits))


def scale_grad(x: jax.Array, g: float) -> jax.Array:
    """``x`` in the forward pass, ``g`` times its gradient in the backward pass.

    The paper's ``x * g - stop_gradient(x * g) + stop_gradient(x)``; the value is ``x`` exactly
    (``x * g - x * g`` is 0).

    Example:
      >>> jax.grad(lambda s: 3.0 * scale_grad(s, 0.25))(2.0)
      Array(0.75, dtype=float32, weak_type=True)
    """
    scaled = x * g
    return scaled - jax.lax.stop_gradient(scaled) + jax.lax.stop_gradient(x)


def round_ste(x: jax.Array) -> jax.Array:
    """``round(x)`` (half to even) in the forward pass, identity gradient.

    Written ``round(x) + (x - stop(x))`` so that the value is ``round(x)`` exactly.

    Example:
      >>> round_ste(jnp.array([0.5, 1.5, -0.7])).tolist()
      [0.0, 2.0, -1.0]
      >>> jax.grad(lambda x: round_ste(x) * 3.0)(0.3)
      Array(3., dtype=float32, weak_type=True)
    """
    return jax.lax.stop_gradient(jnp.round(x)) + (x - jax.lax.stop_gradient(x))


def power_of_two_step(log2_step: jax.Array) -> jax.Array:
    """``2**round(log2_step)`` exactly, with the derivative ``ln(2) * 2**round(log2_step)``
    (rounding straight-through, as TQT).

    Example:
      >>> power_of_two_step(jnp.array([-2.4, 0.6, 3.0])).tolist()
      [0.25, 2.0, 8.0]
      >>> jax.grad(lambda l: power_of_two_step(l))(-2.4) == 0.25 * np.log(2.0).astype(np.float32)
      Array(True, dtype=bool)
    """
    log2_step = jnp.asarray(log2_step, jnp.float32)
    exponent = jax.lax.stop_gradient(jnp.round(log2_step)).astype(jnp.int32)
    step = jax.lax.stop_gradient(jnp.ldexp(jnp.float32(1.0), exponent))   # exact, unlike exp2
    return step + step * jnp.float32(math.log(2.0)) * (log2_step - jax.lax.stop_gradient(log2_step))


def exact_product_step(step: jax.Array, bits: int) -> jax.Array:
    """``step`` with its float32 mantissa rounded to ``25 - bits`` bits (half to even), so that
    ``code * step`` is exact in float32 for every ``|code| <= Q_P``; straight-through.

    Example:
      >>> s = exact_product_step(jnp.float32(0.1), 8)
      >>> bool(jnp.float32(127) * s == np.float64(127) * np.float64(s))
      True
    """
    step = jnp.asarray(step, jnp.float32)
    kept = 25 - int(bits)
    mantissa, exponent = jnp.frexp(jax.lax.stop_gradient(step))
    rounded = jnp.ldexp(jnp.round(jnp.ldexp(mantissa, kept)), exponent - kept)
    return jax.lax.stop_gradient(rounded) + (step - jax.lax.stop_gradient(step))


def learned_step(variable: jax.Array, g: float, bits: int, *,
                 power_of_two: bool) -> jax.Array:
    """The step a learned variable stands for, with the gradient scale ``g`` on the variable.

    ``variable`` is the step ``s`` itself, or ``log2(s)`` when ``power_of_two``; a free step is
    mantissa-rounded (:func:`exact_product_step`), a power-of-two one rounded to ``2**k``
    (:func:`power_of_two_step`).
    """
    scaled = scale_grad(jnp.asarray(variable, jnp.float32), g)
    if power_of_two:
        return power_of_two_step(scaled)
    return exact_product_step(scaled, bits)


def init_step(w: Any, bits: int, granularity: str) -> jax.Array:
    """The paper's initial step ``2 * mean(|w|) / sqrt(Q_P)`` per tensor or per output channel.

    Returns:
      float32 array of :func:`step_shape`, at least :data:`MIN_STEP`.

    Example:
      >>> w = jnp.array([[1.0, -2.0], [-3.0, 4.0]])      # channel means of |w|: 2 and 3
      >>> init_step(w, 4, "channel") * np.sqrt(7.0) / 2
      Array([[2., 3.]], dtype=float32)
    """
    w = jnp.asarray(w, jnp.float32)
    shape = step_shape(w.shape, granularity)
    axes = tuple(range(w.ndim - 1)) if granularity == "channel" else None
    mean_abs = jnp.mean(jnp.abs(w), axis=axes, keepdims=True).reshape(shape)
    return jnp.maximum(2.0 * mean_abs / math.sqrt(code_max(bits)), MIN_STEP)


def _ratio_inside(w: jax.Array, step: jax.Array, q: int) -> tuple[jax.Array, jax.Array]:
    """``(x, inside)``: ``x = w / step`` and the mask of ``-q < x < q`` (strict, the paper's)."""
    x = w / step
    return x, (x > -q) & (x < q)


def lsq_quantize(w: Any, step: jax.Array, bits: int) -> jax.Array:
    """LSQ fake quantization ``round(clip(w / step, -Q_P, Q_P)) * step`` with the paper's
    gradients for ``step`` and the straight-through gradient (inside the range) for ``w``.

    The gradient scale is not applied here: pass ``step = scale_grad(s, g)`` (or use
    :func:`learned_step`).

    Args:
      w: floating kernel, any shape.
      step: positive step(s) broadcastable against ``w``.
      bits: 2..24.

    Returns:
      ``w``'s shape and dtype; values ``code * step`` with integer codes in ``[-Q_P, Q_P]``.

    Example:
      >>> w = jnp.array([0.3, -0.9, 7.0])
      >>> lsq_quantize(w, jnp.float32(0.5), 2).tolist()
      [0.5, -0.5, 0.5]
      >>> jax.grad(lambda s: lsq_quantize(w, s, 2).sum())(0.5)   # (1 - 0.6) + -1 + 1
      Array(0.39999998, dtype=float32, weak_type=True)
    """
    w = jnp.asarray(w)
    q = code_max(bits)
    x, inside = _ratio_inside(w.astype(jnp.float32), jnp.asarray(step, jnp.float32), q)
    clipped = jnp.where(inside, x, jax.lax.stop_gradient(jnp.clip(x, -q, q)))
    return (round_ste(clipped) * step).astype(w.dtype)


def lsq_codes(w: Any, step: Any, bits: int, dtype=jnp.int32) -> jax.Array:
    """Integer codes ``round(clip(w / step, -Q_P, Q_P))`` of :func:`lsq_quantize`'s forward pass
    (``lsq_quantize(w, step, bits) == codes * step``).

    Example:
      >>> lsq_codes(jnp.array([0.3, -0.9, 7.0, 1.25]), 0.5, 3).tolist()
      [1, -2, 3, 2]
    """
    q = code_max(bits)
    x, _ = _ratio_inside(jnp.asarray(w, jnp.float32), jnp.asarray(step, jnp.float32), q)
    return jnp.round(jnp.clip(x, -q, q)).astype(dtype)
