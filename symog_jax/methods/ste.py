"""``ste``: straight-through fixed-point rounding of the weights in the forward pass.

The forward pass uses ``quantize(w)``; the backward pass treats rounding as the identity inside
the representable range (:func:`~symog_jax.numerics.rounding.quantize_ste`). The formats are
owned by :func:`~symog_jax.transforms.track_formats` and re-chosen from the weights every
``reestimate_epochs`` epochs.
"""

from __future__ import annotations

import dataclasses

import optax

from symog_jax.methods.base import RunInfo, check_int, field, register
from symog_jax.methods.fixed_point import FixedPointConfig, FixedPointMethod
from symog_jax.transforms import fake_quantize, share_formats


@dataclasses.dataclass(frozen=True)
class STEConfig(FixedPointConfig):
    reestimate_epochs: int = field(1, "re-choose the formats every this many epochs (0: never)")

    def problems(self) -> list[str]:
        problems = super().problems()
        check_int(problems, "reestimate_epochs", self.reestimate_epochs, 0, None)
        return problems


@register
class StraightThrough(FixedPointMethod):
    """Fake-quantized kernels in the forward pass, straight-through gradients."""

    name = "ste"
    Config = STEConfig

    def transform(self, base: optax.GradientTransformation, run: RunInfo):
        policy = self.policy_reestimating_every(self.config.reestimate_epochs, run)
        return optax.chain(base, share_formats(policy, optax.identity()))  # = track_formats

    def train_params(self, trainable, opt_state):
        return fake_quantize(trainable["params"], self.formats(trainable, opt_state)["params"])
