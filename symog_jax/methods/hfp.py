"""``hfp``: Holistic Filter Pruning (Enderich, Timm, Burgard, WACV 2021), composable with any
registered weight method (``inner``: ``float``, ``ste``, ``symog``, ``syq``, ...).

The user states rates: the fraction of parameters (``prune_params``) and/or of multiply-
accumulates (``prune_macs``) to remove. Every channel of every prunable decision
(:mod:`symog_jax.pruning.complexity`) has a gate in [0, 1] (this method's variables, under
``method/hfp_gates``; a gradient step normalised to at most ``gate_lr``, projected onto
[0, 1]). The training forward pass
uses the inner method's parameters with the straight-through 0/1 channel masks applied
(:mod:`symog_jax.pruning.gates`); after each forward pass the current complexity -- exact
parameter and MAC counts of the kept channels -- is compared with the targets, and
``budget_weight * budget_loss`` (relative gap to each target, both ways by default) is added
to the loss, so
gradient descent spreads the budget over the layers. ``finalize`` is the inner method's result
with the masks applied (same shapes; removed channels exactly zero, codes 0);
:mod:`symog_jax.pruning.thin` then selects channels for the exact rates and builds the thinner
registry model.

The method needs the architecture -- the model's structure (its channel decisions and layers,
:mod:`symog_jax.models.structure`) -- and the image shape (``HxWxC``, for the MACs). In the
trainer both come from the run (:class:`~symog_jax.methods.RunInfo` ``module``, the Flax model
itself, and ``input_shape``); outside it, give ``arch`` (a registry name) and ``input_shape``
(default ``32x32x3``).
Widths and classes are read off the parameters, so an already thinner network
(``TrainConfig.widths``) is pruned further the same way.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from symog_jax.quantizers.hard_quantize import HardQuantized
from symog_jax.methods.base import (Method, MethodConfig, RunInfo, check_choice, check_number,
                                    field, get_method_class, make_method, method_names,
                                    register)
from symog_jax.models.registry import MODEL_NAMES
from symog_jax.pruning.complexity import (Architecture, architecture_from_params,
                                          relative_complexity)
from symog_jax.pruning.gates import (apply_masks, budget_loss, check_budget, hard_masks,
                                     init_gates, kept_counts, magnitude_gates, ste_masks)

#: Key of the gates in the method variables (next to the inner method's own variables).
GATES = "hfp_gates"
BUDGET_SIDES = ("both", "excess")


def parse_input_shape(text: str) -> tuple[int, int, int]:
    """``'32x32x3'`` -> ``(32, 32, 3)``.

    Raises:
      ValueError: not three positive integers joined by ``x``.

    Example:
      >>> parse_input_shape("28x28x1")
      (28, 28, 1)
    """
    try:
        shape = tuple(int(v) for v in str(text).lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be HxWxC (e.g. 32x32x3), got {text!r}")
    return shape


def _inner_config(name: str, value) -> MethodConfig:
    """``value`` (``None``, a dict of fields or a config) as method ``name``'s config."""
    cls = get_method_class(name).Config
    if value is None or isinstance(value, dict):
        return make_method(name, value).config
    if not isinstance(value, cls):
        raise ValueError(f"inner must be a {cls.__name__} (the config of inner_method "
                         f"{name!r}), got {type(value).__name__}")
    return value


