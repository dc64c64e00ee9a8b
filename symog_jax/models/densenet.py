"""DenseNet for CIFAR (Huang et al., "Densely Connected Convolutional Networks", 2017)."""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax

from symog_jax.models import structure as S
from symog_jax.models.layers import (
    batch_norm,
    check_nhwc,
    check_widths,
    conv_kernel_init,
    scale_width,
    validate_width,
)

__all__ = ["DenseLayer", "DenseNet", "Transition", "densenet40", "densenet_bc100"]

_NUM_BLOCKS = 3


class DenseLayer(nn.Module):
    """One composite layer H_l; returns ``concat([x, H_l(x)])`` on channels.

    Without bottleneck: BN-act-Conv3x3(k) (submodules ``bn1``, ``conv1``).
    With bottleneck: BN-act-Conv1x1(4k)-BN-act-Conv3x3(k) (``bn1``, ``conv1``,
    ``bn2``, ``conv2``). Convs have no bias because every conv output meets a
    BN (in the next layer, transition or final head) before anything else.

    Input ``(N, H, W, C)`` -> output ``(N, H, W, C + growth_rate)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from symog_jax.models import init_variables
      >>> layer = DenseLayer(growth_rate=12, bottleneck=False)
      >>> x = jnp.zeros((1, 8, 8, 16))
      >>> v = init_variables(layer, jax.random.key(0), x.shape)
      >>> layer.apply(v, x, train=False).shape
      (1, 8, 8, 28)
    """

    growth_rate: int
    bottleneck: bool
    act: Callable[[jax.Array], jax.Array] = nn.relu
    #: Channels of the bottleneck ``conv1`` (``None``: ``4 * growth_rate``); pruning changes it.
    inner_channels: Optional[int] = None
    #: Channel axes (:mod:`~symog_jax.models.structure`) of the growth and the bottleneck.
    growth_chan: Optional[tuple] = None
    inner_chan: Optional[tuple] = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = S.activation(self.act, batch_norm(train, name="bn1")(x))
        if self.bottleneck:
            inner = 4 * self.growth_rate if self.inner_channels is None else self.inner_channels
            y = S.Conv(
                inner, (1, 1), use_bias=False,
                kernel_init=conv_kernel_init, name="conv1", out_chan=self.inner_chan,
            )(y)
            y = S.activation(self.act, batch_norm(train, name="bn2")(y))
            y = S.Conv(
                self.growth_rate, (3, 3), padding="SAME", use_bias=False,
                kernel_init=conv_kernel_init, name="conv2", out_chan=self.growth_chan,
            )(y)
        else:
            y = S.Conv(
                self.growth_rate, (3, 3), padding="SAME", use_bias=False,
                kernel_init=conv_kernel_init, name="conv1", out_chan=self.growth_chan,
            )(y)
        return S.concat([x, y])


class Transition(nn.Module):
    """BN-act-Conv1x1(out_channels)-AvgPool2x2 between dense blocks.

    Submodules ``bn``, ``conv`` (no bias). Input ``(N, H, W, C)`` -> output
    ``(N, H // 2, W // 2, out_channels)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from symog_jax.models import init_variables
      >>> t = Transition(out_channels=8)
      >>> x = jnp.zeros((1, 8, 8, 16))
      >>> v = init_variables(t, jax.random.key(0), x.shape)
      >>> t.apply(v, x, train=False).shape
      (1, 4, 4, 8)
    """

    out_channels: int
    act: Callable[[jax.Array], jax.Array] = nn.relu
    #: Channel axis (:mod:`~symog_jax.models.structure`) of the output.
    out_chan: Optional[tuple] = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = S.activation(self.act, batch_norm(train, name="bn")(x))
        x = S.Conv(
            self.out_channels, (1, 1), use_bias=False,
            kernel_init=conv_kernel_init, name="conv", out_chan=self.out_chan,
        )(x)
        return S.avg_pool(x, (2, 2), (2, 2))


