"""Fixed-point activation quantization for any Flax linen model, by method interception.

Nothing in the model is rewritten: :func:`quantize_activations` registers a Flax method
interceptor (:func:`flax.linen.intercept_methods`) that, for every ``nn.Conv`` / ``nn.Dense``
``__call__`` whose module path has a format, replaces the layer's *input* ``x`` by
``quantize_ste(x, fmt)``. The input of a Conv/Dense layer is the previous layer's activation
(after ReLU, pooling, BatchNorm, flattening, ...), so this quantizes exactly the tensors that a
fixed-point accelerator would feed its multipliers, whatever the model's code looks like.

Layers are named by their Flax module path joined with ``/`` (``context.module.path``):
``'conv1'`` for a named submodule of the top-level model, ``'Dense_0'`` for an auto-named one,
``'stage1_block1/conv1'`` inside a submodule.

Typical use::

    config = ActivationQuantConfig(bits=4)
    _, inputs = record_layer_inputs(lambda: model.apply(variables, x_calib, train=False))
    formats = calibrate_activation_formats(inputs, config)
    with quantize_activations(formats):
        logits = model.apply(variables, x, train=False)

Straight-through rounding (:func:`~symog_jax.numerics.rounding.quantize_ste` with its default
``pass_through="range"``): the forward pass rounds to the nearest level and saturates at the
format's range; the backward pass is the identity for inputs inside
``[fmt.min_value, fmt.max_value]`` and zero outside (where saturation makes the output constant).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import threading

import flax.linen as nn
import jax
from flax import nnx
import jax.numpy as jnp
import numpy as np

from symog_jax.numerics.calibration import best_frac_bits
from symog_jax.numerics.formats import FixedPointFormat, symmetric_format, unsigned_format
from symog_jax.numerics.rounding import quantize_ste
from symog_jax.quantizers.layer_bits import format_layer_bits, parse_layer_bits
from symog_jax.quantizers.pact import PACTRange

__all__ = [
    "ACTIVATION_RANGES",
    "LEARNED_RANGES",
    "LearnedRange",
    "POWER_OF_TWO_RANGES",
    "POW2_RANGE_LR",
    "fixed_point_formats",
    "MAX_ACTIVATION_BITS",
    "ActivationQuantConfig",
    "activation_format_report",
    "calibrate_activation_formats",
    "format_layer_bits",
    "layer_path",
    "learned_ranges",
    "parse_act_bits_per_layer",
    "quantize_activations",
    "record_layer_inputs",
]


class LearnedRange(NamedTuple):
    """What a learned activation range is: the two switches of :class:`~.pact.PACTRange`.

    ``power_of_two``: the clip sits on a power-of-two step (fixed point) and trains in log2;
    ``step_gradient``: in-range inputs add LSQ's rounding term to the clip's gradient.
    """

    power_of_two: bool
    step_gradient: bool


#: The ranges that train (:mod:`~symog_jax.quantizers.pact`), by name: the one place a learned
#: range's kind is written down.
LEARNED_RANGES = {
    "pact": LearnedRange(power_of_two=False, step_gradient=False),
    "pact-pow2": LearnedRange(power_of_two=True, step_gradient=False),
    "lsq-pow2": LearnedRange(power_of_two=True, step_gradient=True),
}
#: Supported activation ranges (see :class:`ActivationQuantConfig`).
ACTIVATION_RANGES = ("calibrated", "unit", *LEARNED_RANGES)
#: The learned ranges on a power-of-two step (fixed point), trained in log2.
POWER_OF_TWO_RANGES = tuple(name for name, kind in LEARNED_RANGES.items() if kind.power_of_two)
#: Default learning rate of power-of-two clips: Adam on ``log2(alpha)``, so up to about this
#: many log2 units per step (a clip moves to the next power of two after ~0.5 units).
POW2_RANGE_LR = 0.01
#: Largest supported activation bit-width.
MAX_ACTIVATION_BITS = 16


def parse_act_bits_per_layer(spec: Any, what: str = "act_bits_per_layer",
                             min_bits: int = 1, max_bits: int = MAX_ACTIVATION_BITS
                             ) -> dict[str, int]:
    """``{layer path: bits}`` from an inline spec ``"conv2=4,fc1=8"``, a JSON file's path,
    or a dict.

    The syntax of the weights' ``bits_per_layer``
    (:func:`~symog_jax.methods.fixed_point.parse_bits_per_layer`): a key is the ``/``-joined
    module path of the layer whose *input* is quantized (``'fc1'``, ``'block1/conv2'``) or a
    module prefix covering several layers (``'block1'``); a trailing ``/input`` (as
    ``python -m experiments.allocate_bits --allocate-activations`` names activations in its
    tables) is dropped. A file holds a JSON object ``{"conv2": 4, "fc1": 8}``. Order is kept.

    Args:
      spec: ``str`` (inline or a file's path) or a mapping ``{path: bits}``.
      what: the name used in error messages.
      min_bits, max_bits: the allowed bit range (default ``1..16``).

    Returns:
      ``{path: bits}`` (``path`` without surrounding ``/``), non-empty.

    Raises:
      ValueError (one line): not a string or mapping, an empty spec, a missing or unreadable
        file, JSON that is not an object, a malformed or repeated entry, bits outside the range.

    Example:
      >>> parse_act_bits_per_layer("conv2=4, fc1/input=8")
      {'conv2': 4, 'fc1': 8}
      >>> parse_act_bits_per_layer("fc1=0")
      Traceback (most recent call last):
      ...
      ValueError: act_bits_per_layer: 'fc1' has 0 bits; each must be an integer in [1, 16]
    """
    return parse_layer_bits(spec, what, min_bits, max_bits, normalize_key=_drop_input_suffix,
                            allow_mapping=True)


def _drop_input_suffix(name: str) -> str:
    if name.endswith("/input") or name == "input":
        return name[:-len("input")].rstrip("/")
    return name


# The layer types whose inputs are quantized. nn.Conv covers subclasses; ConvTranspose,
# ConvLocal, DenseGeneral and Einsum are deliberately not included (see the module docstring).
_QUANTIZED_LAYERS = (nn.Conv, nn.Dense)
#: Their Flax NNX counterparts (plain Python objects: no linen interceptor sees their calls).
_NNX_QUANTIZED_LAYERS = (nnx.Conv, nnx.Linear)


@dataclasses.dataclass(frozen=True)
class ActivationQuantConfig:
    """How to quantize the inputs of a model's Conv/Dense layers.

    Attributes:
      bits: bit-width of every quantized activation, 1..16; ``None`` keeps activations float
        (except the layers of ``bits_per_layer``).
      bits_per_layer: per-layer bit-widths overriding ``bits`` for the input of the layers
        named (or covered by a module prefix; the longest key wins): a dict ``{path: bits}``,
        an inline spec ``"conv2=4,fc1=8"`` or a JSON file's path
        (:func:`parse_act_bits_per_layer`); stored as a tuple of ``(path, bits)`` pairs.
        Layers not covered keep ``bits``. A key must match a recorded layer that is
        quantized (not the skipped first / last one); that is checked by
        :func:`calibrate_activation_formats`, when the model's layers are known.
      range: ``"calibrated"``: one power-of-two step per layer, chosen to minimise the squared
        rounding error on a calibration batch (unsigned format if that batch has no negative
        input, signed symmetric otherwise). ``"unit"``: activations are clipped to
        ``[0, 1 - 2**-bits]`` with step ``2**-bits`` (unsigned, ``frac_bits = bits``), the fixed
        range of DoReFa-Net / SYQ; negative inputs saturate to 0. ``"pact"``: a learned clip
        per layer (PACT, :mod:`~symog_jax.quantizers.pact`), started at the calibrated
        format's top level and trained with the network; ``"pact-pow2"``: the same with its
        step kept on a power of two (straight-through), so the learned range exports as fixed
        point; ``"lsq-pow2"``: as ``"pact-pow2"``, with LSQ's step gradient for the clip (the
        in-range rounding term too, which can shrink a clip; PACT's gradient only grows it).
        Layers whose calibration inputs are negative (a normalised image) keep their
        calibrated signed format.
      range_lr: learning rate of the learned ranges (peak of the run's cosine schedule).
        ``None``: ``"pact"`` clips train with the run's optimizer and learning rate, with
        weight decay (as PACT does); ``"pact-pow2"`` and ``"lsq-pow2"`` clips train with Adam
        on ``log2(alpha)`` (:func:`~symog_jax.quantizers.pact.log2_domain`, as TQT trains its
        thresholds) at :data:`POW2_RANGE_LR`, since a power-of-two clip changes only when its
        latent moves by a factor ``sqrt(2)``. Only for the :data:`LEARNED_RANGES`.
      skip_first: keep the first layer's input (the image) in float.
      skip_last: keep the last layer's input (the classifier's feature) in float too.
      input_bits: quantize the first layer's input (the normalised image) to this many bits,
        2..16, with a calibrated power-of-two step (signed symmetric where the calibration
        images have negative values, as normalised images do), whatever ``skip_first`` and
        ``bits`` say; ``None`` (default): ``skip_first`` decides. The point is
        deployment: with an image format the first layer's products are exact in float32 and
        in integers alike, so an integer-only program reproduces the model's first layer
        bit for bit (:mod:`symog_jax.export.integer_inference`).

    Raises:
      ValueError: one line naming the bad field (``bits``, ``bits_per_layer``, ``range``,
        ``skip_first``, ``skip_last``, ``input_bits``, ``range_lr``).

    Example:
      >>> from symog_jax.quantizers.activations import ActivationQuantConfig
      >>> ActivationQuantConfig(bits=4).enabled, ActivationQuantConfig().enabled
      (True, False)
      >>> c = ActivationQuantConfig(bits=8, bits_per_layer="fc1=4")
      >>> c.bits_per_layer, c.bits_for("fc1"), c.bits_for("conv2")
      ((('fc1', 4),), 4, 8)
      >>> ActivationQuantConfig(bits=0)
      Traceback (most recent call last):
      ...
      ValueError: ActivationQuantConfig.bits must be None or an integer in 1..16, got 0
    """

    bits: int | None = None
    range: str = "calibrated"
    skip_first: bool = True
    skip_last: bool = False
    bits_per_layer: Any = None
    input_bits: int | None = None
    range_lr: float | None = None

    def __post_init__(self):
        spec = self.bits_per_layer
        if spec is not None:
            if isinstance(spec, tuple) and all(isinstance(p, tuple) and len(p) == 2
                                               for p in spec):
                spec = dict(spec)
            if isinstance(spec, Mapping) and not spec:
                spec = None
            else:
                table = parse_act_bits_per_layer(spec, "ActivationQuantConfig.bits_per_layer")
                spec = tuple(table.items())
            object.__setattr__(self, "bits_per_layer", spec)
        for name, lo in (("bits", 1), ("input_bits", 2)):
            bits = getattr(self, name)
            if bits is None:
                continue
            if (isinstance(bits, bool) or not isinstance(bits, numbers.Integral)
                    or not lo <= int(bits) <= MAX_ACTIVATION_BITS):
                raise ValueError(f"ActivationQuantConfig.{name} must be None or an integer in "
                                 f"{lo}..{MAX_ACTIVATION_BITS}, got {bits!r}")
            object.__setattr__(self, name, int(bits))
        if self.range not in ACTIVATION_RANGES:
            raise ValueError(f"ActivationQuantConfig.range must be one of "
                             f"{', '.join(map(repr, ACTIVATION_RANGES))}, got {self.range!r}")
        if self.range_lr is not None:
            lr = self.range_lr
            if (isinstance(lr, bool) or not isinstance(lr, numbers.Real)
                    or not (math.isfinite(lr) and lr > 0)):
                raise ValueError(f"ActivationQuantConfig.range_lr must be None or a finite "
                                 f"number > 0, got {lr!r}")
            if self.range not in LEARNED_RANGES:
                raise ValueError(f"ActivationQuantConfig.range_lr is the learning rate of a "
                                 f"learned range; range {self.range!r} learns none (use "
                                 f"{' or '.join(map(repr, LEARNED_RANGES))})")
            object.__setattr__(self, "range_lr", float(lr))
        for name in ("skip_first", "skip_last"):
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"ActivationQuantConfig.{name} must be a bool, got {value!r}")
            object.__setattr__(self, name, bool(value))

    @property
    def enabled(self) -> bool:
        """True when some activations are quantized (``bits``, ``bits_per_layer`` or
        ``input_bits`` set)."""
        return self.bits is not None or bool(self.bits_per_layer) or self.input_bits is not None

    def _key_for(self, path: str) -> str | None:
        best = None
        for key, _ in self.bits_per_layer or ():
            if (path == key or path.startswith(key + "/")) and (best is None
                                                                or len(key) > len(best)):
                best = key
        return best

    def bits_for(self, path: str) -> int | None:
        """The bits of layer ``path``'s input: its ``bits_per_layer`` entry, else ``bits``."""
        key = self._key_for(path)
        return self.bits if key is None else dict(self.bits_per_layer)[key]


def layer_path(module: nn.Module) -> str:
    """The ``/``-joined Flax path of a bound module, e.g. ``'conv1'`` or ``'block1/Conv_0'``.

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> from symog_jax.quantizers.activations import layer_path
      >>> class M(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x):
      ...         d = nn.Dense(2, name="head")
      ...         y = d(x)
      ...         print(layer_path(d))
      ...         return y
      >>> _ = M().init(jax.random.key(0), jnp.ones((1, 3)))
      head
    """
    return "/".join(str(p) for p in module.path)


def _is_target(context) -> bool:
    return context.method_name == "__call__" and isinstance(context.module, _QUANTIZED_LAYERS)


def _split_input(args: tuple, kwargs: dict) -> tuple[Any, Callable[[Any], tuple[tuple, dict]]]:
    """The layer input (first positional argument, or ``inputs=``) and a function to replace it."""
    if args:
        return args[0], lambda x: ((x,) + tuple(args[1:]), kwargs)
    if "inputs" in kwargs:
        return kwargs["inputs"], lambda x: (args, {**kwargs, "inputs": x})
    return None, lambda x: (args, kwargs)


def record_layer_inputs(apply_fn: Callable[[], Any], *, model: Any = None
                        ) -> tuple[Any, list[tuple[str, jax.Array]]]:
    """Runs ``apply_fn()`` and records the input of every Conv/Dense call, in call order.

    Args:
      apply_fn: zero-argument callable that runs the model, e.g.
        ``lambda: model.apply(variables, x, train=False)``. Call it eagerly: under ``jit`` the
        recorded arrays would be tracers that escape the trace.
      model: a Flax NNX model (``nnx.Module``) whose ``nnx.Conv``/``nnx.Linear`` layers to
        record (paths from ``nnx.iter_graph``, e.g. ``'blocks/0'``); ``None`` for linen models.

    Returns:
      ``(output, records)``: ``apply_fn()``'s return value, and a list of ``(path, x)`` with
      ``path`` the ``/``-joined module path (see :func:`layer_path`) and ``x`` the layer's input
      array (any shape/dtype, e.g. float32 NHWC for a conv, ``(N, features)`` for a dense
      layer). A shared layer called twice appears twice. Inside :func:`quantize_activations`,
      the recorded inputs are the quantized ones.

    Raises:
      ValueError (one line): no linen Conv/Dense was called (e.g. a Flax NNX model given
        without ``model=``: linen interceptors cannot see ``nnx.Conv``/``nnx.Linear``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from symog_jax.models import LeNet5, init_variables
      >>> from symog_jax.quantizers.activations import record_layer_inputs
      >>> model = LeNet5(width=0.25)
      >>> v = init_variables(model, jax.random.key(0), (2, 28, 28, 1))
      >>> x = jnp.ones((2, 28, 28, 1))
      >>> logits, rec = record_layer_inputs(lambda: model.apply(v, x, train=False))
      >>> [(p, a.shape) for p, a in rec]
      [('conv1', (2, 28, 28, 1)), ('conv2', (2, 12, 12, 8)), ('fc1', (2, 256)), ('fc2', (2, 128))]
    """
    records: list[tuple[str, jax.Array]] = []

    def interceptor(next_fun, args, kwargs, context):
        if _is_target(context):
            x, _ = _split_input(args, kwargs)
            if x is not None:
                records.append((layer_path(context.module), x))
        return next_fun(*args, **kwargs)

    def on_nnx_call(path, x):
        records.append((path, x))
        return x

    with nn.intercept_methods(interceptor), _nnx_layer_inputs(model, on_nnx_call):
        output = apply_fn()
    if not records:
        raise ValueError(_NO_LAYER_CALLED.format(what="record_layer_inputs"))
    return output, records


class _NNXCalls(threading.local):
    """Per thread: ``{id(layer): (path, handler)}`` of the NNX layers being intercepted."""

    def __init__(self):
        self.active: dict[int, tuple[str, Callable]] = {}


_NNX_CALLS = _NNXCalls()
# The layer classes' ``__call__`` is wrapped only while some context is open (counted, as
# contexts may nest or run in several threads); calls no context names run unchanged.
_NNX_PATCH = {"lock": threading.Lock(), "open": 0, "originals": {}}


def _nnx_call(original):
    def __call__(self, inputs, *args, **kwargs):
        hit = _NNX_CALLS.active.get(id(self))
        if hit is not None and jnp.issubdtype(jnp.result_type(inputs), jnp.floating):
            inputs = hit[1](hit[0], inputs)
        return original(self, inputs, *args, **kwargs)
    return __call__


def _nnx_patch(opening: bool) -> None:
    with _NNX_PATCH["lock"]:
        if opening:
            if _NNX_PATCH["open"] == 0:
                for cls in _NNX_QUANTIZED_LAYERS:
                    _NNX_PATCH["originals"][cls] = cls.__dict__["__call__"]
                    cls.__call__ = _nnx_call(cls.__dict__["__call__"])
            _NNX_PATCH["open"] += 1
        else:
            _NNX_PATCH["open"] -= 1
            if _NNX_PATCH["open"] == 0:
                for cls, original in _NNX_PATCH["originals"].items():
                    cls.__call__ = original


@contextlib.contextmanager
def _nnx_layer_inputs(model: Any, handler: Callable[[str, Any], Any]):
    """Inside: each ``nnx.Conv``/``nnx.Linear`` of ``model`` passes its input through
    ``handler(path, x)``. ``model=None``: nothing changes."""
    if model is None:
        yield
        return
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model must be a Flax NNX module (nnx.Module) or None, got "
                        f"{type(model).__name__}")
    layers = {id(node): ("/".join(str(p) for p in path), handler)
              for path, node in nnx.iter_graph(model)
              if isinstance(node, _NNX_QUANTIZED_LAYERS)}
    saved = dict(_NNX_CALLS.active)
    _NNX_CALLS.active.update(layers)
    _nnx_patch(opening=True)
    try:
        yield
    finally:
        _nnx_patch(opening=False)
        _NNX_CALLS.active = saved


