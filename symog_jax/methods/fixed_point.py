"""Shared pieces of the methods that round to power-of-two fixed-point formats.

**Per-layer bit-widths.** ``bits_per_layer`` gives some (or all) layers their own bit-width; the
others keep ``bits``. It is either inline, ``"conv1=8,fc1=4"``, or the path of a JSON file
``{"conv1/kernel": 8, "fc1/kernel": 4}`` (what ``python -m experiments.allocate_bits`` writes).
A key is a layer's module path (``conv1``), a kernel leaf path (``conv1/kernel``) or a module
prefix covering several layers (``block1``), as the paths of ``variables["params"]`` are written;
a leading ``params/`` is accepted. The config stores the parsed table in the canonical inline
form (``"conv1/kernel=8,fc1/kernel=4"``), so a run's ``config.json`` does not depend on the file
and resuming with a changed file is refused. Syntax, bit range and the file are checked when the
config is created; the layer names when the method is built for a model (the trainer knows the
layers then).

``first_last_bits`` gives the first and the last conv/dense layer (in call order, whatever the
model calls them) their own bit-width, e.g. 8: the usual deployment choice, since the first
layer sees raw pixels through few weights and the last one decides the classes. The other
layers keep ``bits`` (or their ``bits_per_layer`` entry, which must not name those two).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from symog_jax.methods.base import (Method, MethodConfig, RunInfo, check_int, field, model_path,
                                    quantized_kernel_mask)
from symog_jax.numerics.formats import MAX_BITS
from symog_jax.numerics.rounding import quantize
from symog_jax.quantizers.bit_allocation import bits_policy
from symog_jax.quantizers.hard_quantize import HardQuantized, hard_quantize
from symog_jax.quantizers.layer_bits import format_layer_bits, parse_layer_bits
from symog_jax.quantizers.policy import FormatPolicy, find_formats, map_quantized

#: Smallest bit-width of a symmetric fixed-point format (1 bit would hold only 0).
MIN_BITS = 2


def parse_bits_per_layer(spec: Any) -> dict[str, int]:
    """``{path: bits}`` from an inline spec ``"conv1=8,fc1=4"`` or a JSON file's path.

    Keys lose a leading ``params/`` and surrounding ``/``; order is kept.

    Raises:
      ValueError (one line): not a string, an empty spec, a missing or unreadable file, JSON
        that is not an object of integers, a malformed or repeated entry, or bits outside
        ``2..24``.

    Example:
      >>> parse_bits_per_layer("conv1=8, params/fc1/kernel=4")
      {'conv1': 8, 'fc1/kernel': 4}
      >>> parse_bits_per_layer("conv1=1")
      Traceback (most recent call last):
      ...
      ValueError: bits_per_layer: 'conv1' has 1 bits; each must be an integer in [2, 24]
    """
    return parse_layer_bits(spec, "bits_per_layer", MIN_BITS, MAX_BITS,
                            normalize_key=_drop_params_prefix)


def _drop_params_prefix(name: str) -> str:
    return name[len("params/"):].strip("/") if name.startswith("params/") else name


#: The canonical inline form of a ``{path: bits}`` table: ``'conv1/kernel=8,fc1=4'``.
format_bits_per_layer = format_layer_bits


@dataclasses.dataclass(frozen=True)
class FixedPointConfig(MethodConfig):
    """Fields shared by the fixed-point methods."""
    bits: int = field(2, "weight bit-width N (symmetric levels; 2 gives {-step, 0, +step})")
    per_channel: bool = field(False, "one power-of-two step per output channel, not per layer")
    float_first_last: bool = field(False, "keep the first and last conv/dense layer in float")
    first_last_bits: Any = field(None, "bit-width of the first and last conv/dense layer "
                                       "(e.g. 8; the others keep bits); None: no exception",
                                 type=int)
    bits_per_layer: Any = field(
        None, "per-layer weight bits overriding --bits: 'conv1=8,fc1=4' or a JSON file "
              "{layer path: bits} (as experiments.allocate_bits writes); stored inline in "
              "config.json", type=str)

    def __post_init__(self):
        spec = self.bits_per_layer
        if spec is not None:
            try:
                object.__setattr__(self, "bits_per_layer",
                                   format_bits_per_layer(parse_bits_per_layer(spec)))
            except ValueError as e:
                raise ValueError(f"{type(self).__name__}: {e}") from None
        super().__post_init__()

    def problems(self) -> list[str]:
        problems = super().problems()
        check_int(problems, "bits", self.bits, MIN_BITS, MAX_BITS)
        if self.first_last_bits is not None:
            check_int(problems, "first_last_bits", self.first_last_bits, MIN_BITS, MAX_BITS)
            if self.float_first_last is True:
                problems.append("first_last_bits and float_first_last both set the first and "
                                "last layer: give one")
        return problems

    def layer_bits(self) -> dict[str, int]:
        """The ``bits_per_layer`` table (``{}``: every layer has ``bits``)."""
        return {} if self.bits_per_layer is None else parse_bits_per_layer(self.bits_per_layer)

    def max_weight_bits(self) -> int:
        first_last = [] if self.first_last_bits is None else [self.first_last_bits]
        return max([self.bits, *first_last, *self.layer_bits().values()])


def _check_layer_keys(table: dict[str, int], run_layers: tuple[str, ...],
                      reserved: dict[str, str]) -> None:
    """Every key names a layer, a layer's kernel, or a prefix of layers; none covers a layer of
    ``reserved`` (``{layer: the option that sets it}``)."""
    for key in table:
        hit = [layer for layer in run_layers
               if key in (layer, layer + "/kernel") or layer.startswith(key + "/")]
        if not hit:
            raise ValueError(f"bits_per_layer: {key!r} is not a conv/dense layer of the model; "
                             f"its layers: {', '.join(run_layers)}")
        kept = [layer for layer in hit if layer in reserved]
        if kept:
            raise ValueError(f"bits_per_layer: {key!r} covers layer {kept[0]!r}, which "
                             f"{reserved[kept[0]]}")


class FixedPointMethod(Method):
    """A method whose result is per-leaf :class:`FixedPointFormat`\\ s over model kernels."""

    config: FixedPointConfig

    def bits(self):
        """``bits`` (an int) or, with ``bits_per_layer``, the per-leaf callable (paths of the
        trainable tree, ``params/...``, or of a plain parameter tree; layers not listed get
        ``bits``).

        Raises:
          ValueError: a ``bits_per_layer`` key that is no conv/dense layer of the run's model,
            or that covers a layer kept in float or given ``first_last_bits`` (checked when the
            run's layer order is known); ``first_last_bits`` without a layer order (a run
            built without a model) or with fewer than 3 layers.
        """
        table = self.config.layer_bits()
        first_last = self.config.first_last_bits
        if not table and first_last is None:
            return self.config.bits
        order = self.run.layer_order
        if first_last is not None and len(order) < 3:
            raise ValueError(f"first_last_bits needs a model of at least 3 conv/dense layers "
                             f"(the run's layers: {', '.join(order) or 'none known'})")
        if order:       # the config refuses float_first_last together with first_last_bits
            why = ("float_first_last keeps in float" if self.config.float_first_last else
                   None if first_last is None else f"first_last_bits sets to {first_last} bits")
            _check_layer_keys(table, order,
                              dict.fromkeys((order[0], order[-1]), why) if why else {})
        if first_last is not None:
            table = {**table, order[0]: first_last, order[-1]: first_last}
        by_model_path = bits_policy(table, default=self.config.bits)

        def bits(path: str, leaf) -> int:
            # the trainable tree's 'params/conv1/kernel', or a plain parameter tree's path
            inner = model_path(path)
            return by_model_path(path if inner is None else inner, leaf)
        return bits

    def policy(self, **kwargs) -> FormatPolicy:
        """The format policy over the trainable tree (kernels under ``params/``)."""
        return FormatPolicy(self.bits(), per_channel=self.config.per_channel,
                            mask=quantized_kernel_mask(self.run, self.config.float_first_last),
                            **kwargs)

    def policy_reestimating_every(self, epochs: int, run: RunInfo) -> FormatPolicy:
        """:meth:`policy` that re-chooses the formats every ``epochs`` epochs of ``run``
        (0: never)."""
        return self.policy(reestimate_every=epochs * run.steps_per_epoch or None)

    def formats(self, trainable, opt_state):
        """The formats tree over the trainable tree (default: the one in the optimizer state)."""
        return find_formats(opt_state)

    def quantized_params(self, trainable, opt_state):
        formats = self.formats(trainable, opt_state)["params"]
        return map_quantized(lambda f, w: quantize(w, f), formats, trainable["params"])

    def finalize(self, trainable, opt_state) -> HardQuantized:
        return hard_quantize(trainable["params"], self.formats(trainable, opt_state)["params"])

    def describe(self) -> str:
        """``'ste-2bit'``; with ``first_last_bits=8`` ``'ste-2bit-fl8'``; with per-layer bits
        ``'ste-mixed3-6bit'`` (listed bit range)."""
        table = self.config.layer_bits()
        if not table:
            tag = super().describe()
            first_last = self.config.first_last_bits
            return tag if first_last is None else f"{tag}-fl{first_last}"
        listed = [*table.values(), *([] if self.config.first_last_bits is None
                                     else [self.config.first_last_bits])]
        lo, hi = min(listed), max(listed)
        return f"{self.name}-mixed{lo}-{hi}bit" if lo != hi else f"{self.name}-mixed{lo}bit"
