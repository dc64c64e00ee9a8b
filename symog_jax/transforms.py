"""SYMOG as optax gradient transformations.

Three building blocks, each a pure ``GradientTransformation`` that works on any parameter pytree:

* :func:`add_mixture_prior_gradient` adds ``strength(t) * d NLL(w) / dw`` of the symmetric
  mixture prior to the gradients of the quantized leaves (put it *before* an optimizer, like a
  loss term, or after one, decoupled like AdamW's weight decay);
* :func:`clip_to_representable_range` projects parameters into their format's range by editing
  the final updates (put it *last*);
* :func:`symog` wraps an optimizer with both, sharing one set of formats.

Example:
  >>> tx = symog_jax.symog(bits=2, optimizer=optax.adam(1e-3),
  ...                      strength=symog_jax.annealing_schedule(1e-4, 1e-1, 10_000))
  >>> opt_state = tx.init(params)
  >>> updates, opt_state = tx.update(grads, opt_state, params)
  >>> params = optax.apply_updates(params, updates)
  >>> result = symog_jax.hard_quantize(params, opt_state)   # weights on the 2-bit levels
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from symog_jax.numerics.formats import FixedPointFormat
from symog_jax.quantizers.policy import Bits, FormatPolicy, QuantizationState, map_quantized
from symog_jax.numerics.priors import PriorForm, check_sigma, mixture_prior_grad
from symog_jax.numerics.rounding import quantize, quantize_ste

PyTree = Any


def _check_schedule(name: str, value) -> None:
    if callable(value):
        return
    if name == "sigma":
        check_sigma(value)
    elif not (float(value) >= 0.0):  # also rejects NaN
        raise ValueError(f"{name} must be >= 0, got {value!r}")


def _evaluate(value, count):
    return value(count) if callable(value) else value


def annealing_schedule(start: float, end: float, steps: int, *,
                       warmup_steps: int = 0) -> optax.Schedule:
    """Geometric ramp of the prior strength from ``start`` to ``end``, after a float warm-up.

    The strength is 0 for ``warmup_steps`` steps, then ``start * (end/start)**(t / steps)``,
    held at ``end`` afterwards. Growing the strength is equivalent to shrinking the prior's
    variance: the weight distribution moves from one broad Gaussian to sharp modes.

    Example:
      >>> s = annealing_schedule(1e-4, 1e-1, 1000, warmup_steps=100)
      >>> float(s(0)), float(s(100)), float(s(1100))
      (0.0, 0.0001, 0.1)
    """
    if not (start > 0 and end > 0):
        raise ValueError(f"start and end must be > 0, got {start}, {end}")
    if steps < 1 or warmup_steps < 0:
        raise ValueError(f"steps must be >= 1 and warmup_steps >= 0, got {steps}, {warmup_steps}")

    def schedule(count):
        t = jnp.clip((jnp.asarray(count, jnp.float32) - warmup_steps) / steps, 0.0, 1.0)
        value = start * (end / start) ** t
        return jnp.where(count < warmup_steps, 0.0, value)

    return schedule


def add_prior_gradients(updates: PyTree, params: PyTree, formats: PyTree, *, strength,
                        sigma, sigma_in_steps: bool = True, form: PriorForm = "nearest",
                        mixing=None) -> PyTree:
    """``updates + strength * d NLL(params) / d params`` on the quantized leaves.

    ``sigma`` is in units of each leaf's step when ``sigma_in_steps`` (the default), so the same
    value means the same relative sharpness in every layer. A negative ``strength`` subtracts
    (decoupled use after an optimizer).
    """
    def add(fmt: FixedPointFormat, u, w):
        scale = fmt.step_for(w.ndim) if sigma_in_steps else 1.0
        g = mixture_prior_grad(w, fmt, sigma * scale, mixing=mixing, form=form)
        return u + (strength * g).astype(u.dtype)
    return map_quantized(add, formats, updates, params)


def project_updates(updates: PyTree, params: PyTree, formats: PyTree) -> PyTree:
    """Updates ``u'`` such that ``params + u'`` is ``params + u`` clipped to each format's range.

    ``u' = u`` where ``params + u`` is inside the range; elsewhere ``params + u'`` (rounded as
    ``optax.apply_updates`` rounds it) is never outside it.
    """
    def clip(fmt: FixedPointFormat, u, w):
        step = fmt.step_for(w.ndim, w.dtype)
        lo, hi = fmt.code_min * step, fmt.code_max * step
        target = jnp.clip(w + u, lo, hi)
        d = target - w
        # The rounded difference can make ``w + d`` miss the bound by an ulp, outside the range:
        # move d one ulp inward there (then the rounded sum cannot cross the bound).
        d = jnp.where(w + d > hi, jnp.nextafter(d, jnp.full_like(d, -jnp.inf)), d)
        d = jnp.where(w + d < lo, jnp.nextafter(d, jnp.full_like(d, jnp.inf)), d)
        return jnp.where(w + u == target, u, d)             # exactly the identity inside
    return map_quantized(clip, formats, updates, params)


def fake_quantize(params: PyTree, formats: PyTree, *, straight_through: bool = True,
                  pass_through: str = "range") -> PyTree:
    """Parameters with quantized leaves rounded (straight-through by default) for a forward pass.

    Example (the STE baseline's loss):
      >>> logits = model.apply({'params': fake_quantize(params, formats)}, x)
    """
    if straight_through:
        return map_quantized(lambda f, w: quantize_ste(w, f, pass_through=pass_through),
                             formats, params)
    return map_quantized(lambda f, w: quantize(w, f), formats, params)


def _require_params(params, name: str):
    if params is None:
        raise ValueError(f"{name} needs the current parameters: call update(updates, state, params)")


class MixturePriorState(NamedTuple):
    """State of :func:`add_mixture_prior_gradient`."""
    count: jax.Array
    quantization: QuantizationState


def add_mixture_prior_gradient(bits: Bits, strength: optax.ScalarOrSchedule, *,
                               sigma: optax.ScalarOrSchedule = 1.0, sigma_in_steps: bool = True,
                               form: PriorForm = "nearest", mixing=None, decoupled: bool = False,
                               **policy_kwargs) -> optax.GradientTransformation:
    """Adds the SYMOG prior's gradient to the updates of the quantized leaves.

    ``g' = g + strength(t) * d NLL(w; sigma(t)) / dw``; with ``decoupled=True`` (use after an
    optimizer, whose updates are already negative steps) ``u' = u - strength(t) * dNLL/dw``.

    Args:
      bits: bit-width (or per-leaf callable); see :class:`~symog_jax.quantizers.policy.FormatPolicy`.
      strength: prior weight, a float or an optax schedule of the step count.
      sigma: mode standard deviation (in steps when ``sigma_in_steps``), float or schedule.
      form: ``"nearest"`` (default, the pull toward the closest level) or ``"exact"``.
      mixing: optional mixing weights per level.
      **policy_kwargs: ``mask``, ``per_channel``, ``signed``, ``symmetric``,
        ``reestimate_every`` ... of :class:`~symog_jax.quantizers.policy.FormatPolicy`.
    """
    policy = FormatPolicy(bits, **policy_kwargs)
    _check_schedule("strength", strength)
    _check_schedule("sigma", sigma)
    sign = -1.0 if decoupled else 1.0

    def init_fn(params):
        return MixturePriorState(jnp.zeros([], jnp.int32), QuantizationState(policy.init(params)))

    def update_fn(updates, state, params=None):
        _require_params(params, "add_mixture_prior_gradient")
        formats = policy.maybe_reestimate(state.count, params, state.quantization.formats)
        updates = add_prior_gradients(
            updates, params, formats, strength=sign * _evaluate(strength, state.count),
            sigma=_evaluate(sigma, state.count), sigma_in_steps=sigma_in_steps, form=form,
            mixing=mixing)
        return updates, MixturePriorState(optax.safe_int32_increment(state.count),
                                          QuantizationState(formats))

    return optax.GradientTransformation(init_fn, update_fn)


def clip_to_representable_range(bits: Bits, **policy_kwargs) -> optax.GradientTransformation:
    """Keeps quantized leaves inside ``[min_value, max_value]`` of their format (a projection).

    Place it last in an ``optax.chain``, after the learning rate has been applied. Its state is a
    :class:`QuantizationState`, so ``hard_quantize(params, state)`` works with it.
    """
    policy = FormatPolicy(bits, **policy_kwargs)
    if policy.reestimate_every is not None:
        raise ValueError("clip_to_representable_range keeps its formats fixed; "
                         "use symog(...) for re-estimation")

    def init_fn(params):
        return QuantizationState(policy.init(params))

    def update_fn(updates, state, params=None):
        _require_params(params, "clip_to_representable_range")
        return project_updates(updates, params, state.formats), state

    return optax.GradientTransformation(init_fn, update_fn)


class TrackedFormatsState(NamedTuple):
    """State of :func:`track_formats`."""
    count: jax.Array
    quantization: QuantizationState


def track_formats(bits: Bits, **policy_kwargs) -> optax.GradientTransformation:
    """Leaves updates unchanged; keeps a formats tree (optionally re-estimated) in its state.

    For methods that quantize in the forward pass (the straight-through baseline): the loss
    reads ``find_formats(opt_state)`` and calls :func:`fake_quantize`, and the formats follow
    the weights when ``reestimate_every`` is set.

    Example:
      >>> tx = optax.chain(optax.adam(1e-3), track_formats(2, reestimate_every=100))
    """
    policy = FormatPolicy(bits, **policy_kwargs)

    def init_fn(params):
        return TrackedFormatsState(jnp.zeros([], jnp.int32), QuantizationState(policy.init(params)))

    def update_fn(updates, state, params=None):
        formats = policy.maybe_reestimate(state.count, params, state.quantization.formats)
        return updates, TrackedFormatsState(optax.safe_int32_increment(state.count),
                                            QuantizationState(formats))

    return optax.GradientTransformation(init_fn, update_fn)


class SymogState(NamedTuple):
    """State of :func:`symog`: step count, the shared formats and the wrapped optimizer's state."""
    count: jax.Array
    quantization: QuantizationState
    inner: optax.OptState


