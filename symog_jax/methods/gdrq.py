"""``gdrq``: group-based distribution reshaping (Scale-Clip) with learned group scales.

Yu et al. 2019, arXiv 1908.01477 (only the abstract is known; the conventions are those of
:mod:`symog_jax.quantizers.gdrq`, whose docstring lists every choice and its reason). Each
conv/dense kernel's output channels are split into ``groups`` groups (``grouping``:
``"contiguous"``, the default because the assignment is fixed and free to store, or ``"norm"``);
every group is clipped at ``clip_k * mean|W_g|`` (``scale_clip``; else at ``max|W_g|``),
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
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from symog_jax.export.report import HardQuantized, LayerReport
from symog_jax.methods.base import (Method, MethodConfig, RunInfo, check_choice, check_int,
                                    check_number, field, register)
from symog_jax.methods.scaled_kernels import (leaf_at, map_with_scales, selected_kernels,
                                              set_leaf)
from symog_jax.methods.syq import MIN_SCALE, keep_scales_positive
from symog_jax.numerics.calibration import sqnr_db
from symog_jax.quantizers.gdrq import (GROUPINGS, channel_scales, check_groups_divide, code_max,
                                       gdrq_codes, gdrq_quantize, group_steps)
from symog_jax.quantizers.masks import path_str


@dataclasses.dataclass(frozen=True)
class GDRQConfig(MethodConfig):
    """GDRQ hyper-parameters (each one is a command-line flag).

    Example:
      >>> GDRQConfig(bits=4, groups=2).clip_k
      2.0
    """
    bits: int = field(2, "weight bits, 2..8 (symmetric codes -(2^(b-1)-1)..2^(b-1)-1)")
    groups: int = field(4, "groups of output channels per conv/dense layer, each with its own "
                           "clip and learned scale; must divide every quantized layer's channels")
    clip_k: float = field(2.0, "Scale-Clip: clip each group at clip_k * mean|W_g|")
    scale_clip: bool = field(True, "clip at clip_k * mean|W_g| (else at max|W_g|: plain "
                                   "uniform quantization of the full range)")
    grouping: str = field("contiguous", "how filters form groups: contiguous channel blocks, or "
                                        "by L2 norm (recomputed from the current weights)",
                          choices=GROUPINGS)
    float_first_last: bool = field(False, "keep the first and last conv/dense layer in float")

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


@dataclasses.dataclass(frozen=True, eq=False)
class GDRQFormat:
    """What a GDRQ-quantized kernel is: symmetric integer codes times a scale per filter group.

    Attributes:
      bits: weight bits (codes ``-(2**(bits-1)-1)..2**(bits-1)-1``).
      scale: ``float32 (cout,)`` numpy array, the scale of each output channel
        (``alpha`` of its group, mantissa-rounded so ``code * scale`` is exact in float32).
      group_of: ``int (cout,)`` numpy array, the group of each output channel.
      groups: number of groups ``G``.
      grouping: ``"contiguous"`` or ``"norm"``.
      clip: ``float32 (G,)`` numpy array, the clip ``t_g`` the codes were computed with.

    Example:
      >>> fmt = GDRQFormat(2, np.array([0.5, 0.5, 2.0, 2.0], np.float32), np.array([0, 0, 1, 1]),
      ...                  2, "contiguous", np.array([1.0, 4.0], np.float32))
      >>> fmt.code_min, fmt.code_max, fmt.step_for(4).shape, fmt.label(), fmt.overhead_bits
      (-1, 1, (1, 1, 1, 4), 'g2-contig', 64)
    """
    bits: int
    scale: np.ndarray
    group_of: np.ndarray
    groups: int
    grouping: str
    clip: np.ndarray

    @property
    def code_max(self) -> int:
        return code_max(self.bits)

    @property
    def code_min(self) -> int:
        return -code_max(self.bits)

    def step_for(self, x_ndim: int, dtype=jnp.float32) -> jax.Array:
        """The per-output-channel scale, shape ``(1, ..., 1, cout)`` of rank ``x_ndim``."""
        return jnp.asarray(self.scale, dtype).reshape((1,) * (x_ndim - 1) + (-1,))

    def group_scales(self) -> np.ndarray:
        """``float32 (G,)``: the scale of each group."""
        out = np.zeros(self.groups, np.float32)
        out[self.group_of] = self.scale
        return out

    def as_dict(self) -> dict:
        return {"kind": "gdrq", "bits": self.bits, "groups": self.groups,
                "grouping": self.grouping, "group_scales": self.group_scales().tolist(),
                "clip": np.asarray(self.clip, np.float64).tolist(),
                "group_of": np.asarray(self.group_of).tolist()}

    @property
    def overhead_bits(self) -> int:
        """float32 group scales, plus the group of each filter where it is not implied."""
        extra = 0
        if self.grouping != "contiguous" and self.groups > 1:
            extra = int(self.scale.size) * math.ceil(math.log2(self.groups))
        return 32 * self.groups + extra

    def label(self) -> str:
        return f"g{self.groups}-{self.grouping[:6]}"


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
            w = jnp.asarray(w)
            steps, group_of = group_steps(w, groups=c.groups, **self._kw())
            code = gdrq_codes(w, groups=c.groups, **self._kw())
            scale = np.asarray(channel_scales(leaf_at(scales, selected[path]), group_of, c.bits),
                               np.float32)
            fmt = GDRQFormat(c.bits, scale, np.asarray(group_of), c.groups, c.grouping,
                             np.asarray(steps * code_max(c.bits), np.float32))
            q = (code.astype(jnp.float32) * fmt.step_for(w.ndim)).astype(w.dtype)
            # distance to the nearest level in units of the group's step (before clipping)
            step_c = np.asarray(steps, np.float32)[np.asarray(group_of)]
            step_c = np.where(step_c > 0, step_c, 1.0)
            x = np.asarray(w, np.float32) / step_c
            n = code_max(c.bits)
            err = np.abs(np.clip(x, -n, n) - np.asarray(code))
            rounded.append(q)
            codes.append(code)
            formats.append(fmt)
            report.append(LayerReport(
                path=path, shape=tuple(w.shape), format=fmt,
                near_level_fraction=float(np.mean(err <= 0.25)),
                sqnr_db=float(sqnr_db(w.astype(jnp.float32), q.astype(jnp.float32))),
                max_abs_error_in_steps=float(np.max(np.abs(x - np.asarray(code))))))
        return HardQuantized(treedef.unflatten(rounded), treedef.unflatten(codes),
                             treedef.unflatten(formats), report)


__all__ = ["GDRQ", "GDRQConfig", "GDRQFormat"]