# Flax NNX layers (nnx.Conv, nnx.Linear) are plain Python objects, invisible to linen's method
# interceptors: without this check, an NNX model would record nothing and quantize nothing.
_NO_LAYER_CALLED = ("{what}: the model called no flax.linen Conv/Dense layer (nor an "
                    "nnx.Conv/nnx.Linear of the model given); for a Flax NNX model pass "
                    "model=the_nnx_model")


def _group_by_path(layer_inputs: Sequence[tuple[str, Any]]) -> dict[str, list[Any]]:
    grouped: dict[str, list[Any]] = {}
    for item in layer_inputs:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise TypeError("layer_inputs must be a sequence of (path, array) pairs as returned "
                            f"by record_layer_inputs, got an item {type(item).__name__}")
        grouped.setdefault(item[0], []).append(item[1])
    return grouped


def calibrate_activation_formats(layer_inputs: Sequence[tuple[str, Any]],
                                 config: ActivationQuantConfig) -> dict[str, FixedPointFormat]:
    """One per-tensor fixed-point format per recorded layer input.

    Args:
      layer_inputs: ``(path, x)`` pairs in call order, as returned by
        :func:`record_layer_inputs` (concrete arrays, any shape).
      config: bit-width (``bits``, per layer ``bits_per_layer``), range and which layers to
        skip.

    Returns:
      ``{path: FixedPointFormat}`` in first-call order, ``{}`` when nothing is quantized.
      A layer gets ``config.bits_for(path)`` bits and is left out when that is ``None``.
      The first layer (path of the first record) is left out when ``config.skip_first``, the
      last (path of the last record) when ``config.skip_last``; with ``config.input_bits`` the
      first layer gets a format of that many bits (calibrated as below, also with
      ``range="unit"``: a normalised image is not in ``[0, 1)``). A path recorded several times
      (a shared layer) gets one format, calibrated on the concatenation of all its inputs.

      * ``range="calibrated"``: unsigned if no calibration input is negative (e.g. after
        ReLU), else signed symmetric; ``frac_bits`` from
        :func:`~symog_jax.numerics.calibration.best_frac_bits` (MSE-optimal).
      * ``range="unit"``: always unsigned with ``frac_bits = bits``, i.e. levels
        ``0, 2**-bits, ..., 1 - 2**-bits``; inputs outside are saturated by the rounding.

    Raises:
      ValueError: ``bits=1`` with ``range="calibrated"`` for a layer with negative inputs (a
        signed symmetric format needs at least 2 bits), an input holds NaN/inf, or a
        ``bits_per_layer`` key that matches no recorded layer or only a skipped one (one line
        listing the quantized layers).

    Example:
      >>> import jax.numpy as jnp
      >>> from symog_jax.quantizers.activations import (ActivationQuantConfig,
      ...     calibrate_activation_formats)
      >>> rec = [("conv1", jnp.array([-1.0, 2.0])), ("fc", jnp.array([0.1, 0.7, 0.2]))]
      >>> calibrate_activation_formats(rec, ActivationQuantConfig(bits=4))
      {'fc': FixedPointFormat(bits=4, frac_bits=4, unsigned)}
      >>> unit = calibrate_activation_formats(
      ...     rec, ActivationQuantConfig(bits=2, range="unit", skip_first=False))
      >>> {path: (f.signed, f.frac_bits) for path, f in unit.items()}
      {'conv1': (False, 2), 'fc': (False, 2)}
      >>> mixed = calibrate_activation_formats(rec, ActivationQuantConfig(bits_per_layer="fc=2"))
      >>> {path: f.bits for path, f in mixed.items()}
      {'fc': 2}
      >>> calibrate_activation_formats(rec, ActivationQuantConfig(input_bits=8))
      {'conv1': FixedPointFormat(bits=8, frac_bits=3, symmetric)}
      >>> calibrate_activation_formats(rec, ActivationQuantConfig(bits_per_layer="conv1=8"))
      Traceback (most recent call last):
      ...
      ValueError: act_bits_per_layer: 'conv1' covers only the first layer's input, which stays float; quantized layer inputs: fc
    """  # noqa: E501
    if not isinstance(config, ActivationQuantConfig):
        raise TypeError(f"config must be an ActivationQuantConfig, got {type(config).__name__}")
    grouped = _group_by_path(layer_inputs)
    if not config.enabled or not grouped:
        return {}
    skip = {}
    first = layer_inputs[0][0]
    if config.skip_first or config.input_bits is not None:
        skip[first] = ("the first layer's input, which stays float" if config.input_bits is None
                       else "the first layer's input, whose bits input_bits sets")
    if config.skip_last:
        skip.setdefault(layer_inputs[-1][0], "the last layer's input, which skip_last "
                                             "(act_float_last) keeps float")
    _check_layer_keys(config, list(grouped), skip)
    formats: dict[str, FixedPointFormat] = {}
    for path, xs in grouped.items():
        is_image = path == first and config.input_bits is not None
        bits = config.input_bits if is_image else config.bits_for(path)
        if (path in skip and not is_image) or bits is None:
            continue
        if config.range == "unit" and not is_image:
            formats[path] = unsigned_format(bits, bits)
            continue
        x = np.concatenate([np.asarray(a, np.float32).ravel() for a in xs])
        if not np.all(np.isfinite(x)):
            raise ValueError(f"calibrate_activation_formats: the input of layer {path!r} "
                             "contains NaN or inf")
        signed = bool(x.size and x.min() < 0)
        if signed and bits < 2:
            raise ValueError(f"calibrate_activation_formats: layer {path!r} has negative inputs "
                             "and a signed symmetric format needs bits >= 2, got bits=1 "
                             "(use range='unit' or more bits)")
        fb = int(best_frac_bits(x, bits, signed=signed, symmetric=signed))
        formats[path] = symmetric_format(bits, fb) if signed else unsigned_format(bits, fb)
    if config.range in LEARNED_RANGES:
        kind = LEARNED_RANGES[config.range]
        return learned_ranges(formats, power_of_two=kind.power_of_two,
                              step_gradient=kind.step_gradient)
    return formats


