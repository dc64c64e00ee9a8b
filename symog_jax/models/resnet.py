"""CIFAR ResNets (He et al., "Deep Residual Learning for Image Recognition", 2016, Sec. 4.2)."""

from __future__ import annotations

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

__all__ = ["BasicBlock", "ResNet", "option_a_shortcut", "resnet20", "resnet32", "resnet56"]

_STAGE_CHANNELS = (16, 32, 64)


def option_a_shortcut(x: jax.Array, out_channels: int, stride: int,
                      chan: Optional[tuple] = None) -> jax.Array:
    """Parameter-free shortcut: subsample spatially, zero-pad extra channels.

    This is option (A) of the paper. It is used (instead of a 1x1 projection)
    so that the CIFAR ResNets have exactly the paper's parameter counts and
    so that no shortcut weights exist that would need quantizing. The new
    channels are appended after the existing ones.

    Args:
      x: NHWC input.
      out_channels: Channels of the residual branch; must be >= x's channels.
      stride: Spatial subsampling factor (1 or 2); a strided slice matches the
        ``ceil(H / stride)`` output size of a SAME-padded strided conv.
      chan: the output's channel axis in the model's structure (see
        :func:`symog_jax.models.structure.pad_channels`).

    Returns:
      ``(N, ceil(H / stride), ceil(W / stride), out_channels)``.

    Example:
      >>> import jax.numpy as jnp
      >>> option_a_shortcut(jnp.ones((1, 8, 8, 16)), 32, 2).shape
      (1, 4, 4, 32)
    """
    return S.pad_channels(x, out_channels, stride, chan)


class BasicBlock(nn.Module):
    """conv3x3-BN-act-conv3x3-BN, plus option-A shortcut, then act.

    Submodules ``conv1``, ``bn1``, ``conv2``, ``bn2`` (convs without bias:
    BN follows each). Input ``(N, H, W, C)`` with ``C <= out_channels`` ->
    output ``(N, ceil(H / stride), ceil(W / stride), out_channels)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from symog_jax.models import init_variables
      >>> block = BasicBlock(out_channels=32, stride=2)
      >>> x = jnp.zeros((1, 8, 8, 16))
      >>> v = init_variables(block, jax.random.key(0), x.shape)
      >>> block.apply(v, x, train=False).shape
      (1, 4, 4, 32)
    """

    out_channels: int
    stride: int = 1
    act: Callable[[jax.Array], jax.Array] = nn.relu
    #: Channels of ``conv1``/``bn1`` (``None``: ``out_channels``); pruning changes it.
    inner_channels: Optional[int] = None
    #: Channel axes (:mod:`~symog_jax.models.structure`) of the output and of ``conv1``.
    out_chan: Optional[tuple] = None
    inner_chan: Optional[tuple] = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        s = (self.stride, self.stride)
        inner = self.out_channels if self.inner_channels is None else self.inner_channels
        y = S.Conv(
            inner, (3, 3), strides=s, padding="SAME", use_bias=False,
            kernel_init=conv_kernel_init, name="conv1", out_chan=self.inner_chan,
        )(x)
        y = S.activation(self.act, batch_norm(train, name="bn1")(y))
        y = S.Conv(
            self.out_channels, (3, 3), padding="SAME", use_bias=False,
            kernel_init=conv_kernel_init, name="conv2", out_chan=self.out_chan,
        )(y)
        y = batch_norm(train, name="bn2")(y)
        shortcut = option_a_shortcut(x, self.out_channels, self.stride, self.out_chan)
        return S.activation(self.act, S.add(y, shortcut))