def symog(bits: Bits, optimizer: optax.GradientTransformation | None = None, *,
          strength: optax.ScalarOrSchedule = 1e-3, sigma: optax.ScalarOrSchedule = 1.0,
          sigma_in_steps: bool = True, form: PriorForm = "nearest", mixing=None,
          clip: bool = True, **policy_kwargs) -> optax.GradientTransformationExtraArgs:
    """SYMOG soft quantization: prior gradient, optimizer, clipping, one shared set of formats.

    With an ``optimizer`` the prior gradient is added before it (as a loss term would be) and
    the clipping projection after it: put the result where the optimizer would go. Without one,
    the prior acts decoupled (``u -= strength * dNLL/dw``) and the result goes *after* your
    optimizer in an ``optax.chain``; ``strength`` then includes the learning rate.

    Args:
      bits: bit-width N (2 gives levels ``{-step, 0, step}``) or a per-leaf callable.
      optimizer: the optax optimizer to wrap, or ``None``.
      strength: prior weight, float or optax schedule (see :func:`annealing_schedule`).
      sigma: mode standard deviation, float or schedule, in units of the step by default.
      sigma_in_steps: interpret ``sigma`` relative to each leaf's step.
      form: ``"nearest"`` or ``"exact"`` prior (see :func:`~symog_jax.numerics.priors.mixture_prior_nll`).
      mixing: optional mixing weights per level.
      clip: project quantized leaves into their representable range after every update.
      **policy_kwargs: ``mask``, ``per_channel``, ``channel_axis``, ``signed``, ``symmetric``,
        ``num_candidates``, ``reestimate_every`` (see :class:`~symog_jax.quantizers.policy.FormatPolicy`).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a :class:`SymogState`;
      ``update`` requires ``params``.

    Example:
      >>> tx = symog(bits=2, optimizer=optax.sgd(0.05, momentum=0.9), strength=1e-2)
    """
    policy = FormatPolicy(bits, **policy_kwargs)
    _check_schedule("strength", strength)
    _check_schedule("sigma", sigma)
    inner = optax.with_extra_args_support(optimizer) if optimizer is not None else None

    def init_fn(params):
        inner_state = inner.init(params) if inner is not None else optax.EmptyState()
        return SymogState(jnp.zeros([], jnp.int32), QuantizationState(policy.init(params)),
                          inner_state)

    def update_fn(updates, state, params=None, **extra_args):
        _require_params(params, "symog")
        formats = policy.maybe_reestimate(state.count, params, state.quantization.formats)
        sign = 1.0 if inner is not None else -1.0
        updates = add_prior_gradients(
            updates, params, formats, strength=sign * _evaluate(strength, state.count),
            sigma=_evaluate(sigma, state.count), sigma_in_steps=sigma_in_steps, form=form,
            mixing=mixing)
        inner_state = state.inner
        if inner is not None:
            updates, inner_state = inner.update(updates, inner_state, params, **extra_args)
        if clip:
            updates = project_updates(updates, params, formats)
        return updates, SymogState(optax.safe_int32_increment(state.count),
                                   QuantizationState(formats), inner_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