class DenseNet(S.Described, nn.Module):
    """CIFAR DenseNet with three dense blocks.

    Layout: Conv3x3(c0) -> [block -> transition] x 2 -> block -> BN-act ->
    global average pool -> Dense(num_classes). Each block has
    ``(depth - 4) / 3`` layers without bottleneck, ``(depth - 4) / 6`` with
    (each bottleneck layer holds two convs); the 4 counts the first conv, two
    transitions and the classifier. A transition maps ``c`` channels to
    ``floor(compression * c)``. There is no dropout (the paper drops it when
    training with data augmentation).

    Submodules: ``conv_in``; ``block{b}_layer{l}`` (:class:`DenseLayer`,
    1-based); ``transition{b}`` (:class:`Transition`); ``bn_out``; ``fc``.

    Attributes:
      depth: Total depth, e.g. 40 or 100.
      growth_rate: k, channels added per layer.
      bottleneck: Use BN-act-Conv1x1(4k) before each 3x3 conv (the "B").
      compression: theta in (0, 1]; < 1 is the "C" in DenseNet-BC.
      num_classes: Number of output logits.
      width: Multiplier on k and on the initial channel count (rounded,
        >= 1); all other channel counts follow from those.
      initial_channels: Channels of the first conv at ``width=1``; ``None``
        means the paper's choice, 2k with bottleneck and 16 without.
      act: Activation after every BN; swap in a quantized activation here.
      widths: ``None`` (channels from the attributes above) or one channel
        count per prunable decision, in call order: ``conv_in``; then per
        dense layer its bottleneck channels (``conv1``, bottleneck only) and
        its growth (channels it appends to the concatenation); then, after
        blocks 1 and 2, the transition's output channels. Every channel of
        a concatenation belongs to exactly one of these decisions.

    Call:
      ``model.apply(variables, x, train)`` with ``x`` a float32 NHWC batch
      ``(N, H, W, C)`` (H, W >= 4). ``train`` must be a Python bool; ``True``
      requires ``mutable=["batch_stats"]``. Returns float32 logits
      ``(N, num_classes)``.

    Example:
      A small DenseNet (depth 10: two layers per block, k = 12 * 0.25 = 3):

      >>> import jax, jax.numpy as jnp
      >>> from symog_jax.models import init_variables
      >>> model = DenseNet(depth=10, growth_rate=12, bottleneck=False,
      ...                  compression=1.0, width=0.25)
      >>> model.layers_per_block
      2
      >>> x = jnp.zeros((2, 32, 32, 3), jnp.float32)
      >>> variables = init_variables(model, jax.random.key(0), x.shape)
      >>> variables["params"]["fc"]["kernel"].shape   # 4 initial + 3 * 2 * 3 grown channels
      (22, 10)
      >>> apply = jax.jit(model.apply, static_argnames="train")
      >>> apply(variables, x, train=False).shape
      (2, 10)
    """

    depth: int
    growth_rate: int
    bottleneck: bool
    compression: float
    num_classes: int = 10
    width: float = 1.0
    initial_channels: Optional[int] = None
    act: Callable[[jax.Array], jax.Array] = nn.relu
    widths: Optional[Sequence[int]] = None

    def __post_init__(self) -> None:
        # Fail at construction rather than at the first (possibly jitted) init.
        validate_width(self.width)
        per_block = 6 if self.bottleneck else 3
        if self.depth < 4 + per_block or (self.depth - 4) % per_block:
            raise ValueError(
                f"DenseNet depth must be 4 + {per_block}*L with L >= 1 "
                f"(bottleneck={self.bottleneck}), got {self.depth}"
            )
        if self.growth_rate < 1:
            raise ValueError(f"growth_rate must be >= 1, got {self.growth_rate}")
        if not 0 < self.compression <= 1:
            raise ValueError(f"compression must be in (0, 1], got {self.compression}")
        if self.widths is not None:
            self.channel_widths()
        super().__post_init__()

    def channel_widths(self) -> tuple[int, ...]:
        """Channels per decision (see ``widths``): given, or from the attributes.

        Example:
          >>> DenseNet(depth=10, growth_rate=12, bottleneck=False, compression=0.5,
          ...          width=0.25).channel_widths()   # conv_in, 2 growths, transition, ...
          (4, 3, 3, 5, 3, 3, 5, 3, 3)
        """
        per_layer = 2 if self.bottleneck else 1
        count = 1 + _NUM_BLOCKS * self.layers_per_block * per_layer + _NUM_BLOCKS - 1
        if self.widths is not None:
            return check_widths(self.widths, count, f"DenseNet-{self.depth}")
        k = scale_width(self.growth_rate, self.width)
        if self.initial_channels is None:
            channels = 2 * k if self.bottleneck else scale_width(16, self.width)
        else:
            channels = scale_width(self.initial_channels, self.width)
        out = [channels]
        for b in range(1, _NUM_BLOCKS + 1):
            for _ in range(self.layers_per_block):
                out += [4 * k, k] if self.bottleneck else [k]
                channels += k
            if b < _NUM_BLOCKS:
                channels = max(1, int(math.floor(self.compression * channels)))
                out.append(channels)
        return tuple(out)

    @property
    def layers_per_block(self) -> int:
        """Number of :class:`DenseLayer` per dense block."""
        return (self.depth - 4) // (6 if self.bottleneck else 3)

    def decision_names(self) -> tuple[str, ...]:
        """``conv_in``, per layer ``[block{b}_layer{l}_conv1,] block{b}_layer{l}_growth``,
        ``transition1``, ``transition2`` in call order (see ``widths``)."""
        names = ["conv_in"]
        for b in range(1, _NUM_BLOCKS + 1):
            for layer in range(1, self.layers_per_block + 1):
                p = f"block{b}_layer{layer}"
                names += [f"{p}_conv1", f"{p}_growth"] if self.bottleneck else [f"{p}_growth"]
            if b < _NUM_BLOCKS:
                names.append(f"transition{b}")
        return tuple(names)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        check_nhwc(x, type(self).__name__)
        widths = iter(enumerate(self.channel_widths()))
        d, c = next(widths)
        x = S.Conv(
            c, (3, 3), padding="SAME", use_bias=False,
            kernel_init=conv_kernel_init, name="conv_in", out_chan=S.decision(d),
        )(x)
        for b in range(1, _NUM_BLOCKS + 1):
            for layer in range(1, self.layers_per_block + 1):
                inner, inner_chan = None, None
                if self.bottleneck:
                    d, inner = next(widths)
                    inner_chan = S.decision(d)
                d, growth = next(widths)
                x = DenseLayer(
                    growth, self.bottleneck, act=self.act, inner_channels=inner,
                    growth_chan=S.decision(d), inner_chan=inner_chan,
                    name=f"block{b}_layer{layer}"
                )(x, train)
            if b < _NUM_BLOCKS:
                d, c = next(widths)
                x = Transition(c, act=self.act, out_chan=S.decision(d),
                               name=f"transition{b}")(x, train)
        x = S.activation(self.act, batch_norm(train, name="bn_out")(x))
        x = S.global_avg_pool(x)
        return S.Dense(self.num_classes, name="fc")(x)