@dataclasses.dataclass(frozen=True)
class HFPConfig(MethodConfig):
    """Rates, the architecture, and the inner weight method (its own config object).

    ``inner`` is the inner method's config (``inner_method``'s ``Config``; a dict of its fields
    or ``None`` -- its defaults -- are turned into one), so it is saved with the run's config
    and every field of it (``bits``, ...) can be set from the command line.

    Example:
      >>> c = HFPConfig(arch="lenet5", input_shape="28x28x1", prune_macs=0.5,
      ...               inner_method="ste", inner={"bits": 4})
      >>> type(c.inner).__name__, c.inner.bits, c.max_weight_bits()
      ('STEConfig', 4, 4)
      >>> HFPConfig(prune_macs=0.5).inner_method, HFPConfig(prune_macs=0.5).inner.bits
      ('symog', 2)
    """
    arch: str = field("", "registry model the pruned parameters belong to, outside the "
                          "trainer (unset: the run's model)", choices=MODEL_NAMES, cli=False)
    input_shape: str = field("", "HxWxC of one input image, MACs depend on it (unset: the run's "
                                 "images, outside the trainer 32x32x3)", cli=False)
    prune_params: Any = field(None, "fraction of the parameters to remove, in (0, 1)",
                              type=float)
    prune_macs: Any = field(None, "fraction of the multiply-accumulates to remove, in (0, 1)",
                            type=float)
    inner_method: str = field("symog", "registered method for the weights inside the pruning "
                                       "(e.g. symog: quantization; float: none, rounding "
                                       "reported); its fields (--bits, ...) set its config")
    inner: Any = field(None, "the inner method's config (unset: its defaults)", cli=False)
    budget_weight: float = field(5.0, "weight of the budget loss (relative excess over the "
                                      "parameter and MAC targets)")
    gate_lr: float = field(0.02, "largest gate change per step (the gates' gradient is "
                                 "normalised by its largest entry)")
    gate_init: float = field(1.0, "initial gate of a decision's largest-norm channel, in "
                                  "(0.5, 1]; the others spread down to 0.55 by L1-norm rank")
    budget_sides: str = field("both", "budget loss on the gap to each target in both "
                                      "directions (both: gates settle at the rate) or only on "
                                      "the excess (excess: pruning more is free, gates "
                                      "overshoot)", choices=BUDGET_SIDES)
    gate_fraction: float = field(0.5, "fraction of the run's steps in which the gates move; "
                                      "then the masks are fixed and the weights adapt to the "
                                      "pruned structure while the learning rate is still up "
                                      "(1: gates move to the end)")
    min_keep: float = field(0.0, "fraction of every decision's channels that always stays, "
                                 "in [0, 1) (0: at least one channel); keeps the budget from "
                                 "emptying cheap-to-remove layers such as the first convs")

    def __post_init__(self):
        if self.inner_method in method_names() and self.inner_method != "hfp":
            try:
                inner = _inner_config(self.inner_method, self.inner)
            except (TypeError, ValueError) as e:
                raise ValueError(f"HFPConfig: inner {self.inner_method!r}: {e}") from None
            object.__setattr__(self, "inner", inner)
        super().__post_init__()

    def problems(self) -> list[str]:
        problems = super().problems()
        if self.arch and self.arch not in MODEL_NAMES:
            problems.append(f"arch must be one of {MODEL_NAMES} (the run's model) or unset, got "
                            f"{self.arch!r}")
        if self.input_shape:
            try:
                parse_input_shape(self.input_shape)
            except ValueError as e:
                problems.append(str(e))
        if self.prune_params is None and self.prune_macs is None:
            problems.append("give prune_params and/or prune_macs (fractions to remove)")
        for name in ("prune_params", "prune_macs"):
            if getattr(self, name) is not None:
                check_number(problems, name, getattr(self, name), 0, 1, lo_open=True,
                             hi_open=True)
        if self.inner_method == "hfp" or self.inner_method not in method_names():
            problems.append(f"inner_method must be a registered weight method other than hfp "
                            f"({', '.join(n for n in method_names() if n != 'hfp')}), got "
                            f"{self.inner_method!r}")
        check_number(problems, "budget_weight", self.budget_weight, 0, None, lo_open=True)
        check_number(problems, "gate_lr", self.gate_lr, 0, None, lo_open=True)
        check_number(problems, "gate_init", self.gate_init, 0.5, 1, lo_open=True)
        check_number(problems, "gate_fraction", self.gate_fraction, 0, 1, lo_open=True)
        check_number(problems, "min_keep", self.min_keep, 0, 1, hi_open=True)
        check_choice(problems, "budget_sides", self.budget_sides, BUDGET_SIDES)
        return problems

    def max_weight_bits(self) -> int | None:
        return self.inner.max_weight_bits()

    @classmethod
    def flag_fields(cls, given) -> set[str]:
        """Its own fields and those of the inner method (``inner_method`` of ``given``)."""
        name = given.get("inner_method", cls.inner_method)
        inner = ({f.name for f in dataclasses.fields(get_method_class(name).Config)}
                 if name in method_names() and name != "hfp" else set())
        return (super().flag_fields(given) - {"inner"}) | inner

    @classmethod
    def from_flags(cls, fields) -> "HFPConfig":
        """Fields of the inner method's config go into ``inner``; the others are HFP's."""
        own = {f.name for f in dataclasses.fields(cls)} - {"inner"}
        inner = dict(fields.get("inner") or {})
        inner.update({k: v for k, v in fields.items() if k not in own and k != "inner"})
        return cls(**{k: v for k, v in fields.items() if k in own}, inner=inner or None)


