"""A model's structure, recorded from the very code that defines its Flax module.

Pruning (channel counts, parameters, MACs, removal) and the integer program (conv/dense with
folded batch norm, pooling, residual joins, concatenations) both need to know a network's
layers in call order, how tensors flow between them, and which channels may be removed
together. Rather than describing each model a second time, every registry model builds its
Flax module from the layers and functions of this module; :func:`describe` runs the module
once on abstract inputs (``jax.eval_shape``, nothing computed) and records what it does:

* **Parameterised nodes** are intercepted Flax calls: ``conv`` (:class:`Conv`), ``dense``
  (:class:`Dense`) and ``batch_norm`` (any ``nn.BatchNorm``), each with its module path, kernel
  size, strides, padding and bias.
* **Functional nodes** are the functions below: ``relu`` (:func:`activation`; the model's
  ``act``, ReLU or a quantized ReLU), ``max_pool``, ``avg_pool``, ``global_avg_pool``,
  ``flatten``, ``add``, ``concat`` and ``pad_channels`` (the option-A ResNet shortcut:
  subsample and append zero channels). Outside :func:`describe` they are the plain jnp ops.

Each node says which earlier nodes it reads (``inputs``: node indices; node 0 is the input
image) and its output's *channel axis* in terms of the model's prunable decisions: a
:data:`Chan` is a tuple of :data:`Part`, ``(d, 0)`` for "the channels kept by decision ``d``"
or ``(None, n)`` for ``n`` fixed channels (image channels, classes). A conv/dense declares the
channel axis it writes (``out_chan``); every other node derives it (a concatenation joins
its inputs' axes, a batch norm keeps its input's). One decision may appear in many axes: a
ResNet stream's channels are written by the stem and by every block of the stage.

Example:
  >>> from symog_jax.models import create_model
  >>> s = create_model("lenet5", 10, width=0.25).structure((28, 28, 1))
  >>> s.decisions, s.widths
  (('conv1', 'conv2', 'fc1'), (8, 16, 128))
  >>> for n in s.nodes[:4]:
  ...     print(n.op, repr(n.path), n.inputs, n.shape)
  input '' () (28, 28, 1)
  conv 'conv1' (0,) (24, 24, 8)
  relu '' (1,) (24, 24, 8)
  max_pool '' (2,) (12, 12, 8)
  >>> s.nodes[1].chan, s.nodes[1].attrs["kernel"], s.nodes[-1].chan
  (((0, 0),), (5, 5), ((None, 10),))
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["Chan", "Conv", "Dense", "Described", "Node", "Part", "Structure", "activation",
           "add", "avg_pool", "concat", "decision", "describe", "fixed", "flatten",
           "global_avg_pool", "max_pool", "pad_channels", "stream"]

#: One part of a channel axis: ``(decision index, 0)`` or ``(None, fixed count)``.
Part = tuple
#: A channel axis: its parts in order.
Chan = tuple

#: Node kinds, in the order the module docstring lists them.
OPS = ("input", "conv", "dense", "batch_norm", "relu", "max_pool", "avg_pool",
       "global_avg_pool", "flatten", "add", "concat", "pad_channels")


def decision(d: int) -> Chan:
    """The channel axis of decision ``d`` alone.

    Example:
      >>> decision(2)
      ((2, 0),)
    """
    return ((int(d), 0),)


def stream(decisions: Sequence[int]) -> Chan:
    """A channel axis made of several decisions in order (a grown ResNet stream).

    Example:
      >>> stream(range(2))
      ((0, 0), (1, 0))
    """
    return tuple((int(d), 0) for d in decisions)


def fixed(n: int) -> Chan:
    """``n`` channels no decision removes (image channels, classes).

    Example:
      >>> fixed(10)
      ((None, 10),)
    """
    return ((None, int(n)),)


def chan_size(chan: Chan, widths: Sequence) -> Any:
    """Channels of ``chan`` when decision ``d`` keeps ``widths[d]`` (ints or jnp values).

    Example:
      >>> chan_size(((0, 0), (None, 3)), (5,))
      8
    """
    total = 0
    for d, n in chan:
        total = total + (widths[d] if d is not None else n)
    return total


class Conv(nn.Conv):
    """``nn.Conv`` that also states the channel axis it writes (``out_chan``, a :data:`Chan`;
    ``None``: fixed channels). Parameters, names and outputs are those of ``nn.Conv``."""
    out_chan: Optional[tuple] = None


class Dense(nn.Dense):
    """``nn.Dense`` with ``out_chan`` as in :class:`Conv` (``None``: fixed, e.g. classes)."""
    out_chan: Optional[tuple] = None


@dataclasses.dataclass(frozen=True)
class Node:
    """One operation of a model, in call order.

    Attributes:
      op: one of :data:`OPS`.
      inputs: indices of the nodes whose outputs it reads.
      shape: its output shape without the batch axis, ``(H, W, C)`` or ``(C,)``.
      chan: its output's channel axis (:data:`Chan`); a ``flatten`` keeps its input's, which
        repeats at every position (feature ``position * C + channel``).
      path: ``/``-joined module path of a conv, dense or batch norm (else ``""``).
      attrs: ``conv``: ``kernel``, ``strides``, ``padding`` (``'SAME'``/``'VALID'`` or pairs),
        ``bias``, ``groups``; ``dense``: ``bias``; ``batch_norm``: ``epsilon``; pools:
        ``window``, ``strides``, ``padding``; ``pad_channels``: ``stride``.
    """
    op: str
    inputs: tuple
    shape: tuple
    chan: tuple
    path: str = ""
    attrs: dict = dataclasses.field(default_factory=dict, compare=False, hash=False)


@dataclasses.dataclass(frozen=True)
class Structure:
    """What :func:`describe` recorded.

    Attributes:
      decisions: names of the prunable decisions, the order of the model's ``widths``.
      widths: channels each decision keeps in this network.
      input_shape: ``(H, W, C)`` of one image.
      nodes: every :class:`Node` in call order; node 0 is the input.
      output: index of the node whose output is the model's (the logits).
      params: ``{path/leaf: shape}`` of the ``params`` collection, traced.
    """
    decisions: tuple
    widths: tuple
    input_shape: tuple
    nodes: tuple
    output: int
    params: dict = dataclasses.field(compare=False, hash=False, default_factory=dict)

    def consumers(self, i: int) -> list[int]:
        """Indices of the nodes reading node ``i``'s output.

        Example:
          >>> from symog_jax.models import create_model
          >>> s = create_model("lenet5", 10, width=0.25).structure((28, 28, 1))
          >>> s.consumers(1)
          [2]
        """
        return [j for j, n in enumerate(self.nodes) if i in n.inputs]


_RECORDER: contextvars.ContextVar = contextvars.ContextVar("symog_structure", default=None)


class _Recorder:
    """Collects nodes while a model runs on abstract values inside :func:`describe`."""

    def __init__(self):
        self.nodes: list[Node] = []
        self._ids: dict[int, int] = {}
        self._alive: list = []      # keep traced values alive, so their ids stay unique

    def index(self, x) -> int:
        try:
            return self._ids[id(x)]
        except KeyError:
            raise ValueError("structure: an operation reads a tensor no recorded operation "
                             "produced (use the layers and functions of "
                             "symog_jax.models.structure in the model)") from None

    def add(self, op: str, inputs: Sequence, out, chan: Chan, path: str = "", **attrs) -> None:
        size = out.shape[-1]
        widths = self.widths
        if widths is not None and chan_size(chan, widths) != size:
            raise ValueError(f"structure: {op} {path or ''} writes {size} channels, but its "
                             f"channel axis {chan} has {chan_size(chan, widths)}")
        node = Node(op, tuple(self.index(x) for x in inputs), tuple(int(d) for d in
                    out.shape[1:]), tuple(chan), path, dict(attrs))
        self._ids[id(out)] = len(self.nodes)
        self._alive.append(out)
        self.nodes.append(node)

    widths: Optional[tuple] = None

    def chan_of(self, x) -> Chan:
        return self.nodes[self.index(x)].chan

    def intercept(self, next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        mod = context.module
        if context.method_name != "__call__" or not isinstance(
                mod, (nn.Conv, nn.Dense, nn.BatchNorm)):
            return out
        x = args[0] if args else kwargs["inputs"]
        path = "/".join(str(p) for p in mod.path)
        if isinstance(mod, nn.BatchNorm):
            self.add("batch_norm", [x], out, self.chan_of(x), path, epsilon=float(mod.epsilon))
            return out
        chan = getattr(mod, "out_chan", None) or fixed(out.shape[-1])
        if isinstance(mod, nn.Conv):
            k = tuple(mod.kernel_size)
            strides = mod.strides or 1
            strides = tuple(strides) if isinstance(strides, Sequence) else (strides,) * len(k)
            padding = mod.padding if isinstance(mod.padding, str) else tuple(
                tuple(p) for p in mod.padding)
            self.add("conv", [x], out, chan, path, kernel=k, strides=strides, padding=padding,
                     bias=bool(mod.use_bias), groups=int(mod.feature_group_count))
        else:
            self.add("dense", [x], out, chan, path, bias=bool(mod.use_bias))
        return out


def _recording() -> Optional[_Recorder]:
    return _RECORDER.get()


def activation(act: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
    """``act(x)``, recorded as ``relu`` (every registry model's activation is a ReLU, possibly
    quantized).

    Example:
      >>> activation(nn.relu, jnp.array([-1.0, 2.0])).tolist()
      [0.0, 2.0]
    """
    y = act(x)
    rec = _recording()
    if rec is not None:
        rec.add("relu", [x], y, rec.chan_of(x))
    return y


def max_pool(x: jax.Array, window: tuple, strides: tuple, padding: str = "VALID") -> jax.Array:
    """``nn.max_pool`` on an NHWC batch, recorded.

    Example:
      >>> max_pool(jnp.arange(4.0).reshape(1, 2, 2, 1), (2, 2), (2, 2)).ravel().tolist()
      [3.0]
    """
    y = nn.max_pool(x, window, strides=strides, padding=padding)
    rec = _recording()
    if rec is not None:
        rec.add("max_pool", [x], y, rec.chan_of(x), window=tuple(window),
                strides=tuple(strides), padding=padding)
    return y


def avg_pool(x: jax.Array, window: tuple, strides: tuple, padding: str = "VALID") -> jax.Array:
    """``nn.avg_pool`` on an NHWC batch, recorded.

    Example:
      >>> avg_pool(jnp.arange(4.0).reshape(1, 2, 2, 1), (2, 2), (2, 2)).ravel().tolist()
      [1.5]
    """
    y = nn.avg_pool(x, window, strides=strides, padding=padding)
    rec = _recording()
    if rec is not None:
        rec.add("avg_pool", [x], y, rec.chan_of(x), window=tuple(window),
                strides=tuple(strides), padding=padding)
    return y


def global_avg_pool(x: jax.Array) -> jax.Array:
    """Mean over the spatial axes: ``(N, H, W, C) -> (N, C)``, recorded.

    Example:
      >>> global_avg_pool(jnp.ones((2, 3, 3, 4))).shape
      (2, 4)
    """
    y = x.mean(axis=(1, 2))
    rec = _recording()
    if rec is not None:
        rec.add("global_avg_pool", [x], y, rec.chan_of(x))
    return y


def flatten(x: jax.Array) -> jax.Array:
    """``(N, H, W, C) -> (N, H*W*C)`` (feature index ``position * C + channel``), recorded.

    Example:
      >>> flatten(jnp.ones((2, 3, 3, 4))).shape
      (2, 36)
    """
    y = x.reshape((x.shape[0], -1))
    rec = _recording()
    if rec is not None:
        # The channel axis stays the last one, repeated per position (see Node.shape).
        node_chan = rec.chan_of(x)
        rec.widths, saved = None, rec.widths        # the size check is per position here
        try:
            rec.add("flatten", [x], y, node_chan)
        finally:
            rec.widths = saved
    return y


def add(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a + b`` (a residual join), recorded; both must have the same channel axis.

    Example:
      >>> add(jnp.ones(2), jnp.ones(2)).tolist()
      [2.0, 2.0]
    """
    y = a + b
    rec = _recording()
    if rec is not None:
        if rec.chan_of(a) != rec.chan_of(b):
            raise ValueError(f"structure: add of different channel axes {rec.chan_of(a)} and "
                             f"{rec.chan_of(b)}")
        rec.add("add", [a, b], y, rec.chan_of(a))
    return y