def _check_layer_keys(config: ActivationQuantConfig, paths: list[str],
                      skip: Mapping[str, str]) -> None:
    """Every ``bits_per_layer`` key covers a recorded layer that is quantized (one-line error)."""
    quantized = [p for p in paths if p not in skip]
    for key, _ in config.bits_per_layer or ():
        hit = [p for p in paths if p == key or p.startswith(key + "/")]
        if not hit:
            raise ValueError(f"act_bits_per_layer: {key!r} is not a conv/dense layer of the "
                             f"model; quantized layer inputs: {', '.join(quantized) or 'none'}")
        if all(p in skip for p in hit):
            raise ValueError(f"act_bits_per_layer: {key!r} covers only {skip[hit[0]]}; "
                             f"quantized layer inputs: {', '.join(quantized) or 'none'}")


def learned_ranges(formats: Mapping[str, FixedPointFormat], *, power_of_two: bool = False,
                   step_gradient: bool = False) -> dict[str, FixedPointFormat | PACTRange]:
    """Learned PACT ranges (:class:`~symog_jax.quantizers.pact.PACTRange`) started from
    calibrated formats: each unsigned format becomes a range with ``alpha`` its top level
    ``fmt.max_value`` and the same bits; signed formats (e.g. a normalised image's) are kept.
    ``power_of_two`` and ``step_gradient`` are the ranges' fields of those names.

    Example:
      >>> from symog_jax.numerics.formats import symmetric_format, unsigned_format
      >>> r = learned_ranges({"img": symmetric_format(8, 5), "fc": unsigned_format(2, 1)})
      >>> type(r["img"]).__name__, float(r["fc"].alpha), r["fc"].bits
      ('FixedPointFormat', 1.5, 2)
    """
    out: dict[str, FixedPointFormat | PACTRange] = {}
    for path, fmt in check_format_mapping(formats).items():
        if isinstance(fmt, PACTRange) or fmt.signed:
            out[path] = fmt
        else:
            out[path] = PACTRange(jnp.float32(fmt.max_value), bits=int(fmt.bits),
                                  power_of_two=bool(power_of_two),
                                  step_gradient=bool(step_gradient))
    return out