class HFPState(NamedTuple):
    """The inner method's optimizer state and the gates' step count."""
    inner: Any
    gates: Any


def gate_transform(inner: optax.GradientTransformation, lr: float,
                   gate_steps: int | None = None) -> optax.GradientTransformation:
    """``inner`` on the whole trainable tree, except the gates: a normalised gradient step.

    The gates' gradient is divided by its largest magnitude over all gates, so the most
    pushed gate moves by ``lr`` per step and every other gate in proportion: the relative
    sizes -- a channel's cost in the budget, its use to the task -- decide which channels go,
    without momentum overshooting the budget. The gates are then projected onto [0, 1].
    After ``gate_steps`` updates (``None``: never) the gates stop: a normalised step never
    shrinks, so gates near the threshold would otherwise flip channels on and off up to the
    last step, when the weights (at a decayed learning rate) can no longer adapt.

    Example:
      >>> tx = gate_transform(optax.sgd(0.1), lr=0.5)
      >>> tree = {"params": {"w": jnp.ones(2)}, "method": {GATES: {"a": jnp.full(2, 0.9)}}}
      >>> grads = {"params": {"w": jnp.ones(2)}, "method": {GATES: {"a": jnp.array([1., -.5])}}}
      >>> u, _ = tx.update(grads, tx.init(tree), tree)
      >>> [round(v, 3) for v in u["params"]["w"].tolist() + u["method"][GATES]["a"].tolist()]
      [-0.1, -0.1, -0.5, 0.1]
    """

    def init_fn(trainable):
        return HFPState(inner.init(trainable), optax.ScaleByScheduleState(
            count=jnp.zeros([], jnp.int32)))

    def update_fn(updates, state, trainable=None):
        out, inner_state = inner.update(updates, state.inner, trainable)
        gates = trainable["method"][GATES]
        grads = updates["method"][GATES]
        leaves = jax.tree_util.tree_leaves(grads)
        top = jnp.max(jnp.stack([jnp.max(jnp.abs(g), initial=0.0) for g in leaves]))
        count = state.gates.count
        moving = 1.0 if gate_steps is None else (count < gate_steps).astype(jnp.float32)
        scale = moving * lr / jnp.maximum(top, 1e-12)
        step = jax.tree_util.tree_map(lambda w, g: jnp.clip(w - scale * g, 0.0, 1.0) - w,
                                      gates, grads)
        out = {**out, "method": {**out["method"], GATES: step}}
        return out, HFPState(inner_state, optax.ScaleByScheduleState(
            count=optax.safe_int32_increment(count)))

    return optax.GradientTransformation(init_fn, update_fn)