def concat(xs: Sequence[jax.Array]) -> jax.Array:
    """Concatenation on the channel (last) axis, recorded; the axes' parts are joined.

    Example:
      >>> concat([jnp.ones((1, 2)), jnp.ones((1, 3))]).shape
      (1, 5)
    """
    y = jnp.concatenate(list(xs), axis=-1)
    rec = _recording()
    if rec is not None:
        rec.add("concat", list(xs), y, sum((rec.chan_of(x) for x in xs), ()))
    return y


def pad_channels(x: jax.Array, out_channels: int, stride: int,
                 chan: Optional[Chan] = None) -> jax.Array:
    """Option-A shortcut: keep every ``stride``-th position, append zero channels up to
    ``out_channels``; recorded with the output axis ``chan`` (``None``: the input's followed
    by fixed channels). An identity (stride 1, no channel added) is not a node.

    Args:
      x: NHWC input.
      out_channels: channels of the output, >= x's.
      stride: spatial subsampling (a strided slice: ``ceil(H / stride)`` positions, as a
        SAME-padded strided conv).

    Example:
      >>> pad_channels(jnp.ones((1, 8, 8, 16)), 32, 2).shape
      (1, 4, 4, 32)
    """
    y = x[:, ::stride, ::stride, :] if stride > 1 else x
    pad = out_channels - x.shape[-1]
    if pad < 0:
        raise ValueError(f"option A shortcut cannot reduce channels ({x.shape[-1]} -> "
                         f"{out_channels})")
    if pad:
        y = jnp.pad(y, ((0, 0), (0, 0), (0, 0), (0, pad)))
    rec = _recording()
    if rec is not None and y is not x:
        rec.add("pad_channels", [x], y, chan if chan is not None else
                rec.chan_of(x) + fixed(pad), stride=int(stride))
    return y


