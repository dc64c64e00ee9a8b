"""``symog``: SYMOG soft quantization (Enderich et al., 2020) as a training method.

After ``warmup_epochs`` of float training (formats re-chosen from the weights once, then), the
mixture prior pulls every quantized weight toward its nearest level with a strength ramped
geometrically from ``strength_start`` to ``strength_end`` over ``anneal_fraction`` of the
remaining steps; weights are clipped to the representable range after every step, and rounding
at the end is (nearly) lossless.

``placement="decoupled"`` (default): the prior acts after the optimizer and each step removes
a fraction ``strength`` of each weight's distance to its nearest level. ``"coupled"``: its
gradient ``strength * (w - level)`` is added to the loss gradient before the optimizer (the
paper's loss term with sigma = 1 absorbed into the strength).

``prior="mixture"``: instead of the nearest level, the target is the posterior mean of the level
under the exact mixture (all modes, logsumexp) with a mode width ``sigma`` (in steps) annealed
geometrically from ``sigma_start`` to ``sigma_end`` over the same ramp as the strength. While
``sigma`` is wide (about 0.4 steps) a weight near the middle between two levels is barely pulled,
so the task gradient can still move it into the other mode; as ``sigma`` shrinks the prior
becomes the nearest-level pull. Both the warm-up (``warmup_epochs``) and the ramp are defined
in epochs / fractions of the run, so the same flags give the same dynamics on any data-set size.
``forward="quantized"`` (not in the paper; an experiment of issue 10) evaluates the loss on the
rounded weights with straight-through gradients, as ``ste`` does, while the prior pulls the
latent weights onto the levels: the network is trained as it will be deployed, and the pull
removes the gap between latent and rounded weights that plain STE keeps.
``release_fraction`` < 1 (with ``forward="quantized"``) stops the pull after that fraction of
the post-warm-up steps: SYMOG shapes the weights while the pull is weak, and the rest of the run
trains the rounded network as ``ste`` does (an experiment of issue 10: once the pull pins the
weights, the training loss stops falling).
To start from a trained float network, give the trainer ``init_from`` (``--init-from RUN``) and
``warmup_epochs=0``: the formats are then chosen from the float weights at the first step.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax.numpy as jnp
import optax

from symog_jax.methods.base import (RunInfo, bool_tree, check_choice, check_int, check_number,
                                    field, register)
from symog_jax.methods.fixed_point import FixedPointConfig, FixedPointMethod
from symog_jax.quantizers.masks import is_weight
from symog_jax.transforms import annealing_schedule, fake_quantize, symog

PLACEMENTS = ("decoupled", "coupled")
PRIORS = ("nearest", "mixture")
FORWARDS = ("float", "quantized")


@dataclasses.dataclass(frozen=True)
class SymogConfig(FixedPointConfig):
    warmup_epochs: float = field(0.0, "float epochs before the prior starts (formats "
                                      "re-chosen then); clamped to half the run if longer")
    placement: str = field("decoupled", "prior after the optimizer (a pull per step) or "
                                        "its gradient before it (a loss term)", choices=PLACEMENTS)
    strength_start: float = field(1e-4, "initial prior strength: the weight of the prior's "
                                        "gradient (w - nearest level), as in symog(strength=)")
    strength_end: float = field(0.1, "final prior strength (same meaning; decoupled, where it "
                                     "removes this fraction of the distance per step: <= 1)")
    anneal_fraction: float = field(0.9, "fraction of the post-warm-up steps over which "
                                        "the strength ramps")
    decay_quantized: bool = field(False, "weight decay on quantized kernels too (it "
                                         "fights the prior)")
    prior: str = field("nearest", "nearest: pull toward the closest level (a weight's mode is "
                                  "fixed once the pull is noticeable); mixture: the exact "
                                  "mixture (all modes, logsumexp), sigma annealed from "
                                  "sigma_start to sigma_end so weights can still change mode "
                                  "early on", choices=PRIORS)
    sigma_start: float = field(0.4, "mixture prior: mode standard deviation at the start of "
                                    "the ramp, in steps (< 0.5: wider modes merge)")
    sigma_end: float = field(0.05, "mixture prior: mode standard deviation at the end of the "
                                   "ramp, in steps")
    forward: str = field("float", "weights of the forward pass: float (SYMOG as published: the "
                                  "loss sees the soft weights) or quantized (the loss sees the "
                                  "rounded weights with straight-through gradients, as in "
                                  "ste, while the prior pulls the latent weights to the levels)",
                         choices=FORWARDS)
    release_fraction: float = field(1.0, "fraction of the post-warm-up steps after which the "
                                         "pull stops (1: never); then training goes on as "
                                         "ste, which needs forward='quantized'")
    reestimate_epochs: int = field(0, "re-choose the formats from the weights every this many "
                                      "epochs, as ste does (0: keep the formats chosen at the "
                                      "start, or at the end of the warm-up)")

    def problems(self) -> list[str]:
        problems = super().problems()
        check_number(problems, "warmup_epochs", self.warmup_epochs, 0, None)
        check_choice(problems, "placement", self.placement, PLACEMENTS)
        check_number(problems, "strength_start", self.strength_start, 0, None, lo_open=True)
        check_number(problems, "strength_end", self.strength_end, 0, None, lo_open=True)
        if not problems and self.strength_start > self.strength_end:
            problems.append("need strength_start <= strength_end")
        if not problems and self.placement == "decoupled" and self.strength_end > 1:
            problems.append("decoupled strength_end must be <= 1 (a fraction per step)")
        check_number(problems, "anneal_fraction", self.anneal_fraction, 0, 1, lo_open=True)
        check_choice(problems, "prior", self.prior, PRIORS)
        check_number(problems, "sigma_start", self.sigma_start, 0, 0.5, lo_open=True,
                     hi_open=True)
        check_number(problems, "sigma_end", self.sigma_end, 0, 0.5, lo_open=True, hi_open=True)
        if not problems and self.sigma_end > self.sigma_start:
            problems.append("need sigma_end <= sigma_start (the modes sharpen over training)")
        check_choice(problems, "forward", self.forward, FORWARDS)
        check_number(problems, "release_fraction", self.release_fraction, 0, 1, lo_open=True)
        if not problems and self.release_fraction < 1 and self.forward != "quantized":
            problems.append("release_fraction < 1 needs forward='quantized' (after the release "
                            "the weights leave the levels; only a loss on the rounded weights "
                            "then trains the network that is deployed)")
        check_int(problems, "reestimate_epochs", self.reestimate_epochs, 0, None)
        if not problems and self.reestimate_epochs and self.warmup_epochs:
            problems.append("reestimate_epochs needs warmup_epochs=0 (the warm-up re-chooses "
                            "the formats once at its end)")
        return problems


def sigma_schedule(start: float, end: float, ramp_steps: int,
                   warmup_steps: int = 0) -> optax.Schedule:
    """Mode width of the annealed mixture: ``start`` until ``warmup_steps``, then a geometric
    ramp to ``end`` over ``ramp_steps`` (the strength's ramp), then ``end``.

    Unlike :func:`~symog_jax.transforms.annealing_schedule` it is never 0 (a zero sigma would
    make the exact prior's gradient NaN even where its strength is 0).

    Example:
      >>> s = sigma_schedule(0.4, 0.05, ramp_steps=100, warmup_steps=10)
      >>> [round(float(s(t)), 4) for t in (0, 10, 60, 110, 500)]
      [0.4, 0.4, 0.1414, 0.05, 0.05]
    """
    def schedule(count):
        t = jnp.clip((jnp.asarray(count, jnp.float32) - warmup_steps) / ramp_steps, 0.0, 1.0)
        return start * (end / start) ** t
    return schedule


@register
class Symog(FixedPointMethod):
    """SYMOG: annealed mixture prior + clipping around the run's optimizer."""

    name = "symog"
    Config = SymogConfig

    def warmup_steps(self, run: RunInfo) -> int:
        c = self.config
        warmup = int(round(c.warmup_epochs * run.steps_per_epoch))
        if warmup >= run.total_steps and warmup > 0:
            clamped = run.total_steps // 2
            warnings.warn(f"warmup_epochs={c.warmup_epochs} is not shorter than the run "
                          f"({run.epochs} epochs): the float warm-up is clamped to half the run "
                          f"({clamped} of {run.total_steps} steps)", stacklevel=2)
            warmup = clamped
        return warmup

    def transform(self, base: optax.GradientTransformation, run: RunInfo):
        c = self.config
        warmup = self.warmup_steps(run)
        ramp = max(1, int(round((run.total_steps - warmup) * c.anneal_fraction)))
        strength = annealing_schedule(c.strength_start, c.strength_end, ramp,
                                      warmup_steps=warmup)
        if c.release_fraction < 1:      # the pull stops: 0 from the release step on
            release = warmup + int(round((run.total_steps - warmup) * c.release_fraction))
            strength = optax.join_schedules([strength, optax.constant_schedule(0.0)], [release])
        if warmup:
            policy = self.policy(reestimate_every=warmup, reestimate_until=warmup)
        else:
            policy = self.policy_reestimating_every(c.reestimate_epochs, run)
        kw = dict(mask=policy.mask, per_channel=policy.per_channel,
                  reestimate_every=policy.reestimate_every,
                  reestimate_until=policy.reestimate_until)
        if c.prior == "mixture":
            # Scale-free in both placements: sigma in steps; decoupled as a pull toward the
            # posterior mean of the level (a fraction of the distance per step).
            kw.update(form="exact", sigma_in_steps=True,
                      sigma=sigma_schedule(c.sigma_start, c.sigma_end, ramp, warmup))
            prior = dict(strength=strength) if c.placement == "coupled" else dict(pull=strength)
        else:
            kw.update(sigma=1.0, sigma_in_steps=False)
            prior = dict(strength=strength)
        if c.placement == "coupled":
            return symog(policy.bits, base, **prior, **kw)
        return optax.chain(base, symog(policy.bits, **prior, **kw))

    def runs_latent_weights(self) -> bool:
        return self.config.forward == "float"     # SYMOG as published

    def train_params(self, trainable, opt_state):
        """``forward="quantized"``: the rounded kernels with straight-through gradients."""
        if self.config.forward == "quantized":
            return fake_quantize(trainable["params"],
                                 self.formats(trainable, opt_state)["params"])
        return super().train_params(trainable, opt_state)

    def decay_mask(self, trainable):
        """Kernels; quantized ones only with ``decay_quantized`` (decay fights the prior)."""
        quantized = self.policy().mask
        return bool_tree(
            lambda path, leaf: path.startswith("params/") and is_weight(path, leaf)
            and (self.config.decay_quantized or not quantized(path, leaf)), trainable)