@register
class HFP(Method):
    """Holistic filter pruning to parameter/MAC rates around an inner weight method."""

    name = "hfp"
    Config = HFPConfig

    def __init__(self, config: HFPConfig | None = None, run: RunInfo | None = None):
        super().__init__(config, run)
        self.inner = make_method(self.config.inner_method, self.config.inner, self.run)
        self._archs: dict = {}
        c, run = self.config, self.run
        #: The Flax model pruned (the trainer's, from the run), else found by ``arch``.
        self.module = run.module
        if c.arch and run.model and c.arch != run.model.lower():
            raise ValueError(f"hfp: arch {c.arch!r} is not the run's model {run.model!r} (leave "
                             "arch unset in the trainer)")
        #: Registry name of the pruned model (``""``: unknown until given).
        self.arch_name = c.arch or run.model.lower()
        #: ``(H, W, C)`` of one image.
        self.input_shape = (parse_input_shape(c.input_shape) if c.input_shape else
                            tuple(run.input_shape) or (32, 32, 3))

    def describe(self) -> str:
        c = self.config
        rates = "-".join(f"{k}{round(100 * v)}" for k, v in (("p", c.prune_params),
                                                             ("m", c.prune_macs)) if v)
        return f"hfp-{rates}-{self.inner.describe()}"

    # -- helpers ----------------------------------------------------------------------------
    def architecture(self, params) -> Architecture:
        """The :class:`Architecture` of ``params`` (checked once per parameter shapes)."""
        key = tuple((jax.tree_util.keystr(p), tuple(jnp.shape(v)))
                    for p, v in jax.tree_util.tree_flatten_with_path(params)[0])
        if key not in self._archs:
            model = self.module if self.module is not None else self.arch_name
            if not model:
                raise ValueError("hfp needs the architecture: set arch (a registry name) or "
                                 "train it with the trainer (which passes the run's model)")
            arch = architecture_from_params(model, params, self.input_shape)
            check_budget(arch, self.config.prune_params, self.config.prune_macs,
                         self.config.min_keep)
            self._archs[key] = arch
        return self._archs[key]

    @staticmethod
    def inner_view(trainable) -> dict:
        """The trainable tree as the inner method sees it (without the gates)."""
        method = {k: v for k, v in trainable["method"].items() if k != GATES}
        return {"params": trainable["params"], "method": method}

    def masks(self, trainable, straight_through: bool = False) -> dict:
        """``{decision: (channels,) 0/1 mask}`` of the current gates."""
        arch = self.architecture(trainable["params"])
        gates = trainable["method"][GATES]
        mk = self.config.min_keep
        return ste_masks(arch, gates, mk) if straight_through else hard_masks(arch, gates, mk)

    def relative_complexity(self, trainable) -> tuple[jax.Array, jax.Array]:
        """Current (parameters, MACs) relative to the unpruned network, from the hard masks."""
        arch = self.architecture(trainable["params"])
        return relative_complexity(arch, kept_counts(arch, self.masks(trainable)))

    # -- hooks ------------------------------------------------------------------------------
    def init_variables(self, params) -> dict:
        arch = self.architecture(params)
        inner = self.inner.init_variables(params)
        if GATES in inner:
            raise ValueError(f"inner method {self.inner.name!r} already uses the name {GATES!r}")
        gates = (magnitude_gates(arch, params, high=self.config.gate_init)
                 if self.config.gate_init > 0.55 else init_gates(arch, self.config.gate_init))
        return {**inner, GATES: gates}

    def decay_mask(self, trainable):
        mask = self.inner.decay_mask(self.inner_view(trainable))
        gates = jax.tree_util.tree_map(lambda _: False, trainable["method"][GATES])
        return {**mask, "method": {**mask["method"], GATES: gates}}

    def transform(self, base: optax.GradientTransformation, run: RunInfo):
        steps = max(1, int(round(self.config.gate_fraction * run.total_steps)))
        return gate_transform(self.inner.transform(base, run), self.config.gate_lr,
                              None if self.config.gate_fraction >= 1 else steps)

    def train_params(self, trainable, opt_state):
        arch = self.architecture(trainable["params"])
        params = self.inner.train_params(self.inner_view(trainable), _inner(opt_state))
        return apply_masks(arch, params, self.masks(trainable, straight_through=True))

    def extra_loss(self, trainable, opt_state):
        arch = self.architecture(trainable["params"])
        counts = kept_counts(arch, self.masks(trainable, straight_through=True))
        budget = budget_loss(arch, counts, self.config.prune_params, self.config.prune_macs,
                             two_sided=self.config.budget_sides == "both")
        inner = self.inner.extra_loss(self.inner_view(trainable), _inner(opt_state))
        return inner + self.config.budget_weight * budget

    def epoch_metrics(self, trainable, opt_state) -> dict[str, float]:
        """The kept fractions of parameters and MACs under the current hard masks (what the
        budget loss compares with ``1 - rate``) and the fraction of open gates."""
        rel_p, rel_m = self.relative_complexity(trainable)
        masks = self.masks(trainable)
        total = sum(int(m.shape[0]) for m in masks.values())
        open_ = sum(float(jnp.sum(m)) for m in masks.values())
        return {"params_kept": float(rel_p), "macs_kept": float(rel_m),
                "gates_open": open_ / max(total, 1)}

    def quantized_params(self, trainable, opt_state):
        arch = self.architecture(trainable["params"])
        params = self.inner.quantized_params(self.inner_view(trainable), _inner(opt_state))
        return apply_masks(arch, params, self.masks(trainable))

    def finalize(self, trainable, opt_state) -> HardQuantized:
        arch = self.architecture(trainable["params"])
        hq = self.inner.finalize(self.inner_view(trainable), _inner(opt_state))
        masks = self.masks(trainable)
        int_masks = {k: v.astype(jnp.int32) for k, v in masks.items()}
        return hq._replace(params=apply_masks(arch, hq.params, masks),
                           codes=apply_masks(arch, hq.codes, int_masks))


def _inner(opt_state):
    """The inner method's optimizer state (the trainer passes the whole :class:`HFPState`)."""
    return opt_state.inner if isinstance(opt_state, HFPState) else opt_state