@contextlib.contextmanager
def _record(rec: _Recorder):
    token = _RECORDER.set(rec)
    try:
        with nn.intercept_methods(rec.intercept):
            yield
    finally:
        _RECORDER.reset(token)


def _param_shapes(params) -> dict:
    return {"/".join(str(getattr(k, "key", k)) for k in p): tuple(int(d) for d in v.shape)
            for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def describe(model: nn.Module, input_shape: Sequence[int]) -> Structure:
    """Record ``model``'s structure on one abstract ``(1, H, W, C)`` image (eval mode).

    Args:
      model: a module built from this module's layers and functions, with
        ``decision_names()`` and ``channel_widths()`` (every registry model).
      input_shape: ``(H, W, C)`` of one image.

    Raises:
      ValueError: a bad ``input_shape``, or a model whose channel axes do not add up.

    Example:
      >>> from symog_jax.models import create_model
      >>> s = describe(create_model("resnet20", 10, width=0.25), (32, 32, 3))
      >>> [n.path for n in s.nodes if n.op == "pad_channels" or n.path.endswith("conv2")][:3]
      ['stage1_block1/conv2', 'stage1_block2/conv2', 'stage1_block3/conv2']
    """
    try:
        shape = tuple(int(v) for v in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (H, W, C) with positive entries, got "
                         f"{input_shape!r}")
    rec = _Recorder()
    rec.widths = tuple(model.channel_widths())
    holder: dict = {}

    def run(x):
        rec.add("input", [], x, fixed(shape[-1]))
        with _record(rec):
            out, variables = model.init_with_output(jax.random.key(0), x, train=False)
        holder["output"] = rec.index(out)
        return variables["params"]

    params = jax.eval_shape(run, jax.ShapeDtypeStruct((1,) + shape, jnp.float32))
    names = tuple(model.decision_names())
    if len(names) != len(rec.widths):
        raise ValueError(f"structure: {type(model).__name__} names {len(names)} decisions but "
                         f"has {len(rec.widths)} widths")
    return Structure(names, rec.widths, shape, tuple(rec.nodes), holder["output"],
                     _param_shapes(params))


class Described:
    """Mixin of the registry models: ``model.structure(input_shape)`` is :func:`describe`."""

    def structure(self, input_shape: Sequence[int]) -> Structure:
        """This model's :class:`Structure` for ``(H, W, C)`` images (see :func:`describe`)."""
        key = tuple(int(v) for v in input_shape)
        try:
            return _describe_cached(self, key)
        except TypeError:           # an unhashable attribute (widths given as a list)
            return describe(self, key)


@functools.lru_cache(maxsize=64)
def _describe_cached(model, input_shape):
    return describe(model, input_shape)
