"""PACT: a learned activation clip per layer (Choi et al. 2018, arXiv 1805.06085).

Why PACT rather than LSQ steps for activations: the inputs of conv/dense layers here are
mostly ReLU outputs (one-sided), and PACT's single parameter per layer *is* the top of the
range, so a power-of-two rounding of its step keeps the range a fixed-point format
(``[0, (2**b - 1) * 2**-f]``, :func:`to_fixed_point`) that the integer export already takes;
its gradient has one term and is easy to check by hand.

**Forward** (paper eq. 1-2), with ``alpha > 0`` and ``b`` bits (``m = 2**b - 1`` steps):

    y = clip(x, 0, alpha),        y_q = round(y * m / alpha) * alpha / m.

**Backward** (paper eq. 3, rounding straight-through; the dependence of the rounding on
``alpha`` is ignored, as in the paper):

    d y_q / d x     = 1 if 0 <= x < alpha else 0,
    d y_q / d alpha = 1 if x >= alpha else 0.

**Power-of-two** (not in PACT; so that the range exports as fixed point, as ``lsq``'s
``power_of_two`` does for weights): the step ``alpha / m`` is rounded to the nearest power of
two in the log domain, ``s = 2**round(log2(alpha / m))``, straight-through, and the clip used
is ``alpha_used = m * s``, so ``d alpha_used / d alpha = alpha_used / alpha``
(:func:`power_of_two_alpha`).

**Training a power-of-two clip** (not in PACT; as TQT, Jain et al. 2019, arXiv 1903.08066,
trains its log2 thresholds): the clip only changes when its latent ``alpha`` crosses the
midpoint between two powers of two, a factor ``sqrt(2)`` away from where calibration puts it.
Trained like a weight (SGD at the network's learning rate) it moved 0-9 % in a 78-step ResNet-20
run and never crossed. :func:`log2_domain` runs an optimizer on ``log2(alpha)`` instead (Adam
there moves every clip by about the learning rate in log2 units per step while the gradient keeps
its sign, whatever the clip's size), which is how ``act_range="pact-pow2"`` trains.

**LSQ's step gradient** (``step_gradient=True``, ``act_range="lsq-pow2"``; Esser et al. 2020,
arXiv 1902.08153, eq. 3, with ``Q_N = 0`` for the one-sided range and ``alpha = Q_P * s``):
PACT's ``d y_q / d alpha`` ignores how the rounding inside the range moves with the step, so
it is never negative: it can only ask for a larger clip, and without decay a trained clip only
grows (measured on ResNet-20 W2A2, RESULTS.md). LSQ keeps that term:

    d y_q / d alpha = (round(x / s) - x / s) / m   if 0 <= x < alpha,
                    = 1                            if x >= alpha,
                    = 0                            if x < 0,

with ``s = alpha / m``; the in-range term is negative where ``x / s`` rounds down, which is
what lets the loss shrink a clip. Times ``alpha * ln 2`` this is TQT's gradient of the log2
threshold (Jain et al. 2019), which is how the clip is trained here (Adam on
``log2(alpha)``, so LSQ's gradient scale ``1 / sqrt(N * Q_P)`` would cancel and is not used).
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from symog_jax.numerics.formats import FixedPointFormat, unsigned_format
from symog_jax.quantizers.lsq import power_of_two_step

__all__ = ["PACTRange", "log2_domain", "pact_quantize", "power_of_two_alpha"]


def _check_bits(bits: Any) -> int:
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or not 1 <= bits <= 16:
        raise ValueError(f"PACT bits must be an integer in 1..16, got {bits!r}")
    return int(bits)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _pact(x, alpha, levels, step_gradient):
    step = alpha / levels
    return (jnp.round(jnp.clip(x, 0.0, alpha) / step) * step).astype(x.dtype)


def _pact_fwd(x, alpha, levels, step_gradient):
    return _pact(x, alpha, levels, step_gradient), (x, alpha)


def _pact_bwd(levels, step_gradient, res, g):
    x, alpha = res
    inside = (x >= 0) & (x < alpha)
    zero = jnp.zeros_like(g)
    dx = jnp.where(inside, g, zero).astype(x.dtype)
    per_input = jnp.where(x >= alpha, g, zero).astype(jnp.float32)
    if step_gradient:        # LSQ: how rounding inside the range moves with the step
        scaled = x.astype(jnp.float32) / (alpha.astype(jnp.float32) / levels)   # as forward
        per_input += jnp.where(inside, g.astype(jnp.float32) * (jnp.round(scaled) - scaled)
                               / levels, 0.0)
    dalpha = jnp.sum(per_input)
    return dx, dalpha.astype(alpha.dtype).reshape(alpha.shape)


_pact.defvjp(_pact_fwd, _pact_bwd)


def pact_quantize(x: Any, alpha: Any, bits: int, *, step_gradient: bool = False) -> jax.Array:
    """PACT fake quantization of ``x`` to ``bits``-bit levels ``k * alpha / (2**bits - 1)``.

    Args:
      x: activations, any shape, floating.
      alpha: the clip, a positive scalar (float32; trainable).
      bits: 1..16 (static).
      step_gradient: ``alpha``'s gradient also counts the in-range rounding term (LSQ's step
        gradient, module docstring); ``False``: PACT's (clipped inputs only).

    Returns:
      ``y_q`` with ``x``'s shape and dtype; gradients as in the module docstring.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> x = jnp.array([-0.5, 0.4, 1.2, 3.0])
      >>> pact_quantize(x, jnp.float32(1.5), 2).tolist()   # step 0.5
      [0.0, 0.5, 1.0, 1.5]
      >>> jax.grad(lambda a: pact_quantize(x, a, 2).sum())(jnp.float32(1.5)).tolist()
      1.0
      >>> # LSQ adds (round(x/s) - x/s) / 3 for 0.4 and 1.2: (1 - 0.8) / 3 + (2 - 2.4) / 3
      >>> g = jax.grad(lambda a: pact_quantize(x, a, 2, step_gradient=True).sum())
      >>> round(float(g(jnp.float32(1.5))), 6)
      0.933333
    """
    bits = _check_bits(bits)
    x = jnp.asarray(x)
    alpha = jnp.asarray(alpha, jnp.float32)
    if alpha.shape != ():
        raise ValueError(f"PACT alpha must be a scalar, got shape {alpha.shape}")
    return _pact(x, alpha.astype(x.dtype), float(2 ** bits - 1), bool(step_gradient))


def power_of_two_alpha(alpha: Any, bits: int) -> jax.Array:
    """``(2**bits - 1) * 2**round(log2(alpha / (2**bits - 1)))``: the clip whose step is a
    power of two, straight-through (derivative ``alpha_used / alpha``).

    Example:
      >>> import jax.numpy as jnp
      >>> float(power_of_two_alpha(jnp.float32(1.4), 2))   # step 1.4 / 3 -> 0.5
      1.5
    """
    levels = 2 ** _check_bits(bits) - 1
    log2_step = jnp.log2(jnp.asarray(alpha, jnp.float32) / levels)
    return levels * power_of_two_step(log2_step)


@flax.struct.dataclass
class PACTRange:
    """A learned activation range, for
    :func:`~symog_jax.quantizers.activations.quantize_activations`.

    Attributes:
      alpha: float32 scalar, the learned clip (a pytree leaf: trainable, checkpointed).
      bits: activation bits (static).
      power_of_two: round the step to a power of two (static), so the range is a fixed-point
        format (:meth:`to_fixed_point`).
      step_gradient: train ``alpha`` with LSQ's step gradient (static; :func:`pact_quantize`).

    Example:
      >>> import jax.numpy as jnp
      >>> r = PACTRange(jnp.float32(1.4), bits=2, power_of_two=True)
      >>> r(jnp.array([0.3, 0.8, 2.0])).tolist(), r.to_fixed_point()
      ([0.5, 1.0, 1.5], FixedPointFormat(bits=2, frac_bits=1, unsigned))
    """
    alpha: jax.Array
    bits: int = flax.struct.field(pytree_node=False, default=8)
    power_of_two: bool = flax.struct.field(pytree_node=False, default=False)
    step_gradient: bool = flax.struct.field(pytree_node=False, default=False)

    def clip(self) -> jax.Array:
        """The clip in use: ``alpha``, or its power-of-two-step version."""
        if self.power_of_two:
            return power_of_two_alpha(self.alpha, self.bits)
        return jnp.asarray(self.alpha, jnp.float32)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x`` quantized on this range (:func:`pact_quantize`)."""
        return pact_quantize(x, self.clip(), self.bits, step_gradient=self.step_gradient)

    def to_fixed_point(self) -> FixedPointFormat:
        """The equivalent unsigned fixed-point format (``power_of_two`` ranges only; concrete
        ``alpha``).

        Raises:
          ValueError: the range's step is not a power of two.
        """
        if not self.power_of_two:
            raise ValueError("a PACT range exports as fixed point only with power_of_two=True "
                             "(its step alpha / (2**bits - 1) is otherwise arbitrary)")
        step = float(self.clip()) / (2 ** self.bits - 1)
        return unsigned_format(self.bits, -int(round(math.log2(step))))


