"""``syq``: SYQ binary/ternary weights with learned symmetric scales per group.

Faraone et al., CVPR 2018. The forward pass uses ``Q(W) = sign(W) * 1[|W| > eta * max|W|] *
alpha_g`` (:func:`~symog_jax.quantizers.syq.syq_quantize`; ``eta = 0``: binary); the scales
``alpha`` are this method's trainable variables, one per layer, output channel or kernel
position (``granularity``), initialised to the mean ``|W|`` of their group, trained by the run's
optimizer (without weight decay) and kept positive by a projection. Activations are quantized
by the trainer's ``act_*`` settings (the SYQ paper's choice is ``act_range='unit'``).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from symog_jax.export.report import HardQuantized, LayerReport
from symog_jax.methods.base import (Method, MethodConfig, RunInfo, check_choice, check_number,
                                    field, register)
from symog_jax.methods.scaled_kernels import (leaf_at, map_with_scales, selected_kernels,
                                              set_leaf)
from symog_jax.numerics.calibration import sqnr_db
from symog_jax.quantizers.masks import path_str
from symog_jax.quantizers.syq import (GRANULARITIES, init_syq_scales, syq_codes, syq_quantize,
                                      syq_threshold)

#: Smallest scale the projection allows: a scale at 0 would stop learning its group.
MIN_SCALE = 1e-8


@dataclasses.dataclass(frozen=True)
class SYQConfig(MethodConfig):
    eta: float = field(0.05, "ternary threshold eta * max|W| per layer, in [0, 1); "
                             "0 gives binary weights")
    granularity: str = field("pixel", "one learned scale per layer, output channel (row) "
                                      "or kernel position (pixel; dense layers: one)",
                             choices=GRANULARITIES)
    float_first_last: bool = field(False, "keep the first and last conv/dense layer in float")

    def problems(self) -> list[str]:
        problems = super().problems()
        check_number(problems, "eta", self.eta, 0, 1, hi_open=True)
        check_choice(problems, "granularity", self.granularity, GRANULARITIES)
        return problems


@dataclasses.dataclass(frozen=True, eq=False)
class SYQFormat:
    """What a SYQ-quantized leaf is: codes in {-1, 0, 1} times a scale per group.

    Attributes:
      bits: 2 (ternary) or 1 (binary).
      scale: float32 numpy array broadcastable to the kernel (``alpha``).
      threshold: the layer's ``eta * max|W|``.
      granularity: ``'layer'``, ``'channel'`` or ``'pixel'``.
    """
    bits: int
    scale: np.ndarray
    threshold: float
    granularity: str

    code_min = -1
    code_max = 1

    def step_for(self, x_ndim: int, dtype=jnp.float32) -> jax.Array:
        """The scale, broadcastable against the kernel (the fixed-point formats' interface)."""
        return jnp.asarray(self.scale, dtype)

    def as_dict(self) -> dict:
        return {"kind": "syq", "bits": self.bits, "granularity": self.granularity,
                "threshold": self.threshold, "num_scales": int(self.scale.size),
                "scale_min": float(self.scale.min()), "scale_max": float(self.scale.max())}

    @property
    def overhead_bits(self) -> int:
        """Storage of the float32 scales."""
        return 32 * int(self.scale.size)

    def label(self) -> str:
        return f"{self.granularity[:5]}x{self.scale.size}"


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
        eta = self.config.eta
        selected = self._selected(trainable["params"])
        scales = trainable["method"]["scales"]
        leaves, treedef = jax.tree_util.tree_flatten_with_path(trainable["params"])
        rounded, codes, formats, report = [], [], [], []
        for p, w in leaves:
            path = path_str(p)
            if path not in selected:
                rounded.append(w)
                codes.append(None)
                formats.append(None)
                continue
            alpha = np.asarray(leaf_at(scales, selected[path]), np.float32)
            c = syq_codes(w, eta, dtype=jnp.int32)
            q = (c.astype(jnp.float32) * alpha).astype(jnp.asarray(w).dtype)
            fmt = SYQFormat(self.bits, alpha, float(syq_threshold(w, eta)),
                            self.config.granularity)
            err = jnp.abs(jnp.asarray(w, jnp.float32) - q) / alpha
            rounded.append(q)
            codes.append(c)
            formats.append(fmt)
            report.append(LayerReport(
                path=path, shape=tuple(np.shape(w)), format=fmt,
                near_level_fraction=float(jnp.mean(err <= 0.25)),
                sqnr_db=float(sqnr_db(jnp.asarray(w, jnp.float32), q)),
                max_abs_error_in_steps=float(jnp.max(err))))
        return HardQuantized(treedef.unflatten(rounded), treedef.unflatten(codes),
                             treedef.unflatten(formats), report)
