"""SYMOG as optax gradient transformations.

Building blocks, each a pure ``GradientTransformation`` that works on any parameter pytree
(Flax linen ``params``, Flax NNX state, also inside ``nnx.Optimizer``, plain dicts):

* :func:`add_mixture_prior_gradient` adds ``strength(t) * d NLL(w) / dw`` of the symmetric
  mixture prior to the gradients of the quantized leaves (put it *before* an optimizer, like a
  loss term);
* :func:`pull_to_levels` moves every quantized weight a fraction ``pull(t)`` of its remaining
  distance to the nearest level after the optimizer's step (``pull=1`` lands on the level);
* :func:`clip_to_representable_range` projects parameters into their format's range by editing
  the final updates (put it *last*);
* :func:`share_formats` owns one formats tree (and its re-estimation) for every block inside it;
* :func:`symog` is ``share_formats(policy, optax.chain(...))`` of the blocks above around an
  optimizer; :func:`track_formats` is ``share_formats(policy, optax.identity())``.

**Two knobs, two names.** ``strength`` is always the weight of the prior's gradient
(``strength * dNLL/dw``, a loss-term weight: its right size depends on the loss). ``pull`` is
always a fraction per step in ``[0, 1]`` (scale-free). Called with only ``bits`` (and an
optimizer), :func:`symog` and :func:`pull_to_levels` use :func:`default_pull`: float training for
the first half of ``total_steps`` (default 1000), then a geometric ramp from ``1e-4`` to ``1``;
over the last 5 % of the run every step ends exactly on the levels.
:func:`annealing_schedule_for_run` gives schedules as fractions of a run.

**One owner for the formats.** A block created with ``bits`` keeps the formats chosen at
``init`` (a deterministic function of the parameters, so blocks with the same policy agree).
Formats that change during training (``reestimate_every``) must have one owner: blocks created
with ``bits=None`` read the formats that an enclosing :func:`share_formats` passes them as the
extra argument ``quantization_formats``; a block with its own formats refuses re-estimation.

**optax wrappers.** Every transform here takes explicit keyword arguments, so
``optax.inject_hyperparams(symog, static_args=("bits",))(bits=2, optimizer=...,
strength=1e-2)`` makes ``strength``, ``pull`` and ``sigma`` injectable (``state.hyperparams``);
``bits`` fixes the formats at ``init`` and is not a hyperparameter (``symog`` refuses an
injected, array ``bits``); ``optax.MultiSteps``, ``optax.multi_transform``/``optax.partition``
and ``optax.apply_if_finite`` wrap them as any other transform. A callable ``mask`` must be
named in ``static_args`` too (``inject_hyperparams`` takes every callable for a schedule).

Example:
  >>> params = {'dense': {'kernel': jnp.linspace(-1.0, 1.0, 12).reshape(4, 3),
  ...                     'bias': jnp.zeros(3)}}
  >>> grads = jax.tree_util.tree_map(jnp.zeros_like, params)
  >>> tx = symog_jax.symog(bits=2, optimizer=optax.adam(1e-3), total_steps=10_000)
  >>> opt_state = tx.init(params)
  >>> updates, opt_state = tx.update(grads, opt_state, params)
  >>> params = optax.apply_updates(params, updates)
  >>> result = symog_jax.hard_quantize(params, opt_state)
  >>> result.codes['dense']['kernel'].min(), result.codes['dense']['kernel'].max()
  (Array(-1, dtype=int32), Array(1, dtype=int32))
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from symog_jax.numerics.formats import FixedPointFormat
from symog_jax.numerics.priors import PriorForm, check_sigma, mixture_prior_grad
from symog_jax.numerics.rounding import quantize, quantize_ste
from symog_jax.quantizers.masks import Mask
from symog_jax.quantizers.policy import (Bits, FormatPolicy, QuantizationState, map_quantized,
                                         unwrap_variables)

PyTree = Any

#: The default pull is 0 for ``DEFAULT_WARMUP_FRACTION`` of ``total_steps`` (float training),
#: then ramps geometrically from ``DEFAULT_PULL[0]`` to ``DEFAULT_PULL[1]`` over
#: ``DEFAULT_ANNEAL_FRACTION`` of the remaining steps (``DEFAULT_TOTAL_STEPS`` if not given).
DEFAULT_PULL = (1e-4, 1.0)
DEFAULT_WARMUP_FRACTION = 0.5
DEFAULT_ANNEAL_FRACTION = 0.9
DEFAULT_TOTAL_STEPS = 1000
#: In the exact form, mixture modes closer than ``2 * sigma`` merge: with ``sigma`` of half a
#: step or more the outer levels have no basin of their own and weights drift toward zero.
MAX_EXACT_SIGMA_IN_STEPS = 0.5


def _is_traced(value) -> bool:
    return isinstance(value, jax.core.Tracer)


def _check_schedule(name: str, value) -> None:
    if callable(value) or _is_traced(value):
        return
    if name == "sigma":
        check_sigma(value)
        return
    v = np.asarray(value, np.float64)
    if not np.all(v >= 0.0):  # also rejects NaN
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    if name == "pull" and np.any(v > 1.0):
        raise ValueError(f"pull must be <= 1 (the fraction of the distance to the nearest level "
                         f"removed per step), got {value!r}")


def _check_static_bits(name: str, bits) -> None:
    """``bits`` fixes the formats at ``init``: a Python (or numpy scalar) int or a callable,
    never an array, which is what ``optax.inject_hyperparams`` would make of it."""
    if callable(bits) or (isinstance(bits, (int, np.integer)) and not isinstance(bits, bool)):
        return
    raise TypeError(f"{name}: bits must be an int or a per-leaf callable, got "
                    f"{type(bits).__name__} (bits is not a hyperparameter: it fixes the formats "
                    f"at init; with optax.inject_hyperparams pass static_args=('bits',))")


def _check_exact_sigma(form: str, sigma, sigma_in_steps: bool) -> None:
    """Refuses the exact form with a (constant) sigma so wide that the modes merge."""
    if form not in ("exact", "nearest"):
        raise ValueError(f"form must be 'exact' or 'nearest', got {form!r}")
    if form != "exact" or not sigma_in_steps or callable(sigma) or _is_traced(sigma):
        return
    widest = float(np.max(np.asarray(sigma, np.float64)))
    if widest >= MAX_EXACT_SIGMA_IN_STEPS:
        raise ValueError(
            f"form='exact' with sigma={widest:g} steps: mixture modes closer than 2*sigma merge, "
            f"so the prior pulls every weight toward zero instead of its level. Give "
            f"sigma < {MAX_EXACT_SIGMA_IN_STEPS} (e.g. sigma=0.25) with form='exact', or use "
            f"form='nearest' (the default)")


def _warn_merged_modes(fmt: FixedPointFormat, sigma_abs, ndim: int) -> None:
    """Warns (eagerly only) when an absolute sigma is wide enough to merge the exact form's
    modes."""
    if _is_traced(sigma_abs) or _is_traced(fmt.frac_bits):
        return
    ratio = np.asarray(sigma_abs, np.float64) / np.asarray(fmt.step_for(ndim), np.float64)
    if np.max(ratio) >= MAX_EXACT_SIGMA_IN_STEPS:
        warnings.warn(f"form='exact' with sigma={np.max(sigma_abs):g} = {np.max(ratio):.2g} steps "
                      f"(step {np.min(np.asarray(fmt.step)):g}): the mixture modes merge and the "
                      f"prior pulls weights toward zero; use sigma < "
                      f"{MAX_EXACT_SIGMA_IN_STEPS} steps or form='nearest'", stacklevel=3)


def _evaluate(value, count):
    return value(count) if callable(value) else value


def _check_run(start, end, steps, warmup_steps) -> None:
    if not (start > 0 and end > 0):
        raise ValueError(f"start and end must be > 0, got {start}, {end}")
    if not (_is_traced(steps) or _is_traced(warmup_steps)) and (steps < 1 or warmup_steps < 0):
        raise ValueError(f"steps must be >= 1 and warmup_steps >= 0, got {steps}, {warmup_steps}")


def annealing_schedule(start: float, end: float, steps: int, *,
                       warmup_steps: int = 0) -> optax.Schedule:
    """Geometric ramp of the prior strength from ``start`` to ``end``, after a float warm-up.

    The strength is 0 for ``warmup_steps`` steps, then ``start * (end/start)**(t / steps)``,
    held at ``end`` afterwards. Growing the strength is equivalent to shrinking the prior's
    variance: the weight distribution moves from one broad Gaussian to sharp modes. To give the
    ramp as fractions of a run of known length, use :func:`annealing_schedule_for_run`.

    Example:
      >>> s = annealing_schedule(1e-4, 1e-1, 1000, warmup_steps=100)
      >>> [round(float(s(t)), 6) for t in (0, 100, 600, 1100)]   # 600: half-way, geometric
      [0.0, 0.0001, 0.003162, 0.1]
    """
    _check_run(start, end, steps, warmup_steps)

    def schedule(count):
        t = jnp.clip((jnp.asarray(count, jnp.float32) - warmup_steps) / steps, 0.0, 1.0)
        value = start * (end / start) ** t
        return jnp.where(count < warmup_steps, 0.0, value)

    return schedule


def annealing_schedule_for_run(start: float, end: float, total_steps: int, *,
                               warmup_fraction: float = 0.0,
                               anneal_fraction: float = DEFAULT_ANNEAL_FRACTION
                               ) -> optax.Schedule:
    """:func:`annealing_schedule` with its warm-up and ramp given as fractions of the run.

    ``warmup = round(warmup_fraction * total_steps)`` steps at 0, then the geometric ramp from
    ``start`` to ``end`` over ``round(anneal_fraction * (total_steps - warmup))`` steps, then
    ``end`` (the same split as the ``symog`` method's ``warmup_epochs``/``anneal_fraction``;
    in very short runs the ramp is shortened so that ``end`` is reached by the last step, count
    ``total_steps - 1``). Changing the run length rescales the schedule: nothing else needs to
    change.

    Example:
      >>> s = annealing_schedule_for_run(1e-3, 1.0, 1000, warmup_fraction=0.1)
      >>> [round(float(s(t)), 4) for t in (0, 100, 505, 910, 1000)]   # ramp: steps 100..910
      [0.0, 0.001, 0.0316, 1.0, 1.0]
    """
    if not _is_traced(total_steps) and not total_steps >= 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps!r}")
    if not (0.0 <= warmup_fraction < 1.0 and 0.0 < anneal_fraction <= 1.0):
        raise ValueError(f"need 0 <= warmup_fraction < 1 and 0 < anneal_fraction <= 1, got "
                         f"{warmup_fraction}, {anneal_fraction}")
    if not (start > 0 and end > 0):
        raise ValueError(f"start and end must be > 0, got {start}, {end}")

    def schedule(count):
        total = jnp.asarray(total_steps, jnp.float32)
        warmup = jnp.round(warmup_fraction * total)
        ramp = jnp.round((total - warmup) * anneal_fraction)
        ramp = jnp.clip(ramp, 1.0, jnp.maximum(1.0, total - 1.0 - warmup))  # end by the last step
        t = jnp.clip((jnp.asarray(count, jnp.float32) - warmup) / ramp, 0.0, 1.0)
        return jnp.where(count < warmup, 0.0, start * (end / start) ** t)

    return schedule


def default_pull(total_steps: int | None = None) -> optax.Schedule:
    """The pull used when none is given: float half, then ``1e-4 -> 1``, then 1.

    0 for the first half of ``total_steps`` (float training), then a geometric ramp from
    ``1e-4`` to ``1`` over 90 % of the second half, then 1: the last 5 % of the run end every
    step exactly on the levels. ``total_steps=None`` assumes a 1000-step run (1 from step 950).
    (On LeNet5, 2 bits, one to four epochs of the bundled MNIST subset, this beat ramps without
    the float half, and ramps from ``1e-3`` or ``1e-2``.)

    Example:
      >>> s = default_pull(2000)
      >>> [round(float(s(t)), 4) for t in (0, 999, 1000, 1450, 1900, 1999)]
      [0.0, 0.0, 0.0001, 0.01, 1.0, 1.0]
    """
    return annealing_schedule_for_run(
        *DEFAULT_PULL, DEFAULT_TOTAL_STEPS if total_steps is None else total_steps,
        warmup_fraction=DEFAULT_WARMUP_FRACTION, anneal_fraction=DEFAULT_ANNEAL_FRACTION)


def _default_reestimation(total_steps) -> dict:
    """With the default pull, formats are re-chosen once, from the weights at the end of the
    float half (the weights at ``init`` may be a random initialisation)."""
    total = DEFAULT_TOTAL_STEPS if total_steps is None else total_steps
    if _is_traced(total):     # optax.inject_hyperparams under jit: the same step, traced
        warmup = jnp.round(DEFAULT_WARMUP_FRACTION * total.astype(jnp.float32)).astype(jnp.int32)
        return dict(reestimate_every=jnp.maximum(warmup, 1), reestimate_until=warmup)
    warmup = int(round(DEFAULT_WARMUP_FRACTION * float(total)))
    return dict(reestimate_every=warmup, reestimate_until=warmup) if warmup >= 1 else {}


def add_prior_gradients(updates: PyTree, params: PyTree, formats: PyTree, *, strength,
                        sigma, sigma_in_steps: bool = True, form: PriorForm = "nearest",
                        mixing=None) -> PyTree:
    """``updates + strength * d NLL(params) / d params`` on the quantized leaves.

    ``sigma`` is in units of each leaf's step when ``sigma_in_steps`` (the default), so the same
    value means the same relative sharpness in every layer. A negative ``strength`` subtracts
    (decoupled use after an optimizer).

    Example:
      >>> formats = symog_jax.init_formats(params, bits=2)     # kernel step 0.5
      >>> g = add_prior_gradients(grads, params, formats, strength=0.25, sigma=1.0)
      >>> [round(v, 4) for v in params['dense']['kernel'][0].tolist()]   # nearest level: -0.5
      [-1.0, -0.9355, -0.871, -0.8065]
      >>> [round(v, 4) for v in g['dense']['kernel'][0].tolist()]   # 0.01 + 0.25*(w+0.5)/0.5**2
      [-0.49, -0.4255, -0.361, -0.2965]
    """
    def add(fmt: FixedPointFormat, u, w):
        scale = fmt.step_for(w.ndim) if sigma_in_steps else 1.0
        if form == "exact" and not sigma_in_steps:
            _warn_merged_modes(fmt, sigma, w.ndim)
        g = mixture_prior_grad(w, fmt, sigma * scale, mixing=mixing, form=form)
        return u + (strength * g).astype(u.dtype)
    return map_quantized(add, formats, updates, params)


def pull_updates(updates: PyTree, params: PyTree, formats: PyTree, *, pull,
                 form: PriorForm = "nearest", sigma=1.0, sigma_in_steps: bool = True,
                 mixing=None) -> PyTree:
    """Updates ``u'`` with ``w + u' = v + pull * (level(v) - v)``, where ``v = w + u``.

    ``level(v)`` is the nearest level (``form="nearest"``) or, in the exact form, the mixture's
    posterior mean of the level (``v - sigma**2 * dNLL/dv``). ``pull=1`` puts every quantized
    weight on its level; ``pull=0`` leaves the updates unchanged.

    Example:
      >>> formats = symog_jax.init_formats(params, bits=2)     # kernel levels -0.5, 0, 0.5
      >>> u = pull_updates(grads, params, formats, pull=1.0)
      >>> (params['dense']['kernel'][0] + u['dense']['kernel'][0]).tolist()
      [-0.5, -0.5, -0.5, -0.5]
    """
    def pull_one(fmt: FixedPointFormat, u, w):
        v = w + u
        if form == "nearest":
            target = quantize(v, fmt)
        else:
            s = sigma * fmt.step_for(w.ndim) if sigma_in_steps else sigma
            if not sigma_in_steps:
                _warn_merged_modes(fmt, sigma, w.ndim)
            g = mixture_prior_grad(v, fmt, s, mixing=mixing, form=form)
            target = (v - s**2 * g).astype(v.dtype)
        new = v + (pull * (target - v)).astype(v.dtype)
        d = new - w
        return d + (new - (w + d))        # so that w + d rounds to new (one correction)
    return map_quantized(pull_one, formats, updates, params)


def project_updates(updates: PyTree, params: PyTree, formats: PyTree) -> PyTree:
    """Updates ``u'`` such that ``params + u'`` is ``params + u`` clipped to each format's range.

    ``u' = u`` where ``params + u`` is inside the range; elsewhere ``params + u'`` (rounded as
    ``optax.apply_updates`` rounds it) is never outside it.

    Example:
      >>> formats = symog_jax.init_formats(params, bits=2)     # kernel range [-0.5, 0.5]
      >>> u = project_updates(grads, params, formats)
      >>> (params['dense']['kernel'][0] + u['dense']['kernel'][0]).tolist()
      [-0.5, -0.5, -0.5, -0.5]
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

    ``params`` may be linen ``params``, a dict, or an NNX state (with or without its
    ``nnx.Param`` variables). The NNX spelling of the straight-through forward pass::

        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        qmodel = nnx.merge(graphdef, fake_quantize(params, formats), rest)
        loss = loss_fn(qmodel(x), y)        # inside nnx.grad(...)(model): gradients reach model

    with ``formats = find_formats(optimizer.opt_state)`` of an ``nnx.Optimizer`` whose transform
    contains :func:`track_formats`.

    Example (the STE baseline's forward pass uses the result as its parameters):
      >>> params = {'dense': {'kernel': jnp.array([[0.3, -0.7], [0.05, 1.6]]),
      ...                     'bias': jnp.array([0.3, 0.3])}}
      >>> formats = symog_jax.init_formats(params, bits=2)      # step 1: levels {-1, 0, 1}
      >>> fake_quantize(params, formats)['dense']
      {'bias': Array([0.3, 0.3], dtype=float32), 'kernel': Array([[ 0., -1.],
             [ 0.,  1.]], dtype=float32)}
    """
    if straight_through:
        return map_quantized(lambda f, w: quantize_ste(w, f, pass_through=pass_through),
                             formats, params)
    return map_quantized(lambda f, w: quantize(w, f), formats, params)


#: The extra argument through which :func:`share_formats` hands its formats to the blocks.
FORMATS_ARG = "quantization_formats"


def _require_params(params, name: str):
    if params is None:
        raise ValueError(f"{name} needs the current parameters: "
                         "call update(updates, state, params)")


def _policy_kwargs(mask=None, per_channel=False, channel_axis=None, signed=True, symmetric=True,
                   num_candidates=None, reestimate_every=None, reestimate_until=None) -> dict:
    """The :class:`FormatPolicy` settings that differ from their defaults (``None``: default)."""
    given = dict(mask=mask, per_channel=per_channel, channel_axis=channel_axis, signed=signed,
                 symmetric=symmetric, num_candidates=num_candidates,
                 reestimate_every=reestimate_every, reestimate_until=reestimate_until)
    defaults = dict(mask=None, per_channel=False, channel_axis=None, signed=True, symmetric=True,
                    num_candidates=None, reestimate_every=None, reestimate_until=None)
    return {k: v for k, v in given.items() if not (v is defaults[k] or
                                                   (isinstance(v, bool) and v == defaults[k]))}


def _own_policy(bits, name: str, policy_kwargs: dict) -> FormatPolicy | None:
    """The policy of a block that keeps its own formats (``bits`` given), else ``None``."""
    if bits is None:
        if policy_kwargs:
            raise ValueError(f"{name}(None, ...) reads its formats from share_formats; give "
                             f"{sorted(policy_kwargs)} to the FormatPolicy of share_formats")
        return None
    policy = FormatPolicy(bits, **policy_kwargs)
    if policy.reestimate_every is not None:
        raise ValueError(
            f"{name} would re-estimate a private copy of the formats that the other blocks of "
            "the chain do not see. Formats that change need one owner: use symog(...), or "
            f"share_formats(FormatPolicy(bits, reestimate_every=...), optax.chain({name}(None, "
            "...), ...)) with every block created with bits=None")
    return policy


def _formats_for(name: str, own: QuantizationState | None, extra_args: dict):
    shared = extra_args.get(FORMATS_ARG)
    if own is not None and shared is not None:
        raise ValueError(f"{name} has its own formats but runs inside share_formats: create it "
                         f"with bits=None so that there is one owner of the formats")
    if own is None and shared is None:
        raise ValueError(f"{name} was created with bits=None: it must run inside "
                         "share_formats(...) (or symog(...)), which owns the formats")
    return unwrap_variables(shared if shared is not None else own.formats)


def _own_init(policy: FormatPolicy | None, params) -> QuantizationState | None:
    return QuantizationState(policy.init(params)) if policy is not None else None


class MixturePriorState(NamedTuple):
    """State of :func:`add_mixture_prior_gradient`: step count and (own) formats or ``None``."""
    count: jax.Array
    quantization: QuantizationState | None


def add_mixture_prior_gradient(
        bits: Bits | None, strength: optax.ScalarOrSchedule, *,
        sigma: optax.ScalarOrSchedule = 1.0, sigma_in_steps: bool = True,
        form: PriorForm = "nearest", mixing=None, decoupled: bool = False,
        mask: Mask = None, per_channel: bool = False, channel_axis: int | None = None,
        signed: bool = True, symmetric: bool = True, num_candidates: int | None = None,
        reestimate_every: int | None = None, reestimate_until: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Adds the SYMOG prior's gradient to the updates of the quantized leaves.

    ``g' = g + strength(t) * d NLL(w; sigma(t)) / dw``; with ``decoupled=True`` (use after an
    optimizer, whose updates are already negative steps) ``u' = u - strength(t) * dNLL/dw``.
    ``strength`` is the weight of a loss term, so its right size depends on the loss (there is
    no default); for a scale-free pull after the optimizer use :func:`pull_to_levels`.

    Args:
      bits: bit-width (or per-leaf callable; see :class:`~symog_jax.quantizers.policy.FormatPolicy`)
        for a block with its own, fixed formats; ``None`` inside :func:`share_formats`.
      strength: prior weight, a float or an optax schedule of the step count.
      sigma: mode standard deviation (in steps when ``sigma_in_steps``), float or schedule.
      form: ``"nearest"`` (default, the pull toward the closest level) or ``"exact"`` (needs
        ``sigma < 0.5`` steps: wider modes merge, and a constant one is refused).
      mixing: optional mixing weights per level.
      decoupled: act after an optimizer (subtract from its updates) instead of before it.
      mask, per_channel, channel_axis, signed, symmetric, num_candidates: the
        :class:`~symog_jax.quantizers.policy.FormatPolicy` of a block with its own formats
        (``None``: the policy's default).
      reestimate_every, reestimate_until: refused here (see the module docstring).

    Example:
      >>> params = {'w': jnp.array([[0.25, 0.75], [-0.625, -1.25]])}
      >>> tx = add_mixture_prior_gradient(2, 0.5, sigma=1.0, sigma_in_steps=False)
      >>> state = tx.init(params)
      >>> symog_jax.find_formats(state)['w']          # step 1: levels {-1, 0, 1}
      FixedPointFormat(bits=2, frac_bits=0, symmetric)
      >>> g, _ = tx.update({'w': jnp.zeros((2, 2))}, state, params)
      >>> g['w']                                      # 0.5 * (w - nearest level)
      Array([[ 0.125 , -0.125 ],
             [ 0.1875, -0.125 ]], dtype=float32)
    """
    policy = _own_policy(bits, "add_mixture_prior_gradient", _policy_kwargs(
        mask, per_channel, channel_axis, signed, symmetric, num_candidates, reestimate_every,
        reestimate_until))
    _check_schedule("strength", strength)
    _check_schedule("sigma", sigma)
    _check_exact_sigma(form, sigma, sigma_in_steps)
    sign = -1.0 if decoupled else 1.0

    def init_fn(params):
        return MixturePriorState(jnp.zeros([], jnp.int32), _own_init(policy, params))

    def update_fn(updates, state, params=None, **extra_args):
        _require_params(params, "add_mixture_prior_gradient")
        formats = _formats_for("add_mixture_prior_gradient", state.quantization, extra_args)
        updates = add_prior_gradients(
            updates, params, formats, strength=sign * _evaluate(strength, state.count),
            sigma=_evaluate(sigma, state.count), sigma_in_steps=sigma_in_steps, form=form,
            mixing=mixing)
        return updates, MixturePriorState(optax.safe_int32_increment(state.count),
                                          state.quantization)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class PullState(NamedTuple):
    """State of :func:`pull_to_levels`: step count and (own) formats or ``None``."""
    count: jax.Array
    quantization: QuantizationState | None


def pull_to_levels(
        bits: Bits | None = None, pull: optax.ScalarOrSchedule | None = None, *,
        total_steps: int | None = None, form: PriorForm = "nearest",
        sigma: optax.ScalarOrSchedule = 1.0, sigma_in_steps: bool = True, mixing=None,
        mask: Mask = None, per_channel: bool = False, channel_axis: int | None = None,
        signed: bool = True, symmetric: bool = True, num_candidates: int | None = None,
        reestimate_every: int | None = None, reestimate_until: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Moves each quantized weight a fraction ``pull(t)`` of its distance to the nearest level.

    Put it after the optimizer (and before :func:`clip_to_representable_range`): with ``v = w +
    u`` the weight after the optimizer's step, the new weight is ``v + pull * (level(v) - v)``
    (see :func:`pull_updates`). ``pull`` is a fraction per step in ``[0, 1]``, independent of
    the loss, the learning rate and the step size; at ``pull=1`` every step ends on the levels.

    Args:
      bits: bit-width (or per-leaf callable) for a block with its own formats; ``None`` inside
        :func:`share_formats`.
      pull: float or optax schedule in ``[0, 1]``. Default: :func:`default_pull` of
        ``total_steps`` (0 for half the run, then ``1e-4 -> 1``, 1 for the last 5 %).
      total_steps: length of the run, for the default pull (default 1000).
      form, sigma, sigma_in_steps, mixing: ``"nearest"`` (default: ``level`` is the nearest
        level) or ``"exact"`` (the posterior mean of the level under the mixture with ``sigma``).
      mask, per_channel, channel_axis, signed, symmetric, num_candidates: the format policy of a
        block with its own formats; ``reestimate_every``/``reestimate_until`` are refused here.

    Example:
      >>> tx = optax.chain(optax.sgd(0.1), pull_to_levels(2, 0.5))
      >>> p = {'w': jnp.array([[0.2, 0.9], [-0.6, -1.1]])}     # step 1: levels -1, 0, 1
      >>> u, _ = tx.update({'w': jnp.zeros((2, 2))}, tx.init(p), p)
      >>> optax.apply_updates(p, u)['w']                       # half-way to the levels
      Array([[ 0.1 ,  0.95],
             [-0.8 , -1.05]], dtype=float32)
    """
    policy = _own_policy(bits, "pull_to_levels", _policy_kwargs(
        mask, per_channel, channel_axis, signed, symmetric, num_candidates, reestimate_every,
        reestimate_until))
    if pull is None:
        pull = default_pull(total_steps)
    _check_schedule("pull", pull)
    _check_schedule("sigma", sigma)
    _check_exact_sigma(form, sigma, sigma_in_steps)

    def init_fn(params):
        return PullState(jnp.zeros([], jnp.int32), _own_init(policy, params))

    def update_fn(updates, state, params=None, **extra_args):
        _require_params(params, "pull_to_levels")
        formats = _formats_for("pull_to_levels", state.quantization, extra_args)
        updates = pull_updates(updates, params, formats, pull=_evaluate(pull, state.count),
                               form=form, sigma=_evaluate(sigma, state.count),
                               sigma_in_steps=sigma_in_steps, mixing=mixing)
        return updates, PullState(optax.safe_int32_increment(state.count), state.quantization)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class ClipState(NamedTuple):
    """State of :func:`clip_to_representable_range`: its own formats, or ``None``."""
    quantization: QuantizationState | None


def clip_to_representable_range(
        bits: Bits | None = None, *, mask: Mask = None, per_channel: bool = False,
        channel_axis: int | None = None, signed: bool = True, symmetric: bool = True,
        num_candidates: int | None = None, reestimate_every: int | None = None,
        reestimate_until: int | None = None) -> optax.GradientTransformationExtraArgs:
    """Keeps quantized leaves inside ``[min_value, max_value]`` of their format (a projection).

    Place it last in an ``optax.chain``, after the learning rate has been applied. With ``bits``
    it keeps its own formats (``hard_quantize(params, state)`` works with its state); with
    ``bits=None`` it clips to the formats of the enclosing :func:`share_formats`. The keyword
    arguments are those of :class:`~symog_jax.quantizers.policy.FormatPolicy` (``None``: its
    default; re-estimation is refused here).

    Example:
      >>> params = {'w': jnp.array([[0.75, 1.0]])}
      >>> tx = clip_to_representable_range(2)                  # step 1: range [-1, 1]
      >>> u, _ = tx.update({'w': jnp.array([[1.0, -3.0]])}, tx.init(params), params)
      >>> optax.apply_updates(params, u)['w']
      Array([[ 1., -1.]], dtype=float32)
    """
    policy = _own_policy(bits, "clip_to_representable_range", _policy_kwargs(
        mask, per_channel, channel_axis, signed, symmetric, num_candidates, reestimate_every,
        reestimate_until))

    def init_fn(params):
        return ClipState(_own_init(policy, params))

    def update_fn(updates, state, params=None, **extra_args):
        _require_params(params, "clip_to_representable_range")
        formats = _formats_for("clip_to_representable_range", state.quantization, extra_args)
        return project_updates(updates, params, formats), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class SharedFormatsState(NamedTuple):
    """State of :func:`share_formats`: step count, the one formats tree, the inner state."""
    count: jax.Array
    quantization: QuantizationState
    inner: optax.OptState


#: :func:`symog` returns a :func:`share_formats` transform; its state has this type.
SymogState = SharedFormatsState


def _drop_formats_arg(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """A user optimizer never sees our private extra argument (it may reject unknown ones)."""
    tx = optax.with_extra_args_support(tx)

    def update_fn(updates, state, params=None, **extra_args):
        extra_args.pop(FORMATS_ARG, None)
        return tx.update(updates, state, params, **extra_args)

    return optax.GradientTransformationExtraArgs(tx.init, update_fn)


def share_formats(policy: FormatPolicy, inner: optax.GradientTransformation
                  ) -> optax.GradientTransformationExtraArgs:
    """Owns one formats tree for every block of ``inner`` (created with ``bits=None``).

    At ``init`` the formats are chosen by ``policy``; every ``update`` re-estimates them when the
    policy says so, then calls ``inner.update(..., quantization_formats=formats)``, which
    ``optax.chain`` hands to each block. :func:`~symog_jax.quantizers.policy.find_formats` and
    :func:`~symog_jax.export.hard_quantize` read the formats from this state.

    Example (a hand-built SYMOG; :func:`symog` builds the same):
      >>> params = {'w': jnp.array([[0.2, 0.9], [-0.6, -1.1]])}
      >>> tx = share_formats(FormatPolicy(2, reestimate_every=10), optax.chain(
      ...     add_mixture_prior_gradient(None, 1e-2), optax.sgd(0.1),
      ...     clip_to_representable_range(None)))
      >>> state = tx.init(params)
      >>> symog_jax.find_formats(state)['w'].bits
      2
    """
    if not isinstance(policy, FormatPolicy):
        raise TypeError(f"share_formats needs a FormatPolicy, got {type(policy).__name__}")
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        return SharedFormatsState(jnp.zeros([], jnp.int32), QuantizationState(policy.init(params)),
                                  inner.init(params))

    def update_fn(updates, state, params=None, **extra_args):
        if policy.reestimate_every is not None:
            _require_params(params, "share_formats")
        formats = policy.maybe_reestimate(state.count, params, state.quantization.formats)
        updates, inner_state = inner.update(updates, state.inner, params,
                                            **{**extra_args, FORMATS_ARG: formats})
        return updates, SharedFormatsState(optax.safe_int32_increment(state.count),
                                           state.quantization.with_formats(formats), inner_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def track_formats(
        bits: Bits, *, mask: Mask = None, per_channel: bool = False,
        channel_axis: int | None = None, signed: bool = True, symmetric: bool = True,
        num_candidates: int | None = None, reestimate_every: int | None = None,
        reestimate_until: int | None = None) -> optax.GradientTransformationExtraArgs:
    """Leaves updates unchanged; owns a formats tree (optionally re-estimated) in its state.

    For methods that quantize in the forward pass (the straight-through baseline): the loss
    reads ``find_formats(opt_state)`` and calls :func:`fake_quantize`, and the formats follow
    the weights when ``reestimate_every`` is set. It is ``share_formats(FormatPolicy(bits,
    ...), identity())``; the keyword arguments are those of
    :class:`~symog_jax.quantizers.policy.FormatPolicy` (``None``: its default).

    Example:
      >>> tx = optax.chain(optax.adam(1e-3), track_formats(2, reestimate_every=100))
      >>> symog_jax.find_formats(tx.init(params))['dense']['kernel']
      FixedPointFormat(bits=2, frac_bits=1, symmetric)
    """
    return share_formats(FormatPolicy(bits, **_policy_kwargs(
        mask, per_channel, channel_axis, signed, symmetric, num_candidates, reestimate_every,
        reestimate_until)), optax.identity())


def symog(
        bits: Bits, optimizer: optax.GradientTransformation | None = None, *,
        strength: optax.ScalarOrSchedule | None = None,
        pull: optax.ScalarOrSchedule | None = None, total_steps: int | None = None,
        sigma: optax.ScalarOrSchedule = 1.0, sigma_in_steps: bool = True,
        form: PriorForm = "nearest", mixing=None, clip: bool = True,
        mask: Mask = None, per_channel: bool = False, channel_axis: int | None = None,
        signed: bool = True, symmetric: bool = True, num_candidates: int | None = None,
        reestimate_every: int | None = None, reestimate_until: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    """SYMOG soft quantization: prior, optimizer, pull, clipping, one shared set of formats.

    ``symog(bits, opt, ...)`` is ``share_formats(FormatPolicy(bits, ...), optax.chain(...))``
    of, in order: :func:`add_mixture_prior_gradient` (if ``strength`` is given: the prior's
    gradient added before the optimizer, as a loss term), ``opt``, :func:`pull_to_levels` (if
    ``pull`` is given, or if neither ``strength`` nor ``pull`` is: :func:`default_pull`) and
    :func:`clip_to_representable_range`. Put the result where the optimizer would go.

    Without an optimizer the result goes *after* your optimizer in an ``optax.chain``; a
    ``strength`` is then subtracted after it (``u -= strength * dNLL/dw``, the former decoupled
    form, kept for compatibility: prefer ``pull``).

    Called with ``bits``, an optimizer and ``total_steps`` (the number of optimizer steps of
    your run), the weights end on the levels: the default pull (:func:`default_pull`) trains in
    float for the first half of ``total_steps``, re-chooses the formats from the weights then
    (unless ``reestimate_*`` are given), and reaches 1 at 95 % of the run, from where every step
    lands on a level. Without ``pull`` and ``strength``, ``total_steps`` is required.

    ``bits`` is static: it fixes the formats at ``init``. Under ``optax.inject_hyperparams``
    pass ``static_args=("bits",)``; an array ``bits`` is refused with a ``TypeError``.

    Args:
      bits: bit-width N (2 gives levels ``{-step, 0, step}``) or a per-leaf callable.
      optimizer: the optax optimizer to wrap, or ``None`` (to be chained after yours).
      strength: weight of the prior's gradient (a loss-term weight: its size depends on the
        loss), float or optax schedule; see :func:`annealing_schedule_for_run`.
      pull: fraction of the distance to the nearest level removed per step, in ``[0, 1]``.
      total_steps: length of the run in optimizer steps; required for the default pull.
      sigma: mode standard deviation, float or schedule, in units of the step by default (only
        the strength term and the exact form use it).
      sigma_in_steps: interpret ``sigma`` relative to each leaf's step.
      form: ``"nearest"`` or ``"exact"`` prior (see
        :func:`~symog_jax.numerics.priors.mixture_prior_nll`); the exact form needs
        ``sigma < 0.5`` steps (wider modes merge and pull every weight toward zero).
      mixing: optional mixing weights per level.
      clip: project quantized leaves into their representable range after every update.
      mask, per_channel, channel_axis, signed, symmetric, num_candidates, reestimate_every,
        reestimate_until: the :class:`~symog_jax.quantizers.policy.FormatPolicy` (``None``: its
        default).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a :class:`SymogState`
      (``= SharedFormatsState``); ``update`` requires ``params``.

    Raises:
      ValueError: no ``total_steps`` for the default pull; the exact form with merging modes.
      TypeError: ``bits`` given as an array (e.g. by ``optax.inject_hyperparams``).

    Example:
      >>> tx = symog(bits=2, optimizer=optax.sgd(0.05, momentum=0.9), total_steps=5000)
      >>> tx = symog(bits=2, optimizer=optax.sgd(0.05), strength=1e-2)   # the loss-term form
      >>> tx = optax.chain(optax.adam(1e-3), symog(bits=2, pull=0.1))    # after an optimizer
    """
    _check_static_bits("symog", bits)
    _check_exact_sigma(form, sigma, sigma_in_steps)
    if strength is None and pull is None:
        if total_steps is None:
            raise ValueError("symog: total_steps is required for the default pull (the number "
                             "of optimizer steps of your run; it sets when the weights are "
                             "pulled onto the levels), or give pull= or strength=")
        pull = default_pull(total_steps)
        if reestimate_every is None and reestimate_until is None:
            once = _default_reestimation(total_steps)
            reestimate_every = once.get("reestimate_every")
            reestimate_until = once.get("reestimate_until")
    policy = FormatPolicy(bits, **_policy_kwargs(
        mask, per_channel, channel_axis, signed, symmetric, num_candidates, reestimate_every,
        reestimate_until))
    prior = dict(sigma=sigma, sigma_in_steps=sigma_in_steps, form=form, mixing=mixing)
    blocks = []
    if strength is not None and optimizer is not None:
        blocks.append(add_mixture_prior_gradient(None, strength, **prior))
    if optimizer is not None:
        blocks.append(_drop_formats_arg(optimizer))
    if strength is not None and optimizer is None:
        blocks.append(add_mixture_prior_gradient(None, strength, decoupled=True, **prior))
    if pull is not None:
        blocks.append(pull_to_levels(None, pull, **prior))
    if clip:
        blocks.append(clip_to_representable_range(None))
    return share_formats(policy, optax.chain(*blocks))