def log2_domain(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """``inner`` run on ``log2`` of positive parameters (e.g. PACT clips), applied back
    multiplicatively.

    With ``l = log2(p)``, the gradient ``g`` of ``p`` becomes ``g * p * ln 2`` (the gradient of
    ``l``), ``inner`` turns it into an update ``u`` of ``l``, and the update returned for ``p``
    is ``p * (2**u - 1)``, so ``p + update == 2**(l + u)``: a parameter stays positive and moves
    by the same factor whatever its size. ``inner``'s state is the state of this transform.

    Args:
      inner: any optax transformation (its ``params`` argument receives ``log2(p)``).

    Returns:
      A ``GradientTransformation`` for pytrees of positive float arrays; ``update`` needs
      ``params``.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = log2_domain(optax.sgd(0.5))
      >>> p = {"alpha": jnp.float32(2.0)}
      >>> g = {"alpha": jnp.float32(-1.0 / (2.0 * jnp.log(2.0)))}   # d/dlog2(p) = -1
      >>> u, _ = tx.update(g, tx.init(p), p)
      >>> round(float(optax.apply_updates(p, u)["alpha"]), 4)          # 2**(1 + 0.5)
      2.8284
    """
    ln2 = math.log(2.0)

    def init(params):
        return inner.init(jax.tree.map(jnp.log2, params))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("log2_domain needs params (the positive values it updates)")
        log_grads = jax.tree.map(lambda g, p: g * p * ln2, updates, params)
        log_updates, state = inner.update(log_grads, state, jax.tree.map(jnp.log2, params))
        return jax.tree.map(lambda u, p: p * jnp.expm1(u * ln2), log_updates, params), state

    return optax.GradientTransformation(init, update)