def fixed_point_formats(formats: Mapping[str, FixedPointFormat | PACTRange]
                        ) -> dict[str, FixedPointFormat]:
    """Activation formats as plain fixed-point formats, for export: a power-of-two
    :class:`~symog_jax.quantizers.pact.PACTRange` becomes its fixed-point format, a
    fixed-point format is kept (its ``frac_bits`` made a Python int).

    Raises:
      ValueError: a learned range without a power-of-two step (one line naming the layer).

    Example:
      >>> from symog_jax.numerics.formats import unsigned_format
      >>> r = learned_ranges({"fc": unsigned_format(2, 1)}, power_of_two=True)
      >>> fixed_point_formats(r)
      {'fc': FixedPointFormat(bits=2, frac_bits=1, unsigned)}
    """
    out = {}
    for path, fmt in check_format_mapping(formats, "activation formats").items():
        if isinstance(fmt, PACTRange):
            if not fmt.power_of_two:
                raise ValueError(f"activation range of {path!r} is a learned PACT clip without a "
                                 "power-of-two step; train with acts.range 'pact-pow2' or "
                                 "'lsq-pow2' (--act-range) to export it as fixed point")
            out[path] = fmt.to_fixed_point()
        else:
            out[path] = FixedPointFormat(fmt.bits, int(np.asarray(fmt.frac_bits)),
                                         signed=fmt.signed, symmetric=fmt.symmetric)
    return out


