"""Prunable decisions of every registry model and its exact parameter / MAC counts.

A *decision* is a group of channels that must be kept or removed together-consistently: the
output channels of one conv/dense layer, or channels that several layers share (the residual
stream of a ResNet stage, a DenseNet layer's growth channels in every later concatenation).
A network's complexity is a polynomial in the kept channels per decision ``n``:

* conv ``kh*kw*cin*cout`` weights (``+cout`` bias) and ``kh*kw*cin*cout*H_out*W_out`` MACs,
* dense ``in*out`` weights (``+out`` bias) and as many MACs (``in`` = channels x positions
  for a flattened feature map),
* batch norm ``2*c`` trainable parameters (scale, bias) and no MACs (it folds into the conv),

where each ``cin``/``cout``/``c`` is a sum of decision counts and fixed counts (image channels,
classes). :func:`complexity` evaluates it on Python ints (exact) or on a ``jnp`` array of soft
counts (differentiable). Pooling, activations, additions and batch-norm statistics are not
counted, as in the published figures (ResNet-20: 0.27M parameters, 41M MACs on CIFAR).

Decisions per architecture (names as in :attr:`Architecture.decisions`, the order of the
models' ``widths``):

* ``lenet5``: ``conv1``, ``conv2``, ``fc1`` (the output channels of each).
* ``vgg7``: ``conv1`` .. ``conv6``, ``fc1``; ``vgg11``: ``conv1`` .. ``conv8``.
* ``resnet20/32/56`` (option-A shortcuts): ``stream1``, ``stream2``, ``stream3`` -- the
  residual stream of stage 1 (stem, every block's ``conv2``) has ``stream1`` channels, the
  zero-padding shortcut carries them into stage 2 as its first channels, whose stream is
  ``stream1 + stream2`` channels, and so on; then ``stage{s}_block{b}_conv1``, each block's
  inner channels.
* ``densenet40`` / ``densenet_bc100``: ``conv_in``; per layer ``block{b}_layer{l}_conv1``
  (bottleneck channels, BC only) and ``block{b}_layer{l}_growth`` (the channels it appends to
  every later concatenation of its block); ``transition1``, ``transition2``.
* ``resnet18``: ``stream1`` .. ``stream4`` (stage 1's stream includes the stem: the first
  shortcut is the identity), then ``stage{s}_block{b}_conv1``. ``resnet50``: ``stem``,
  ``stream1`` .. ``stream4`` (projection shortcuts write into them), then
  ``stage{s}_block{b}_conv1`` and ``_conv2`` of each bottleneck.

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

__all__ = ["Architecture", "Layer", "Norm", "architecture", "architecture_from_params",
           "complexity", "min_widths",
           "relative_complexity", "traced_complexity"]

#: One part of a channel axis: ``(decision index, 0)`` or ``(None, fixed count)``.
Part = tuple
#: A channel axis: its parts in order (a concatenation, or a stream grown by option A).
Chan = tuple


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
    """Decisions and layers of a registry model (see the module docstring).

    Attributes:
      name: registry name.
      num_classes, input_shape: as the model is used (``input_shape`` is ``(H, W, C)``).
      decisions: decision names, the order of ``widths``.
      full: channels per decision in the network described (``create_model(..., widths=full)``
        builds it).
      layers, norms: every conv/dense and batch norm, in call order.
    """
    name: str
    num_classes: int
    input_shape: tuple
    decisions: tuple
    full: tuple
    layers: tuple
    norms: tuple

    def model(self, widths: Sequence[int] | None = None, **kw) -> nn.Module:
        """The registry model with ``widths`` kept channels (default: :attr:`full`).

        Example:
          >>> architecture("lenet5", 10, (28, 28, 1), width=0.25).model().channel_widths()
          (8, 16, 128)
        """
        return create_model(self.name, self.num_classes,
                            widths=tuple(self.full if widths is None else widths), **kw)

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
        total = 0
        for d, fixed in chan:
            total = total + (n[d] if d is not None else fixed)
        return total


def _part(d: int) -> Part:
    return (d, 0)


def _fixed(c: int) -> Part:
    return (None, int(c))


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


def _same(h: int, s: int) -> int:
    return -(-h // s)


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
    full = tuple(model.channel_widths())
    decisions, layers, norms = _BUILDERS[key](model, full, shape, num_classes)
    if len(decisions) != len(full):
        raise AssertionError(f"{key}: {len(decisions)} decisions vs {len(full)} widths")
    return Architecture(key, int(num_classes), shape, tuple(decisions), full, tuple(layers),
                        tuple(norms))


def _lenet(model, full, shape, nc):
    h, w, c = shape
    h1, w1 = (h - 4) // 2, (w - 4) // 2
    h2, w2 = (h1 - 4) // 2, (w1 - 4) // 2
    layers = [Layer("conv1", (5, 5), (_fixed(c),), (_part(0),), (h - 4) * (w - 4), True,
                    gate_out=True),
              Layer("conv2", (5, 5), (_part(0),), (_part(1),), (h1 - 4) * (w1 - 4), True,
                    gate_out=True),
              Layer("fc1", None, (_part(1),), (_part(2),), 1, True, in_positions=h2 * w2,
                    gate_out=True),
              Layer("fc2", None, (_part(2),), (_fixed(nc),), 1, True)]
    return ["conv1", "conv2", "fc1"], layers, []


def _vgg(model, full, shape, nc, cfg, dense_hidden):
    h, w, c = shape
    layers, norms, names = [], [], []
    prev, i = (_fixed(c),), 0
    for item in cfg:
        if item == "M":
            h, w = h // 2, w // 2
            continue
        names.append(f"conv{i + 1}")
        layers.append(Layer(f"conv{i + 1}", (3, 3), prev, (_part(i),), h * w, False))
        norms.append(Norm(f"bn{i + 1}", (_part(i),)))
        prev, i = (_part(i),), i + 1
    if dense_hidden:
        names.append("fc1")
        layers.append(Layer("fc1", None, prev, (_part(i),), 1, False, in_positions=h * w))
        norms.append(Norm("bn_fc1", (_part(i),)))
        layers.append(Layer("fc2", None, (_part(i),), (_fixed(nc),), 1, True))
    else:
        layers.append(Layer("fc", None, prev, (_fixed(nc),), 1, True))
    return names, layers, norms


def _vgg7(model, full, shape, nc):
    from symog_jax.models.vgg import _VGG7_CFG
    return _vgg(model, full, shape, nc, _VGG7_CFG, True)


def _vgg11(model, full, shape, nc):
    from symog_jax.models.vgg import _VGG11_CFG
    return _vgg(model, full, shape, nc, _VGG11_CFG, False)


def _cifar_resnet(model, full, shape, nc):
    h, w, c = shape
    n = model.blocks_per_stage
    names = ["stream1", "stream2", "stream3"] + [
        f"stage{s}_block{b}_conv1" for s in (1, 2, 3) for b in range(1, n + 1)]
    streams = [tuple(_part(d) for d in range(s)) for s in (1, 2, 3)]
    layers = [Layer("conv_in", (3, 3), (_fixed(c),), streams[0], h * w, False)]
    norms = [Norm("bn_in", streams[0])]
    prev, d = streams[0], 3
    for s in range(3):
        for b in range(1, n + 1):
            if s > 0 and b == 1:
                h, w = _same(h, 2), _same(w, 2)
            p = f"stage{s + 1}_block{b}"
            layers += [Layer(f"{p}/conv1", (3, 3), prev, (_part(d),), h * w, False),
                       Layer(f"{p}/conv2", (3, 3), (_part(d),), streams[s], h * w, False)]
            norms += [Norm(f"{p}/bn1", (_part(d),)), Norm(f"{p}/bn2", streams[s])]
            prev, d = streams[s], d + 1
    layers.append(Layer("fc", None, prev, (_fixed(nc),), 1, True))
    return names, layers, norms


def _densenet(model, full, shape, nc):
    h, w, c = shape
    names = ["conv_in"]
    layers = [Layer("conv_in", (3, 3), (_fixed(c),), (_part(0),), h * w, False, gate_out=True)]
    norms = []
    concat, d = [_part(0)], 1
    for b in range(1, 4):
        for layer in range(1, model.layers_per_block + 1):
            p = f"block{b}_layer{layer}"
            norms.append(Norm(f"{p}/bn1", tuple(concat)))
            if model.bottleneck:
                names.append(f"{p}_conv1")
                layers.append(Layer(f"{p}/conv1", (1, 1), tuple(concat), (_part(d),), h * w,
                                    False))
                norms.append(Norm(f"{p}/bn2", (_part(d),)))
                names.append(f"{p}_growth")
                layers.append(Layer(f"{p}/conv2", (3, 3), (_part(d),), (_part(d + 1),), h * w,
                                    False, gate_out=True))
                concat.append(_part(d + 1))
                d += 2
            else:
                names.append(f"{p}_growth")
                layers.append(Layer(f"{p}/conv1", (3, 3), tuple(concat), (_part(d),), h * w,
                                    False, gate_out=True))
                concat.append(_part(d))
                d += 1
        if b < 3:
            names.append(f"transition{b}")
            norms.append(Norm(f"transition{b}/bn", tuple(concat)))
            layers.append(Layer(f"transition{b}/conv", (1, 1), tuple(concat), (_part(d),),
                                h * w, False, gate_out=True))
            concat, d = [_part(d)], d + 1
            h, w = h // 2, w // 2
    norms.append(Norm("bn_out", tuple(concat)))
    layers.append(Layer("fc", None, tuple(concat), (_fixed(nc),), 1, True))
    return names, layers, norms


def _imagenet_resnet(model, full, shape, nc):
    from symog_jax.models.resnet_imagenet import _STAGE_BLOCKS
    h, w, c = shape
    blocks = _STAGE_BLOCKS[model.depth]
    bottleneck = model.bottleneck
    if bottleneck:
        names = ["stem", "stream1", "stream2", "stream3", "stream4"]
        stem, streams, d = (_part(0),), [(_part(s),) for s in (1, 2, 3, 4)], 5
    else:
        names = ["stream1", "stream2", "stream3", "stream4"]
        streams, d = [(_part(s),) for s in (0, 1, 2, 3)], 4
        stem = streams[0]
    for s in range(4):
        for b in range(1, blocks[s] + 1):
            names += [f"stage{s + 1}_block{b}_conv1"] + (
                [f"stage{s + 1}_block{b}_conv2"] if bottleneck else [])
    h, w = _same(h, 2), _same(w, 2)
    layers = [Layer("conv_in", (7, 7), (_fixed(c),), stem, h * w, False)]
    norms = [Norm("bn_in", stem)]
    h, w = _same(h, 2), _same(w, 2)
    prev = stem
    for s in range(4):
        for b in range(1, blocks[s] + 1):
            p = f"stage{s + 1}_block{b}"
            hi, wi = h, w
            if s > 0 and b == 1:
                h, w = _same(h, 2), _same(w, 2)
            if bottleneck:
                i1, i2 = (_part(d),), (_part(d + 1),)
                layers += [Layer(f"{p}/conv1", (1, 1), prev, i1, hi * wi, False),
                           Layer(f"{p}/conv2", (3, 3), i1, i2, h * w, False),
                           Layer(f"{p}/conv3", (1, 1), i2, streams[s], h * w, False)]
                norms += [Norm(f"{p}/bn1", i1), Norm(f"{p}/bn2", i2), Norm(f"{p}/bn3", streams[s])]
                d += 2
            else:
                i1 = (_part(d),)
                layers += [Layer(f"{p}/conv1", (3, 3), prev, i1, h * w, False),
                           Layer(f"{p}/conv2", (3, 3), i1, streams[s], h * w, False)]
                norms += [Norm(f"{p}/bn1", i1), Norm(f"{p}/bn2", streams[s])]
                d += 1
            if b == 1 and (s > 0 or bottleneck):
                layers.append(Layer(f"{p}/proj", (1, 1), prev, streams[s], h * w, False))
                norms.append(Norm(f"{p}/proj_bn", streams[s]))
            prev = streams[s]
    layers.append(Layer("fc", None, prev, (_fixed(nc),), 1, True))
    return names, layers, norms


_BUILDERS = {"lenet5": _lenet, "vgg7": _vgg7, "vgg11": _vgg11, "resnet20": _cifar_resnet,
             "resnet32": _cifar_resnet, "resnet56": _cifar_resnet,
             "densenet40": _densenet, "densenet_bc100": _densenet,
             "resnet18": _imagenet_resnet, "resnet50": _imagenet_resnet}


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


def architecture_from_params(name: str, params: Any,
                             input_shape: Sequence[int] = (32, 32, 3)) -> Architecture:
    """The :class:`Architecture` of registry model ``name`` whose parameters are ``params``.

    Reads the channels per decision (any width multiplier or pruning) and the class count off
    the kernel shapes, then checks that ``create_model(name, ..., widths=...)`` has exactly
    these parameter shapes.

    Args:
      name: registry name.
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
    proto = architecture(name, 10, input_shape)
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
        arch = architecture(name, num_classes, input_shape, widths=widths)
    except (KeyError, IndexError, ValueError):
        raise ValueError(f"the parameters do not belong to a {name!r} model") from None
    x = jax.ShapeDtypeStruct((1,) + arch.input_shape, jnp.float32)
    expected = jax.eval_shape(functools.partial(arch.model().init, train=False),
                              jax.random.key(0), x)["params"]
    if _params_shapes(expected) != shapes:
        raise ValueError(f"the parameters do not belong to a {name!r} model with input "
                         f"{'x'.join(map(str, arch.input_shape))}")
    return arch
