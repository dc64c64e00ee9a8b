"""``gdrq``: group-based distribution reshaping (Scale-Clip) with learned group scales.

Yu et al. 2019, arXiv 1908.01477 (only the abstract is known; the conventions are those of
:mod:`symog_jax.quantizers.gdrq`, whose docstring lists every choice and its reason). Each
conv/dense kernel's output channels are split into ``groups`` groups (``grouping``:
``"contiguous"``, the default because the assignment is fixed and free to store, or ``"norm"``);
every group is clipped at ``clip_k * mean|W_g|`` (``scale_clip``; else at ``max|W_g|``;
``clip_k`` unset: the Gaussian MSE-optimal multiple for ``bits``,
:data:`~symog_jax.quantizers.gdrq.GAUSSIAN_CLIP_K`; runs before this default used 2.0),
recomputed from the current weights at every step, then rounded uniformly to ``bits``-bit
symmetric codes ``-(2**(bits-1)-1)..2**(bits-1)-1`` (straight-through, the clip's gradient
inside the range only) and multiplied by the group's learned scale ``alpha_g``.

The scales are this method's trainable variables, shape ``(groups,)`` per quantized kernel,
initialised to the group's step ``clip / (2**(bits-1)-1)``, trained by the run's optimizer
without weight decay and kept ``>= 1e-8`` by a projection (SYQ's ``keep_scales_positive``).
A ``groups`` that does not divide a layer's output channels is refused when the variables are
created (before training), naming the layer. Activations are quantized by the trainer's
``act_*`` settings (calibrated power-of-two steps); the paper's activation Scale-Clip is not
implemented. ``finalize`` returns int32 codes and a :class:`GDRQFormat` per kernel, with
``params == codes * format.step_for(ndim)`` exactly (see
:func:`~symog_jax.quantizers.gdrq.fold_group_scales` for deploying them with integer kernels).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import optax

from symog_jax.methods.base import (Method, MethodConfig, RunInfo, check_choice, check_int,
                                    check_number, field, register)
from symog_jax.methods.scaled_kernels import (formats_of_selected, leaf_at, map_with_scales,
                                              selected_kernels, set_leaf)
from symog_jax.methods.syq import MIN_SCALE, keep_scales_positive
from symog_jax.quantizers.gdrq import (GROUPINGS, GDRQFormat, channel_scales,
                                       check_groups_divide, default_clip_k, gdrq_quantize,
                                       group_assignment, group_clip, group_steps)
from symog_jax.quantizers.hard_quantize import HardQuantized, hard_quantize


@dataclasses.dataclass(frozen=True)
class GDRQConfig(MethodConfig):
    """GDRQ hyper-parameters (each one is a command-line flag).

    Example:
      >>> GDRQConfig(bits=4, groups=2).clip_k  # unset: the Gaussian MSE-optimal multiple
      3.101
      >>> GDRQConfig(bits=4, clip_k=2.0).clip_k
      2.0
    """
    bits: int = field(2, "weight bits, 2..8 (symmetric codes -(2^(b-1)-1)..2^(b-1)-1)")
    groups: int = field(4, "groups of output channels per conv/dense layer, each with its own "
                           "clip and learned scale; must divide every quantized layer's channels")
    clip_k: float | None = field(None, "Scale-Clip: clip each group at clip_k * mean|W_g|; "
                                       "unset: the MSE-optimal multiple for Gaussian weights "
                                       "at --bits (1.534 at 2 bits, 3.101 at 4 bits)", type=float)
    scale_clip: bool = field(True, "clip at clip_k * mean|W_g| (else at max|W_g|: plain "
                                   "uniform quantization of the full range)")
    grouping: str = field("contiguous", "how filters form groups: contiguous channel blocks, or "
                                        "by L2 norm (recomputed from the current weights)",
                          choices=GROUPINGS)
    float_first_last: bool = field(False, "keep the first and last conv/dense layer in float")

    def __post_init__(self):
        # Resolve the bit-dependent default here, so config.json records the clip used.
        if self.clip_k is None and isinstance(self.bits, int) and 2 <= self.bits <= 8:
            object.__setattr__(self, "clip_k", default_clip_k(self.bits))
        super().__post_init__()

    def problems(self) -> list[str]:
        problems = super().problems()
        check_int(problems, "bits", self.bits, 2, 8)
        check_int(problems, "groups", self.groups, 1, None)
        check_number(problems, "clip_k", self.clip_k, 0, None, lo_open=True)
        if not isinstance(self.scale_clip, bool):
            problems.append(f"scale_clip must be a bool, got {self.scale_clip!r}")
        check_choice(problems, "grouping", self.grouping, GROUPINGS)
        if not isinstance(self.float_first_last, bool):
            problems.append(f"float_first_last must be a bool, got {self.float_first_last!r}")
        return problems

    def max_weight_bits(self) -> int:
        return self.bits


@register
class GDRQ(Method):
    """Group-wise Scale-Clip, uniform b-bit codes, learned group scales (straight-through)."""

    name = "gdrq"
    Config = GDRQConfig

    def describe(self) -> str:
        c = self.config
        clip = f"k{c.clip_k:g}" if c.scale_clip else "noclip"
        norm = "-norm" if c.grouping == "norm" else ""
        return f"gdrq-{c.bits}bit-g{c.groups}-{clip}{norm}"

    def _kw(self) -> dict:
        c = self.config
        return dict(bits=c.bits, clip_k=c.clip_k, scale_clip=c.scale_clip, grouping=c.grouping)

    def _selected(self, params) -> dict[str, list[str]]:
        """``{path: names}`` of the kernels GDRQ quantizes; checks that the groups divide them."""
        def groups_divide(path, kernel):
            check_groups_divide(np.shape(kernel), self.config.groups,
                                path.rsplit("/", 1)[0] or path)
        return selected_kernels(params, self.run, self.config.float_first_last, "gdrq",
                                check=groups_divide)

    def init_variables(self, params) -> dict:
        scales: dict = {}
        for path, names in self._selected(params).items():
            steps, _ = group_steps(leaf_at(params, names), groups=self.config.groups, **self._kw())
            set_leaf(scales, names, jnp.maximum(steps, MIN_SCALE))
        return {"scales": scales}

    def transform(self, base: optax.GradientTransformation, run: RunInfo):
        return optax.chain(base, keep_scales_positive())

    def train_params(self, trainable, opt_state):
        return map_with_scales(lambda w, a: gdrq_quantize(w, a, **self._kw()),
                               trainable["params"], trainable["method"]["scales"],
                               self._selected(trainable["params"]))

    def quantized_params(self, trainable, opt_state):
        return self.train_params(trainable, opt_state)

    def finalize(self, trainable, opt_state) -> HardQuantized:
        c = self.config

        def fmt(w, alpha):
            group_of = group_assignment(w, c.groups, c.grouping)
            clip = group_clip(w, group_of, c.groups, c.clip_k, c.scale_clip)
            scale = channel_scales(alpha, group_of, c.bits)
            return GDRQFormat(c.bits, np.asarray(scale, np.float32), np.asarray(group_of),
                              c.groups, c.grouping, np.asarray(clip, np.float32))
        params = trainable["params"]
        formats = formats_of_selected(fmt, params, trainable["method"]["scales"],
                                      self._selected(params))
        return hard_quantize(params, formats)


__all__ = ["GDRQ", "GDRQConfig", "GDRQFormat"]