def check_format_mapping(formats, what: str = "formats", *,
                         per_tensor: bool = True) -> dict[str, FixedPointFormat]:
    """``formats`` as a dict of ``'/'``-joined path -> :class:`FixedPointFormat` or
    :class:`~symog_jax.quantizers.pact.PACTRange` (``None``: ``{}``).

    Raises:
      TypeError: not a mapping, a key that is not a str, or a value that is not a format.
      ValueError: a per-channel format where ``per_tensor`` (activation formats are).
    """
    if formats is None:
        return {}
    if not isinstance(formats, Mapping):
        raise TypeError(f"{what} must be a dict of path -> FixedPointFormat, got "
                        f"{type(formats).__name__}")
    for path, fmt in formats.items():
        if not isinstance(path, str):
            raise TypeError(f"{what} keys must be '/'-joined module paths (str), got {path!r}")
        if isinstance(fmt, PACTRange):
            continue
        if not isinstance(fmt, FixedPointFormat):
            raise TypeError(f"{what}[{path!r}] must be a FixedPointFormat or PACTRange, got "
                            f"{type(fmt).__name__}")
        if per_tensor and fmt.per_channel:
            raise ValueError(f"{what}[{path!r}] is per-channel; activation formats are "
                             "per-tensor (one scalar frac_bits)")
    return dict(formats)


