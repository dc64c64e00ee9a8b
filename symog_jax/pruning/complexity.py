"""Prunable decisions of any described model and its exact parameter / MAC counts.

A *decision* is a group of channels that must be kept or removed together-consistently: the
output channels of one conv/dense layer, or channels that several layers share (the residual
stream of a ResNet stage, a DenseNet layer's growth channels in every later concatenation).
The model says which (:mod:`symog_jax.models.structure`: every node's channel axis in terms of
its decisions); this module reads its :class:`~symog_jax.models.structure.Structure` and
names no model. A network's complexity is a polynomial in the kept channels per decision
``n``:

* conv ``kh*kw*cin*cout`` weights (``+cout`` bias) and ``kh*kw*cin*cout*H_out*W_out`` MACs,
* dense ``in*out`` weights (``+out`` bias) and as many MACs (``in`` = channels x positions
  for a flattened feature map),
* batch norm ``2*c`` trainable parameters (scale, bias) and no MACs (it folds into the conv),

where each ``cin``/``cout``/``c`` is a sum of decision counts and fixed counts (image channels,
classes). :func:`complexity` evaluates it on Python ints (exact) or on a ``jnp`` array of soft
counts (differentiable). Pooling, activations, additions and batch-norm statistics are not
counted, as in the published figures (ResNet-20: 0.27M parameters, 41M MACs on CIFAR).

The decisions of each registry model are listed by its ``decision_names()`` (the order of its
``widths``), e.g. ResNet-20: ``stream1..3`` (the residual streams, grown by the option-A
shortcuts) then ``stage{s}_block{b}_conv1``.

Example:
  >>> arch = architecture("resnet20", num_classes=10, input_shape=(32, 32, 3))
  >>> arch.decisions[:4]
  ('stream1', 'stream2', 'stream3', 'stage1_block1_conv1')
  >>> params, macs = complexity(arch, arch.full)
  >>> params, round(macs / 1e6, 2)
  (269722, 40.55)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from symog_jax.models.registry import MODEL_NAMES, create_model
from symog_jax.models.structure import Chan, Part, Structure, chan_size  # noqa: F401

__all__ = ["Architecture", "Layer", "Norm", "architecture", "architecture_from_params",
           "architecture_of", "complexity", "min_widths", "relative_complexity",
           "traced_complexity"]


@dataclasses.dataclass(frozen=True)
class Layer:
    """A conv or dense layer of the architecture.

    Attributes:
      path: module path of the layer in ``params``, ``/``-joined (``stage1_block1/conv1``).
      kernel: ``(kh, kw)`` of a conv, ``None`` for a dense layer.
      cin: its input channel axis (``Chan``).
      cout: its output channel axis.
      out_positions: output spatial positions ``H_out * W_out`` (1 for dense).
      bias: whether it has a bias.
      in_positions: spatial positions per input channel of a dense layer on a flattened map
        (feature index ``position * C + channel``); 1 otherwise.
      gate_out: its output channels are gated at the kernel (no batch norm follows it).
    """
    path: str
    kernel: tuple | None
    cin: Chan
    cout: Chan
    out_positions: int
    bias: bool
    in_positions: int = 1
    gate_out: bool = False


@dataclasses.dataclass(frozen=True)
class Norm:
    """A batch norm over the channel axis ``chan`` (gated at ``scale``/``bias``)."""
    path: str
    chan: Chan


@dataclasses.dataclass(frozen=True)
class Architecture:
    """Decisions and layers of a model (see the module docstring).

    Attributes:
      name: what messages call it (the registry name, or the model's class name).
      num_classes, input_shape: as the model is used (``input_shape`` is ``(H, W, C)``).
      decisions: decision names, the order of ``widths``.
      full: channels per decision in the network described (``arch.model(full)`` builds it).
      layers, norms: every conv/dense and batch norm, in call order.
      module: the Flax model described (its ``widths`` replaced by :meth:`model`).
    """
    name: str
    num_classes: int
    input_shape: tuple
    decisions: tuple
    full: tuple
    layers: tuple
    norms: tuple
    module: Any = dataclasses.field(default=None, compare=False, repr=False)

    def model(self, widths: Sequence[int] | None = None, **kw) -> nn.Module:
        """The model with ``widths`` kept channels (default: :attr:`full`); ``kw`` replaces
        more of its attributes (e.g. ``act``).

        Example:
          >>> architecture("lenet5", 10, (28, 28, 1), width=0.25).model().channel_widths()
          (8, 16, 128)
        """
        return self.module.clone(widths=tuple(int(v) for v in (self.full if widths is None
                                                               else widths)), **kw)

    def chan_offsets(self, chan: Chan, n: Sequence | None = None) -> list[tuple]:
        """``[(decision or None, start, size), ...]``: where each part of ``chan`` lies.

        Example:
          >>> arch = architecture("resnet20", 10, width=0.25)
          >>> arch.chan_offsets(((0, 0), (1, 0)))      # stage 2's stream: 4 + 4 channels
          [(0, 0, 4), (1, 4, 4)]
        """
        n = self.full if n is None else n
        out, start = [], 0
        for d, fixed in chan:
            size = int(n[d]) if d is not None else int(fixed)
            out.append((d, start, size))
            start += size
        return out

    def chan_size(self, chan: Chan, n: Sequence) -> Any:
        """Channels of ``chan`` for kept counts ``n`` (ints or a ``jnp`` array)."""
        return chan_size(chan, n)


def min_widths(arch: Architecture, min_keep: float = 0.0) -> tuple[int, ...]:
    """Smallest widths pruning may reach: ``max(1, ceil(min_keep * full))`` channels per
    decision (0 where the full is 0).

    Args:
      arch: the architecture.
      min_keep: the fraction of every decision's channels that must stay, in [0, 1).

    Example:
      >>> arch = architecture("lenet5", 10, (28, 28, 1))
      >>> min_widths(arch), min_widths(arch, 0.25)
      ((1, 1, 1), (8, 16, 128))
    """
    if isinstance(min_keep, bool) or not isinstance(min_keep, (int, float)) \
            or not 0 <= min_keep < 1:
        raise ValueError(f"min_keep must be a fraction in [0, 1), got {min_keep!r}")
    return tuple(min(f, max(1, math.ceil(min_keep * f - 1e-9))) for f in arch.full)


def complexity(arch: Architecture, n: Sequence) -> tuple[Any, Any]:
    """``(parameters, MACs)`` of one forward pass (one image) with ``n`` channels kept.

    Args:
      arch: from :func:`architecture`.
      n: kept channels per decision: Python ints (exact integer result) or a float ``jnp``
        array of shape ``(len(arch.decisions),)`` (differentiable result, float32 scalars).

    Example:
      >>> arch = architecture("lenet5", 10, (28, 28, 1))
      >>> complexity(arch, arch.full)               # 582026 parameters
      (582026, 4267008)
      >>> p, m = complexity(arch, jnp.asarray(arch.full, jnp.float32) * 0.5)
      >>> jax.grad(lambda n: complexity(arch, n)[0])(jnp.ones(3)).shape
      (3,)
    """
    params = macs = 0
    for layer in arch.layers:
        cin = arch.chan_size(layer.cin, n) * layer.in_positions
        cout = arch.chan_size(layer.cout, n)
        k = 1 if layer.kernel is None else layer.kernel[0] * layer.kernel[1]
        weights = k * cin * cout
        params = params + weights + (cout if layer.bias else 0)
        macs = macs + weights * layer.out_positions
    for norm in arch.norms:
        params = params + 2 * arch.chan_size(norm.chan, n)
    return params, macs


def relative_complexity(arch: Architecture, n: Sequence) -> tuple[Any, Any]:
    """``complexity(arch, n)`` divided by that of :attr:`Architecture.full` (1.0 = unpruned).

    Example:
      >>> arch = architecture("vgg7", 10, width=0.25)
      >>> [round(float(v), 3) for v in relative_complexity(arch, arch.full)]
      [1.0, 1.0]
    """
    p0, m0 = complexity(arch, tuple(int(v) for v in arch.full))
    p, m = complexity(arch, n)
    return p / p0, m / m0


def _has_decision(chan: Chan) -> bool:
    return any(d is not None for d, _ in chan)


def layers_and_norms(structure: Structure) -> tuple[tuple, tuple]:
    """The conv/dense :class:`Layer` and batch-norm :class:`Norm` entries of a structure.

    A layer's output is gated at its kernel (``gate_out``) when it writes decision channels
    that reach something other than a batch norm (a concatenation, a pool, the next layer):
    a batch norm directly after it is gated at its own scale and shift instead.

    Example:
      >>> from symog_jax.models import create_model
      >>> layers, norms = layers_and_norms(create_model("vgg11", 10).structure((32, 32, 3)))
      >>> layers[0].path, layers[0].cout, layers[0].gate_out, norms[0].path
      ('conv1', ((0, 0),), False, 'bn1')
    """
    nodes = structure.nodes
    layers, norms = [], []
    for i, node in enumerate(nodes):
        if node.op == "batch_norm":
            norms.append(Norm(node.path, node.chan))
            continue
        if node.op not in ("conv", "dense"):
            continue
        src = nodes[node.inputs[0]]
        in_positions = 1
        if node.op == "dense" and src.op == "flatten":
            in_positions = math.prod(nodes[src.inputs[0]].shape[:-1])
        users = structure.consumers(i)
        only_norm = bool(users) and all(nodes[j].op == "batch_norm" for j in users)
        layers.append(Layer(
            node.path, tuple(node.attrs["kernel"]) if node.op == "conv" else None, src.chan,
            node.chan, math.prod(node.shape[:-1]), bool(node.attrs["bias"]), in_positions,
            gate_out=_has_decision(node.chan) and not only_norm))
    return tuple(layers), tuple(norms)


def architecture_of(model: nn.Module, input_shape: Sequence[int], *,
                    name: str | None = None) -> Architecture:
    """The :class:`Architecture` of a described model object (``model.structure``).

    Args:
      model: a registry model (any module with ``structure``, ``channel_widths`` and a
        ``widths`` attribute).
      input_shape: ``(H, W, C)`` of one image.
      name: what messages call it (default: the class name, lower case).

    Example:
      >>> from symog_jax.models import create_model
      >>> arch = architecture_of(create_model("lenet5", 10, width=0.25), (28, 28, 1))
      >>> arch.decisions, arch.full, arch.num_classes
      (('conv1', 'conv2', 'fc1'), (8, 16, 128), 10)
    """
    structure = model.structure(input_shape)
    layers, norms = layers_and_norms(structure)
    num_classes = int(structure.nodes[structure.output].shape[-1])
    return Architecture(name or type(model).__name__.lower(), num_classes,
                        structure.input_shape, structure.decisions, structure.widths, layers,
                        norms, model)


def architecture(name: str, num_classes: int = 10, input_shape: Sequence[int] = (32, 32, 3),
                 *, width: float = 1.0, widths: Sequence[int] | None = None) -> Architecture:
    """The decisions, layers and counts of registry model ``name``.

    Args:
      name: a registry name (:data:`symog_jax.models.MODEL_NAMES`).
      num_classes: logits of the classifier.
      input_shape: ``(H, W, C)`` of one image (MACs depend on it).
      width: width multiplier, used when ``widths`` is ``None``.
      widths: channels per decision of the network described (e.g. an already pruned one).

    Raises:
      ValueError: unknown ``name``, a bad ``input_shape`` or bad ``widths`` (one line).

    Example:
      >>> arch = architecture("vgg11", 10, width=0.5)
      >>> arch.decisions[-1], arch.full[-1], len(arch.layers), len(arch.norms)
      ('conv8', 256, 9, 8)
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in MODEL_NAMES:
        raise ValueError(f"unknown model name {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    try:
        shape = tuple(int(v) for v in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (H, W, C) with positive entries, got "
                         f"{input_shape!r}")
    model = create_model(key, num_classes, width=width, widths=widths)
    return architecture_of(model, shape, name=key)


def traced_complexity(model: nn.Module, input_shape: Sequence[int]) -> dict[str, tuple]:
    """Brute force: ``{layer path: (weights + bias, MACs)}`` of every Conv/Dense of ``model``,
    from the shapes of one abstract forward pass (``jax.eval_shape``, nothing computed).

    MACs are ``kh*kw*(cin/groups)*cout*H_out*W_out`` for a conv and ``in*out`` for a dense
    layer, read from the traced input/output shapes, not from any architecture description.

    Example:
      >>> from symog_jax.models import LeNet5
      >>> traced_complexity(LeNet5(), (28, 28, 1))["conv1"]
      (832, 460800)
    """
    x = jax.ShapeDtypeStruct((1,) + tuple(int(v) for v in input_shape), jnp.float32)
    variables = jax.eval_shape(functools.partial(model.init, train=False),
                               jax.random.key(0), x)
    found: dict[str, tuple] = {}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        mod = context.module
        if context.method_name == "__call__" and isinstance(mod, (nn.Conv, nn.Dense)):
            cin, cout = args[0].shape[-1], out.shape[-1]
            if isinstance(mod, nn.Conv):
                k = math.prod(mod.kernel_size)
                groups = mod.feature_group_count
                weights = k * (cin // groups) * cout
                macs = weights * math.prod(out.shape[1:-1])
            else:
                weights = cin * cout
                macs = weights
            path = "/".join(mod.scope.path)
            found[path] = (weights + (cout if mod.use_bias else 0), macs)
        return out

    with nn.intercept_methods(interceptor):
        jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
    return found


def _params_shapes(params) -> dict:
    return {"/".join(str(getattr(k, "key", k)) for k in p): tuple(np_shape(v))
            for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def np_shape(x) -> tuple:
    """The shape of an array or ``ShapeDtypeStruct`` as a tuple of ints."""
    return tuple(int(d) for d in jnp.shape(x))


def architecture_from_params(name: str | nn.Module, params: Any,
                             input_shape: Sequence[int] = (32, 32, 3)) -> Architecture:
    """The :class:`Architecture` of a model like ``name`` whose parameters are ``params``.

    Reads the channels per decision (any width multiplier or pruning) and the class count off
    the kernel shapes, then checks that the model with these widths and classes has exactly
    these parameter shapes.

    Args:
      name: a registry name, or a model object (its widths and classes are replaced).
      params: the model's ``params`` collection (arrays or ``ShapeDtypeStruct``).
      input_shape: ``(H, W, C)`` of one image.

    Raises:
      ValueError: (one line) the parameters do not belong to such a model.

    Example:
      >>> from symog_jax.models import create_model, init_variables
      >>> v = init_variables(create_model("lenet5", 10, widths=(3, 5, 7)), 0, (28, 28, 1))
      >>> architecture_from_params("lenet5", v["params"], (28, 28, 1)).full
      (3, 5, 7)
    """
    if isinstance(name, nn.Module):
        proto = architecture_of(name, input_shape)
        label = proto.name
    else:
        proto = architecture(name, 10, input_shape)
        label = name
    shapes = _params_shapes(params)
    try:
        num_classes = shapes[proto.layers[-1].path + "/kernel"][-1]
        known: dict[int, int] = {}
        for _ in range(3):
            for layer in proto.layers:
                unknown = [d for d, _ in layer.cout if d is not None and d not in known]
                if len(unknown) != 1:
                    continue
                size = shapes[layer.path + "/kernel"][-1]
                rest = sum(known[d] if d is not None else f for d, f in layer.cout
                           if d != unknown[0])
                known[unknown[0]] = size - rest
        for norm in proto.norms:           # decisions only a batch norm sees
            unknown = [d for d, _ in norm.chan if d is not None and d not in known]
            if len(unknown) == 1:
                rest = sum(known[d] if d is not None else f for d, f in norm.chan
                           if d != unknown[0])
                known[unknown[0]] = shapes[norm.path + "/scale"][-1] - rest
        widths = tuple(known[d] for d in range(len(proto.decisions)))
        arch = architecture_of(proto.model(widths, num_classes=num_classes), input_shape,
                               name=proto.name)
    except (KeyError, IndexError, ValueError):
        raise ValueError(f"the parameters do not belong to a {label!r} model") from None
    expected = arch.module.structure(arch.input_shape).params
    if expected != shapes:
        raise ValueError(f"the parameters do not belong to a {label!r} model with input "
                         f"{'x'.join(map(str, arch.input_shape))}")
    return arch
