"""SYMOG as optax gradient transformations.

Building blocks, each a pure ``GradientTransformation`` that works on any parameter pytree:

* :func:`add_mixture_prior_gradient` adds ``strength(t) * d NLL(w) / dw`` of the symmetric
  mixture prior to the gradients of the quantized leaves (put it *before* an optimizer, like a
  loss term, or after one, decoupled like AdamW's weight decay);
* :func:`clip_to_representable_range` projects parameters into their format's range by editing
  the final updates (put it *last*);
* :func:`share_formats` owns one formats tree (and its re-estimation) for every block inside it;
* :func:`symog` is ``share_formats(policy, optax.chain(prior, optimizer, clip))``;
  :func:`track_formats` is ``share_formats(policy, optax.identity())``.

**One owner for the formats.** A block created with ``bits`` keeps the formats chosen at
``init`` (a deterministic function of the parameters, so blocks with the same policy agree).
Formats that change during training (``reestimate_every``) must have one owner: blocks created
with ``bits=None`` read the formats that an enclosing :func:`share_formats` passes them as the
extra argument ``quantization_formats``; a block with its own formats refuses re-estimation.

Example:
  >>> params = {'dense': {'kernel': jnp.linspace(-1.0, 1.0, 12).reshape(4, 3),
  ...                     'bias': jnp.zeros(3)}}
  >>> grads = jax.tree_util.tree_map(jnp.zeros_like, params)
  >>> tx = symog_jax.symog(bits=2, optimizer=optax.adam(1e-3),
  ...                      strength=symog_jax.annealing_schedule(1e-4, 1e-1, 10_000))
  >>> opt_state = tx.init(params)
  >>> updates, opt_state = tx.update(grads, opt_state, params)
  >>> params = optax.apply_updates(params, updates)
  >>> result = symog_jax.hard_quantize(params, opt_state)
  >>> result.codes['dense']['kernel'].min(), result.codes['dense']['kernel'].max()
  (Array(-1, dtype=int32), Array(1, dtype=int32))
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from symog_jax.numerics.formats import FixedPointFormat
from symog_jax.numerics.priors import PriorForm, check_sigma, mixture_prior_grad
from symog_jax.numerics.rounding import quantize, quantize_ste
from symog_jax.quantizers.policy import Bits, FormatPolicy, QuantizationState, map_quantized

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
      >>> [round(float(s(t)), 6) for t in (0, 100, 600, 1100)]   # 600: half-way, geometric
      [0.0, 0.0001, 0.003162, 0.1]
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
        raise ValueError(f"{name} needs the current parameters: call update(updates, state, params)")


def _own_policy(bits, name: str, policy_kwargs) -> FormatPolicy | None:
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


def _formats_for(name: str, state_formats, extra_args: dict):
    shared = extra_args.get(FORMATS_ARG)
    if state_formats is not None and shared is not None:
        raise ValueError(f"{name} has its own formats but runs inside share_formats: create it "
                         f"with bits=None so that there is one owner of the formats")
    if state_formats is None and shared is None:
        raise ValueError(f"{name} was created with bits=None: it must run inside "
                         "share_formats(...) (or symog(...)), which owns the formats")
    return shared if shared is not None else state_formats


class MixturePriorState(NamedTuple):
    """State of :func:`add_mixture_prior_gradient`: step count and (own) formats or ``None``."""
    count: jax.Array
    quantization: QuantizationState | None


def add_mixture_prior_gradient(bits: Bits | None, strength: optax.ScalarOrSchedule, *,
                               sigma: optax.ScalarOrSchedule = 1.0, sigma_in_steps: bool = True,
                               form: PriorForm = "nearest", mixing=None, decoupled: bool = False,
                               **policy_kwargs) -> optax.GradientTransformationExtraArgs:
    """Adds the SYMOG prior's gradient to the updates of the quantized leaves.

    ``g' = g + strength(t) * d NLL(w; sigma(t)) / dw``; with ``decoupled=True`` (use after an
    optimizer, whose updates are already negative steps) ``u' = u - strength(t) * dNLL/dw``.

    Args:
      bits: bit-width (or per-leaf callable; see :class:`~symog_jax.quantizers.policy.FormatPolicy`)
        for a block with its own, fixed formats; ``None`` inside :func:`share_formats`.
      strength: prior weight, a float or an optax schedule of the step count.
      sigma: mode standard deviation (in steps when ``sigma_in_steps``), float or schedule.
      form: ``"nearest"`` (default, the pull toward the closest level) or ``"exact"``.
      mixing: optional mixing weights per level.
      decoupled: act after an optimizer (subtract from its updates) instead of before it.
      **policy_kwargs: ``mask``, ``per_channel``, ``signed``, ``symmetric`` ... of
        :class:`~symog_jax.quantizers.policy.FormatPolicy` (not ``reestimate_every``: see the
        module docstring).

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
    policy = _own_policy(bits, "add_mixture_prior_gradient", policy_kwargs)
    _check_schedule("strength", strength)
    _check_schedule("sigma", sigma)
    sign = -1.0 if decoupled else 1.0

    def init_fn(params):
        own = QuantizationState(policy.init(params)) if policy is not None else None
        return MixturePriorState(jnp.zeros([], jnp.int32), own)

    def update_fn(updates, state, params=None, **extra_args):
        _require_params(params, "add_mixture_prior_gradient")
        own = state.quantization.formats if state.quantization is not None else None
        formats = _formats_for("add_mixture_prior_gradient", own, extra_args)
        updates = add_prior_gradients(
            updates, params, formats, strength=sign * _evaluate(strength, state.count),
            sigma=_evaluate(sigma, state.count), sigma_in_steps=sigma_in_steps, form=form,
            mixing=mixing)
        return updates, MixturePriorState(optax.safe_int32_increment(state.count),
                                          state.quantization)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class ClipState(NamedTuple):
    """State of :func:`clip_to_representable_range`: its own formats, or ``None``."""
    quantization: QuantizationState | None