def quantize_activations(formats: Mapping[str, FixedPointFormat], *, model: Any = None
                         ) -> contextlib.AbstractContextManager[None]:
    """Context manager: inside it, Conv/Dense inputs are rounded to their layer's format.

    For every ``nn.Conv`` / ``nn.Dense`` (or subclass) ``__call__`` whose ``/``-joined module
    path is a key of ``formats``, the first positional argument ``x`` (or ``inputs=``) is
    replaced by ``quantize_ste(x, formats[path])``: forward, round to the nearest level (ties to
    even) and saturate at the format's range; backward, gradient 1 for ``x`` inside
    ``[fmt.min_value, fmt.max_value]`` and 0 outside (``pass_through="range"``). The output
    keeps ``x``'s shape and floating dtype; non-floating inputs pass unchanged. A
    :class:`~symog_jax.quantizers.pact.PACTRange` value quantizes with its learned clip instead
    (PACT's forward and gradients, also with respect to its ``alpha``). Other layers,
    and every call when ``formats`` is empty (a :func:`contextlib.nullcontext`), run unchanged.

    Works inside ``jax.jit`` and under ``jax.grad``: enter the context inside the traced
    function. ``formats`` is a pytree (each format's leaf is its ``frac_bits``), so it can be
    a jit argument; its ``frac_bits`` are then traced int32 scalars.

    Args:
      formats: ``{path: FixedPointFormat}`` with per-tensor formats, e.g. from
        :func:`calibrate_activation_formats`.
      model: a Flax NNX model (``nnx.Module``): its ``nnx.Conv``/``nnx.Linear`` layers are
        quantized, by their ``nnx.iter_graph`` paths (``'conv1'``, ``'blocks/0'``). Under
        ``nnx.jit`` pass the model the traced function receives (enter the context inside
        it). ``None``: a linen model.

    Returns:
      A context manager (not re-entrant across threads: Flax's interceptor stack is
      thread-local).

    Raises:
      ValueError (one line, on leaving the context): ``formats`` is not empty and no linen
        Conv/Dense (nor an NNX layer of ``model``) was called inside it (e.g. a Flax NNX model
        given without ``model=``: nothing would be quantized).

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> from symog_jax.numerics.formats import unsigned_format
      >>> from symog_jax.quantizers.activations import quantize_activations
      >>> layer = nn.Dense(1, use_bias=False, kernel_init=nn.initializers.ones)
      >>> v = layer.init(jax.random.key(0), jnp.ones((1, 2)))
      >>> x = jnp.array([[0.3, 0.8]])
      >>> with quantize_activations({"": unsigned_format(2, 1)}):  # the root's path is ''
      ...     y = layer.apply(v, x)
      >>> y.tolist()  # round(0.3 / 0.5) * 0.5 + round(0.8 / 0.5) * 0.5 = 0.5 + 1.0
      [[1.5]]
    """
    check_format_mapping(formats)
    if not formats:
        return contextlib.nullcontext()
    return _quantizing(dict(formats), model)


