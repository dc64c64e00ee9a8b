"""``syq``: SYQ binary/ternary weights with learned symmetric scales per group.

Faraone et al., CVPR 2018. The forward pass uses ``Q(W) = sign(W) * 1[|W| > eta * max|W|] *
alpha_g`` (:func:`~symog_jax.quantizers.syq.syq_quantize`; ``eta = 0``: binary); the scales
``alpha`` are this method's trainable variables, one per layer, output channel or kernel
position (``granularity``), initialised to the mean ``|W|`` of their group, trained by the run's
optimizer (without weight decay) and kept positive by a projection. Activations are quantized
by the trainer's ``acts`` settings (the SYQ paper's choice is ``acts.range='unit'``).

The first and last conv/dense layers stay float by default (``float_first_last=True``), as in
the reference code (julianfaraone/SYQ); such a run exports its integer codes and scales but has
no integer-only program (:mod:`symog_jax.export.integer_inference` refuses it in one line,
naming the float layer): pass ``float_first_last=False`` for that. Runs made before this default
(e.g. the RESULTS rows of 2026-11-26) quantized every layer.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from symog_jax.methods.base import (Method, MethodConfig, RunInfo, check_choice, check_number,
                                    field, register)
from symog_jax.methods.scaled_kernels import (formats_of_selected, leaf_at, map_with_scales,
                                              selected_kernels, set_leaf)
from symog_jax.quantizers.hard_quantize import HardQuantized, hard_quantize
from symog_jax.quantizers.syq import (GRANULARITIES, SYQFormat, init_syq_scales, syq_quantize,
                                      syq_threshold)

#: Smallest scale the projection allows: a scale at 0 would stop learning its group.
MIN_SCALE = 1e-8


@dataclasses.dataclass(frozen=True)
class SYQConfig(MethodConfig):
    eta: float = field(0.05, "ternary threshold eta * max|W| per layer, in [0, 1); "
                             "0 gives binary weights")
    granularity: str = field("pixel", "one learned scale per layer, output channel, kernel row "
                                      "(row: the reference's row-wise) or kernel position "
                                      "(pixel); dense layers: one, for row and pixel",
                             choices=GRANULARITIES)
    float_first_last: bool = field(True, "keep the first and last conv/dense layer in float "
                                         "(the reference code's choice; integer-only export "
                                         "needs false)")

    def problems(self) -> list[str]:
        problems = super().problems()
        check_number(problems, "eta", self.eta, 0, 1, hi_open=True)
        check_choice(problems, "granularity", self.granularity, GRANULARITIES)
        return problems


class PositiveScalesState(NamedTuple):
    """No state: :func:`keep_scales_positive` is a projection."""


def keep_scales_positive(minimum: float = MIN_SCALE) -> optax.GradientTransformation:
    """Edits the updates of the ``'method'`` subtree so that every scale stays ``>= minimum``."""

    def init_fn(trainable):
        return PositiveScalesState()

    def update_fn(updates, state, trainable=None):
        method_updates = jax.tree_util.tree_map(
            lambda u, a: jnp.maximum(a + u, minimum) - a, updates["method"], trainable["method"])
        return {**updates, "method": method_updates}, state

    return optax.GradientTransformation(init_fn, update_fn)


@register
class SYQ(Method):
    """Binary/ternary weights with learned scales per group (straight-through, SYQ rule)."""

    name = "syq"
    Config = SYQConfig

    @property
    def bits(self) -> int:
        return 1 if self.config.eta == 0 else 2

    def describe(self) -> str:
        kind = "binary" if self.bits == 1 else "ternary"
        return f"syq-{kind}-{self.config.granularity}"

    def _selected(self, params) -> dict[str, list[str]]:
        """``{path: names}`` of the kernels SYQ quantizes (paths relative to ``params``)."""
        return selected_kernels(params, self.run, self.config.float_first_last, "syq")

    def init_variables(self, params) -> dict:
        scales: dict = {}
        for path, names in self._selected(params).items():
            w = leaf_at(params, names)
            set_leaf(scales, names, init_syq_scales(w, self.config.granularity))
        return {"scales": scales}

    def transform(self, base: optax.GradientTransformation, run: RunInfo):
        return optax.chain(base, keep_scales_positive())

    def _map(self, fn, trainable):
        return map_with_scales(fn, trainable["params"], trainable["method"]["scales"],
                               self._selected(trainable["params"]))

    def train_params(self, trainable, opt_state):
        return self._map(lambda w, a: syq_quantize(w, a, self.config.eta), trainable)

    def quantized_params(self, trainable, opt_state):
        return self.train_params(trainable, opt_state)

    def finalize(self, trainable, opt_state) -> HardQuantized:
        eta, granularity = self.config.eta, self.config.granularity

        def fmt(w, alpha):
            return SYQFormat(self.bits, np.asarray(alpha, np.float32),
                             float(syq_threshold(w, eta)), granularity)
        params = trainable["params"]
        formats = formats_of_selected(fmt, params, trainable["method"]["scales"],
                                      self._selected(params))
        return hard_quantize(params, formats)