def clip_to_representable_range(bits: Bits | None = None,
                                **policy_kwargs) -> optax.GradientTransformationExtraArgs:
    """Keeps quantized leaves inside ``[min_value, max_value]`` of their format (a projection).

    Place it last in an ``optax.chain``, after the learning rate has been applied. With ``bits``
    it keeps its own formats (``hard_quantize(params, state)`` works with its state); with
    ``bits=None`` it clips to the formats of the enclosing :func:`share_formats`.

    Example:
      >>> params = {'w': jnp.array([[0.75, 1.0]])}
      >>> tx = clip_to_representable_range(2)                  # step 1: range [-1, 1]
      >>> u, _ = tx.update({'w': jnp.array([[1.0, -3.0]])}, tx.init(params), params)
      >>> optax.apply_updates(params, u)['w']
      Array([[ 1., -1.]], dtype=float32)
    """
    policy = _own_policy(bits, "clip_to_representable_range", policy_kwargs)

    def init_fn(params):
        return ClipState(QuantizationState(policy.init(params)) if policy is not None else None)

    def update_fn(updates, state, params=None, **extra_args):
        _require_params(params, "clip_to_representable_range")
        own = state.quantization.formats if state.quantization is not None else None
        formats = _formats_for("clip_to_representable_range", own, extra_args)
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
                                           QuantizationState(formats), inner_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def track_formats(bits: Bits, **policy_kwargs) -> optax.GradientTransformationExtraArgs:
    """Leaves updates unchanged; owns a formats tree (optionally re-estimated) in its state.

    For methods that quantize in the forward pass (the straight-through baseline): the loss
    reads ``find_formats(opt_state)`` and calls :func:`fake_quantize`, and the formats follow
    the weights when ``reestimate_every`` is set. It is ``share_formats(policy, identity())``.

    Example:
      >>> tx = optax.chain(optax.adam(1e-3), track_formats(2, reestimate_every=100))
    """
    return share_formats(FormatPolicy(bits, **policy_kwargs), optax.identity())


def symog(bits: Bits, optimizer: optax.GradientTransformation | None = None, *,
          strength: optax.ScalarOrSchedule, sigma: optax.ScalarOrSchedule = 1.0,
          sigma_in_steps: bool = True, form: PriorForm = "nearest", mixing=None,
          clip: bool = True, **policy_kwargs) -> optax.GradientTransformationExtraArgs:
    """SYMOG soft quantization: prior gradient, optimizer, clipping, one shared set of formats.

    ``symog(bits, opt, ...)`` is ``share_formats(FormatPolicy(bits, ...), optax.chain(
    add_mixture_prior_gradient(None, strength, ...), opt, clip_to_representable_range(None)))``:
    the prior gradient is added before the optimizer (as a loss term would be) and the clipping
    projection after it; put the result where the optimizer would go. Without an optimizer the
    prior is decoupled (``u -= strength * dNLL/dw``) and the result goes *after* your optimizer
    in an ``optax.chain``; ``strength`` then includes the learning rate.

    Args:
      bits: bit-width N (2 gives levels ``{-step, 0, step}``) or a per-leaf callable.
      optimizer: the optax optimizer to wrap, or ``None`` (decoupled form).
      strength: prior weight, float or optax schedule; required, because whether weights end on
        the levels depends on it: it must grow large enough by the end of training (see
        :func:`annealing_schedule`; the README says how to choose it).
      sigma: mode standard deviation, float or schedule, in units of the step by default.
      sigma_in_steps: interpret ``sigma`` relative to each leaf's step.
      form: ``"nearest"`` or ``"exact"`` prior (see :func:`~symog_jax.numerics.priors.mixture_prior_nll`).
      mixing: optional mixing weights per level.
      clip: project quantized leaves into their representable range after every update.
      **policy_kwargs: ``mask``, ``per_channel``, ``channel_axis``, ``signed``, ``symmetric``,
        ``num_candidates``, ``reestimate_every``, ``reestimate_until`` (see
        :class:`~symog_jax.quantizers.policy.FormatPolicy`).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a :class:`SymogState`
      (``= SharedFormatsState``); ``update`` requires ``params``.

    Example:
      >>> tx = symog(bits=2, optimizer=optax.sgd(0.05, momentum=0.9), strength=1e-2)
    """
    policy = FormatPolicy(bits, **policy_kwargs)
    blocks = [add_mixture_prior_gradient(None, strength, sigma=sigma,
                                         sigma_in_steps=sigma_in_steps, form=form,
                                         mixing=mixing, decoupled=optimizer is None)]
    if optimizer is not None:
        blocks.append(_drop_formats_arg(optimizer))
    if clip:
        blocks.append(clip_to_representable_range(None))
    return share_formats(policy, optax.chain(*blocks))