def densenet40(
    num_classes: int = 10,
    *,
    width: float = 1.0,
    act: Callable[[jax.Array], jax.Array] = nn.relu,
    widths: Optional[Sequence[int]] = None,
) -> DenseNet:
    """DenseNet-40 (k=12): 3 blocks x 12 BN-act-Conv3x3 layers, 16 initial channels.

    About 1.0M parameters at ``width=1`` for 10 classes. Input/output as in
    :class:`DenseNet`.

    Example:
      >>> model = densenet40(num_classes=100, width=0.5)
      >>> model.depth, model.layers_per_block, model.bottleneck
      (40, 12, False)
    """
    return DenseNet(
        depth=40, growth_rate=12, bottleneck=False, compression=1.0,
        num_classes=num_classes, width=width, act=act, widths=widths,
    )


def densenet_bc100(
    num_classes: int = 10,
    *,
    width: float = 1.0,
    act: Callable[[jax.Array], jax.Array] = nn.relu,
    widths: Optional[Sequence[int]] = None,
) -> DenseNet:
    """DenseNet-BC-100 (k=12): bottleneck layers, compression 0.5, 16 layers/block.

    The first conv has 2k = 24 channels. About 0.8M parameters at
    ``width=1`` for 10 classes. Input/output as in :class:`DenseNet`.

    Example:
      >>> model = densenet_bc100(num_classes=10, width=0.25)
      >>> model.depth, model.layers_per_block, model.bottleneck, model.compression
      (100, 16, True, 0.5)
    """
    return DenseNet(
        depth=100, growth_rate=12, bottleneck=True, compression=0.5,
        num_classes=num_classes, width=width, act=act, widths=widths,
    )