def _quantized(x, fmt):
    return fmt(x) if isinstance(fmt, PACTRange) else quantize_ste(x, fmt)


@contextlib.contextmanager
def _quantizing(formats: dict[str, FixedPointFormat], model: Any = None):
    layers_called = []

    def on_nnx_call(path, x):
        layers_called.append(True)
        fmt = formats.get(path)
        return x if fmt is None else _quantized(x, fmt)

    def interceptor(next_fun, args, kwargs, context):
        if _is_target(context):
            layers_called.append(True)
            fmt = formats.get(layer_path(context.module))
            if fmt is not None:
                x, replace = _split_input(args, kwargs)
                if x is not None and jnp.issubdtype(jnp.result_type(x), jnp.floating):
                    args, kwargs = replace(_quantized(x, fmt))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor), _nnx_layer_inputs(model, on_nnx_call):
        yield
    if not layers_called:
        raise ValueError(_NO_LAYER_CALLED.format(what="quantize_activations"))


def activation_format_report(formats: Mapping[str, FixedPointFormat]) -> list[dict[str, Any]]:
    """One row per quantized layer input, for logs and reports.

    Returns:
      A list (in ``formats``' order) of dicts ``{"path": str, "bits": int, "signed": bool,
      "frac_bits": int}``; ``frac_bits`` must be concrete (not traced). A learned PACT range
      gives ``{"path", "bits", "signed": False, "pact_alpha": the clip in use,
      "latent_alpha": the learned parameter, "power_of_two": bool}``.

    Example:
      >>> from symog_jax.numerics.formats import unsigned_format
      >>> from symog_jax.quantizers.activations import activation_format_report
      >>> activation_format_report({"fc1": unsigned_format(4, 3)})
      [{'path': 'fc1', 'bits': 4, 'signed': False, 'frac_bits': 3}]
    """
    check_format_mapping(formats)
    rows = []
    for path, fmt in formats.items():
        if isinstance(fmt, PACTRange):
            # the clip in use and the learned parameter behind it (they differ with a
            # power-of-two step: the latent alpha can move without changing the clip)
            rows.append({"path": path, "bits": fmt.bits, "signed": False,
                         "pact_alpha": float(fmt.clip()), "latent_alpha": float(fmt.alpha),
                         "power_of_two": fmt.power_of_two})
        else:
            rows.append({"path": path, "bits": int(fmt.bits), "signed": bool(fmt.signed),
                         "frac_bits": int(np.asarray(fmt.frac_bits))})
    return rows