class ResNet(S.Described, nn.Module):
    """CIFAR ResNet of depth 6n+2 with basic blocks and option-A shortcuts.

    Layout: conv3x3(16)-BN-act, then three stages of n :class:`BasicBlock`
    with 16/32/64 channels (the first block of stages 2 and 3 has stride 2),
    global average pool, Dense(num_classes). All shortcuts are identity /
    subsample+zero-pad (option A), so every parameter lives in a conv, BN or
    the final dense layer. ResNet-20 has ~0.27M parameters.

    Submodules: ``conv_in``, ``bn_in``, ``stage{s}_block{b}`` (1-based), ``fc``.

    Attributes:
      depth: 6n+2, e.g. 20, 32, 56, 110.
      num_classes: Number of output logits.
      width: Multiplier on the 16/32/64 stage channels (rounded, >= 1).
      act: Activation after the stem BN, inside each block and after each
        residual sum; swap in a quantized activation here.
      widths: ``None`` (channels from ``width``) or one channel count per
        prunable decision, ``3 + 3n`` of them: ``(stream1, stream2_extra,
        stream3_extra)`` then the inner (``conv1``) channels of every block in
        call order. Option-A shortcuts carry stage s's stream channels into
        stage s+1 as its first channels, so the residual stream of stage s has
        ``stream1 + ... + streamS_extra`` channels: channel j of the stem is
        channel j of every later stage, and one decision keeps or removes it
        everywhere (the extras may be 0; the inner counts are >= 1).

    Call:
      ``model.apply(variables, x, train)`` with ``x`` a float32 NHWC batch
      ``(N, H, W, C)``. ``train`` must be a Python bool; ``True`` requires
      ``mutable=["batch_stats"]``. Returns float32 logits ``(N, num_classes)``.

    Example:
      >>> import functools, jax, jax.numpy as jnp
      >>> from symog_jax.models import init_variables
      >>> model = ResNet(depth=20, num_classes=10, width=0.25)
      >>> x = jnp.zeros((2, 32, 32, 3), jnp.float32)
      >>> variables = init_variables(model, jax.random.key(0), x.shape)
      >>> train_apply = jax.jit(functools.partial(
      ...     model.apply, train=True, mutable=["batch_stats"]))
      >>> logits, new_state = train_apply(variables, x)
      >>> logits.shape, sorted(new_state)
      ((2, 10), ['batch_stats'])
    """

    depth: int
    num_classes: int = 10
    width: float = 1.0
    act: Callable[[jax.Array], jax.Array] = nn.relu
    widths: Optional[Sequence[int]] = None

    def __post_init__(self) -> None:
        # Fail at construction rather than at the first (possibly jitted) init.
        validate_width(self.width)
        if self.depth < 8 or (self.depth - 2) % 6:
            raise ValueError(f"ResNet depth must be 6n+2 with n >= 1, got {self.depth}")
        if self.widths is not None:
            check_widths(self.widths, 3 + 3 * self.blocks_per_stage, f"ResNet-{self.depth}",
                         zero_ok=(1, 2))
        super().__post_init__()

    def channel_widths(self) -> tuple[int, ...]:
        """Channels per decision (see ``widths``): given, or from ``width``.

        Example:
          >>> ResNet(depth=8, width=0.5).channel_widths()   # streams 8, 16-8, 32-16
          (8, 8, 16, 8, 16, 32)
        """
        if self.widths is not None:
            return check_widths(self.widths, 3 + 3 * self.blocks_per_stage,
                                f"ResNet-{self.depth}", zero_ok=(1, 2))
        c = [scale_width(n, self.width) for n in _STAGE_CHANNELS]
        n = self.blocks_per_stage
        return (c[0], c[1] - c[0], c[2] - c[1]) + tuple(c[s] for s in range(3) for _ in range(n))

    @property
    def blocks_per_stage(self) -> int:
        """n in depth = 6n + 2."""
        return (self.depth - 2) // 6

    def decision_names(self) -> tuple[str, ...]:
        """``stream1..3`` then ``stage{s}_block{b}_conv1`` (see ``widths``)."""
        n = self.blocks_per_stage
        return ("stream1", "stream2", "stream3") + tuple(
            f"stage{s}_block{b}_conv1" for s in (1, 2, 3) for b in range(1, n + 1))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        check_nhwc(x, type(self).__name__)
        widths = self.channel_widths()
        channels = [sum(widths[:s]) for s in (1, 2, 3)]     # residual stream per stage
        inner = iter(enumerate(widths[3:], start=3))
        x = S.Conv(
            channels[0], (3, 3), padding="SAME", use_bias=False,
            kernel_init=conv_kernel_init, name="conv_in", out_chan=S.stream(range(1)),
        )(x)
        x = S.activation(self.act, batch_norm(train, name="bn_in")(x))
        for s, c in enumerate(channels, start=1):
            for b in range(1, self.blocks_per_stage + 1):
                stride = 2 if (s > 1 and b == 1) else 1
                d, inner_width = next(inner)
                x = BasicBlock(c, stride, act=self.act, inner_channels=inner_width,
                               out_chan=S.stream(range(s)), inner_chan=S.decision(d),
                               name=f"stage{s}_block{b}")(x, train)
        x = S.global_avg_pool(x)
        return S.Dense(self.num_classes, name="fc")(x)


def resnet20(
    num_classes: int = 10,
    *,
    width: float = 1.0,
    act: Callable[[jax.Array], jax.Array] = nn.relu,
    widths: Optional[Sequence[int]] = None,
) -> ResNet:
    """ResNet-20 (n=3, ~0.27M params). Input/output as in :class:`ResNet`.

    Example:
      >>> model = resnet20(num_classes=10)
      >>> model.depth, model.blocks_per_stage
      (20, 3)
    """
    return ResNet(depth=20, num_classes=num_classes, width=width, act=act, widths=widths)


def resnet32(
    num_classes: int = 10,
    *,
    width: float = 1.0,
    act: Callable[[jax.Array], jax.Array] = nn.relu,
    widths: Optional[Sequence[int]] = None,
) -> ResNet:
    """ResNet-32 (n=5, ~0.46M params). Input/output as in :class:`ResNet`.

    Example:
      >>> model = resnet32(num_classes=100, width=0.5)
      >>> model.blocks_per_stage, model.num_classes, model.width
      (5, 100, 0.5)
    """
    return ResNet(depth=32, num_classes=num_classes, width=width, act=act, widths=widths)


def resnet56(
    num_classes: int = 10,
    *,
    width: float = 1.0,
    act: Callable[[jax.Array], jax.Array] = nn.relu,
    widths: Optional[Sequence[int]] = None,
) -> ResNet:
    """ResNet-56 (n=9, ~0.85M params). Input/output as in :class:`ResNet`.

    Example:
      >>> model = resnet56(num_classes=10, width=0.25)
      >>> model.blocks_per_stage
      9
    """
    return ResNet(depth=56, num_classes=num_classes, width=width, act=act, widths=widths)
