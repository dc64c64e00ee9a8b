"""``float``: plain float training; its result is post-training quantization (PTQ).

The float network is the trained one; ``quantized_params``/``finalize`` round it to MSE-optimal
``bits``-bit formats chosen from the final weights, so every float run also reports what
rounding after training costs (the old ``ptq`` method).
"""

from __future__ import annotations

import dataclasses

import optax

from symog_jax.methods.base import RunInfo, register
from symog_jax.methods.fixed_point import FixedPointConfig, FixedPointMethod


@dataclasses.dataclass(frozen=True)
class FloatConfig(FixedPointConfig):
    """``bits``/``per_channel`` only set the post-training quantization that is reported."""


@register
class FloatTraining(FixedPointMethod):
    """Float training; finalize = post-training rounding to MSE-optimal formats."""

    name = "float"
    Config = FloatConfig
    trains_quantized = False

    def transform(self, base: optax.GradientTransformation, run: RunInfo):
        return base

    def formats(self, trainable, opt_state):
        return self.policy().init(trainable)
