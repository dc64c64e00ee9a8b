"""Shared pieces of the methods that round to power-of-two fixed-point formats."""

from __future__ import annotations

import dataclasses

from symog_jax.export.report import HardQuantized, hard_quantize
from symog_jax.methods.base import (Method, MethodConfig, check_int, field,
                                    quantized_kernel_mask)
from symog_jax.numerics.formats import MAX_BITS
from symog_jax.numerics.rounding import quantize
from symog_jax.quantizers.policy import FormatPolicy, find_formats, map_quantized


@dataclasses.dataclass(frozen=True)
class FixedPointConfig(MethodConfig):
    """Fields shared by the fixed-point methods."""
    bits: int = field(2, "weight bit-width N (symmetric levels; 2 gives {-step, 0, +step})")
    per_channel: bool = field(False, "one power-of-two step per output channel, not per layer")
    float_first_last: bool = field(False, "keep the first and last conv/dense layer in float")

    def problems(self) -> list[str]:
        problems = super().problems()
        check_int(problems, "bits", self.bits, 2, MAX_BITS)
        return problems


class FixedPointMethod(Method):
    """A method whose result is per-leaf :class:`FixedPointFormat`\\ s over model kernels."""

    config: FixedPointConfig

    def policy(self, **kwargs) -> FormatPolicy:
        """The format policy over the trainable tree (kernels under ``params/``)."""
        return FormatPolicy(self.config.bits, per_channel=self.config.per_channel,
                            mask=quantized_kernel_mask(self.run, self.config.float_first_last),
                            **kwargs)

    def formats(self, trainable, opt_state):
        """The formats tree over the trainable tree (default: the one in the optimizer state)."""
        return find_formats(opt_state)

    def quantized_params(self, trainable, opt_state):
        formats = self.formats(trainable, opt_state)["params"]
        return map_quantized(lambda f, w: quantize(w, f), formats, trainable["params"])

    def finalize(self, trainable, opt_state) -> HardQuantized:
        return hard_quantize(trainable["params"], self.formats(trainable, opt_state)["params"])
