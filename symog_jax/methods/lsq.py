"""``lsq``: Learned Step Size Quantization of the weights (Esser et al., ICLR 2020).

Every quantized conv/dense kernel ``v`` is replaced in the forward pass by
``v_hat = round(clip(v / s, -Q_P, Q_P)) * s`` with ``Q_P = 2**(bits-1) - 1`` (signed symmetric
codes, as the other fixed-point methods; 2 bits give ternary ``{-s, 0, s}``), where the step
``s`` is a trainable variable of this method, one per kernel (``granularity="tensor"``, the
paper's) or one per output channel (``"channel"``). The math is
:mod:`symog_jax.quantizers.lsq`:

* the step's gradient is the paper's eq. 3, ``d v_hat / d s = round(v/s) - v/s`` inside the
  range and ``-Q_P`` / ``Q_P`` at the clipped ends; ``v`` passes straight through inside the
  range (0 outside);
* the step's gradient is scaled by ``g = 1 / sqrt(N_w * Q_P)`` (``grad_scale``; ``N_w``: the
  weights sharing the step) with the paper's ``s*g - stop(s*g) + stop(s)``;
* the step starts at ``2 * mean|v| / sqrt(Q_P)`` of the weights it covers, from the weights the
  run starts with (e.g. a float start);
* ``power_of_two`` (not in LSQ; TQT's, Jain et al. 2020): the trainable variable is
  ``log2(s)``, used as ``s = 2**round(log2 s)`` with the rounding straight-through, so the
  result is a :class:`~symog_jax.numerics.formats.FixedPointFormat` per kernel (per-channel
  ``frac_bits`` for ``"channel"``) and exports as fixed point. The gradient scale acts on
  ``log2(s)``.

The steps are trained by the run's optimizer without weight decay; a free step is kept
``>= 1e-8`` by a projection (SYQ's ``keep_scales_positive``; LSQ itself has none) and used with
its float32 mantissa rounded so that ``code * step`` is exact (see the quantizer module).

What this is not: the paper quantizes activations with LSQ too (unsigned codes, its own
learned step) and keeps the first and last layers at 8 bits; here only the weights are LSQ's
(activations follow the trainer's ``act_*`` settings), and the first/last layers are quantized
like the others unless ``float_first_last``. The paper's two's-complement range ``-2**(b-1) ..
2**(b-1)-1`` is replaced by the symmetric one. ``finalize`` gives int32 codes and, per kernel, a
``FixedPointFormat`` (``power_of_two``) or a ``ScaledFormat`` recorded as kind ``"lsq"`` (free
float32 steps, one per tensor or output channel), with
``params == codes * format.step_for(ndim)`` exactly.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from symog_jax.methods.base import (Method, MethodConfig, RunInfo, check_choice, check_int,
                                    field, register)
from symog_jax.methods.scaled_kernels import (leaf_at, map_with_scales, selected_kernels,
                                              set_leaf)
from symog_jax.methods.syq import keep_scales_positive
from symog_jax.numerics.formats import FixedPointFormat
from symog_jax.quantizers.lsq import (GRANULARITIES, MIN_STEP, code_max, grad_scale_factor,
                                      init_step, learned_step, lsq_quantize,
                                      weights_per_step)
from symog_jax.quantizers.masks import path_str
from symog_jax.quantizers.hard_quantize import HardQuantized, hard_quantize
from symog_jax.quantizers.scaled import ScaledFormat

__all__ = ["LSQ", "LSQConfig", "step_format"]


@dataclasses.dataclass(frozen=True)
class LSQConfig(MethodConfig):
    """LSQ hyper-parameters (each one is a command-line flag).

    Example:
      >>> LSQConfig(bits=3, granularity="channel").max_weight_bits()
      3
      >>> LSQConfig(granularity="pixel")
      Traceback (most recent call last):
      ...
      ValueError: LSQConfig: granularity must be one of ('tensor', 'channel'), got 'pixel'
    """
    bits: int = field(2, "weight bits, 2..8 (symmetric codes -(2^(b-1)-1)..2^(b-1)-1)")
    granularity: str = field("tensor", "one learned step per tensor or per output channel",
                             choices=GRANULARITIES)
    power_of_two: bool = field(False, "learn log2 of the step, rounded straight-through, so "
                                      "steps are powers of two and export as fixed point")
    grad_scale: bool = field(True, "scale the step's gradient by 1/sqrt(N_w * Q_P) (LSQ)")
    float_first_last: bool = field(False, "keep the first and last conv/dense layer in float")

    def problems(self) -> list[str]:
        problems = super().problems()
        check_int(problems, "bits", self.bits, 2, 8)
        check_choice(problems, "granularity", self.granularity, GRANULARITIES)
        for name in ("power_of_two", "grad_scale", "float_first_last"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be a bool, got {getattr(self, name)!r}")
        return problems

    def max_weight_bits(self) -> int:
        return self.bits


def step_format(bits: int, step: np.ndarray, granularity: str, power_of_two: bool):
    """The format of a kernel quantized with the concrete ``step`` (shape ``(1, ..., 1, C)``).

    ``power_of_two``: a :class:`FixedPointFormat` with ``frac_bits = -log2(step)`` (an int per
    tensor, a tuple per channel); else a ``ScaledFormat`` (record kind ``"lsq"``). (The one
    place that builds LSQ's formats.)

    Example:
      >>> step_format(2, np.array([[0.25, 2.0]], np.float32), "channel", True)
      FixedPointFormat(bits=2, frac_bits=(2, -1), symmetric)
    """
    flat = np.asarray(step, np.float32).reshape(-1)
    if not power_of_two:
        return ScaledFormat(bits, -code_max(bits), code_max(bits), flat,
                            {"kind": "lsq", "granularity": granularity})
    frac_bits = -np.log2(flat.astype(np.float64))
    if not np.all(frac_bits == np.round(frac_bits)):
        raise ValueError(f"power-of-two steps expected, got {flat.tolist()}")
    frac_bits = frac_bits.astype(np.int64)
    return FixedPointFormat(bits, int(frac_bits[0]) if granularity == "tensor"
                            else tuple(int(f) for f in frac_bits), channel_axis=-1)


@register
class LSQ(Method):
    """Learned step size per tensor or output channel (LSQ gradient, scale and init)."""

    name = "lsq"
    Config = LSQConfig

    @property
    def _key(self) -> str:
        """Where the learned variables live in ``trainable["method"]``."""
        return "log2_steps" if self.config.power_of_two else "steps"

    def describe(self) -> str:
        c = self.config
        return (f"lsq-{c.bits}bit" + ("-channel" if c.granularity == "channel" else "")
                + ("-pow2" if c.power_of_two else "") + ("" if c.grad_scale else "-nogs"))

    def _selected(self, params) -> dict[str, list[str]]:
        """``{path: names}`` of the kernels LSQ quantizes (paths relative to ``params``)."""
        return selected_kernels(params, self.run, self.config.float_first_last, "lsq")

    def init_variables(self, params) -> dict:
        c = self.config
        variables: dict = {}
        for names in self._selected(params).values():
            s0 = init_step(leaf_at(params, names), c.bits, c.granularity)
            set_leaf(variables, names, jnp.log2(s0) if c.power_of_two else s0)
        return {self._key: variables}

    def transform(self, base: optax.GradientTransformation, run: RunInfo):
        if self.config.power_of_two:
            return base                 # log2 steps are unconstrained
        return optax.chain(base, keep_scales_positive(MIN_STEP))

    def _step(self, kernel, variable) -> jax.Array:
        """The step of ``kernel`` from its learned variable (gradient-scaled when asked)."""
        c = self.config
        g = (grad_scale_factor(weights_per_step(np.shape(kernel), c.granularity), c.bits)
             if c.grad_scale else 1.0)
        return learned_step(variable, g, c.bits, power_of_two=c.power_of_two)

    def train_params(self, trainable, opt_state):
        bits = self.config.bits
        return map_with_scales(lambda w, v: lsq_quantize(w, self._step(w, v), bits),
                               trainable["params"], trainable["method"][self._key],
                               self._selected(trainable["params"]))

    def quantized_params(self, trainable, opt_state):
        return self.train_params(trainable, opt_state)

    def weight_formats(self, trainable):
        """The format of every parameter leaf (``None``: not quantized), from the current steps."""
        c = self.config
        selected = self._selected(trainable["params"])
        variables = trainable["method"][self._key]

        def visit(p, w):
            names = selected.get(path_str(p))
            if names is None:
                return None
            step = np.asarray(self._step(w, leaf_at(variables, names)))
            return step_format(c.bits, step, c.granularity, c.power_of_two)
        return jax.tree_util.tree_map_with_path(visit, trainable["params"])

    def finalize(self, trainable, opt_state) -> HardQuantized:
        return hard_quantize(trainable["params"], self.weight_formats(trainable))
