"""ImageNet ResNets (He et al., 2016, Table 1): ResNet-18 (basic blocks), ResNet-50 (bottleneck).

Projection shortcuts (1x1 conv + BN, option B) where a block changes the channel count or
the resolution; the stride of a bottleneck block sits on its 3x3 conv (as in torchvision).
"""

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

__all__ = ["ImageNetResNet", "resnet18", "resnet50"]

_STAGE_CHANNELS = (64, 128, 256, 512)
_STAGE_BLOCKS = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}


class ImageNetResNet(S.Described, nn.Module):
    """ResNet-18 / ResNet-50 for ImageNet-sized inputs (NHWC float32 in, logits out).

    Layout: conv7x7/2(64)-BN-act, maxpool3x3/2 (SAME), four stages (64/128/256/512 base
    channels, stride 2 from stage 2 on), global average pool, Dense(num_classes) with bias.
    Basic block (depth 18): conv3x3-BN-act-conv3x3-BN. Bottleneck (depth 50): conv1x1(c)-BN-
    act-conv3x3(c, stride)-BN-act-conv1x1(4c)-BN. Convs have no bias. The first block of a
    stage has a projection shortcut (``proj`` conv1x1 + ``proj_bn``) except stage 1 of
    ResNet-18 (identity: 64 -> 64 at stride 1).

    Submodules: ``conv_in``, ``bn_in``, ``stage{s}_block{b}`` (1-based) with ``conv1``,
    ``bn1``, ``conv2``, ``bn2`` [, ``conv3``, ``bn3``] [, ``proj``, ``proj_bn``], ``fc``.

    Attributes:
      depth: 18 or 50.
      num_classes: Number of output logits (1000 for ImageNet).
      width: Multiplier on every channel count (rounded, >= 1).
      act: Activation after every BN except the last of a block, and after each sum.
      widths: ``None`` (from ``width``) or one channel count per prunable decision:
        ResNet-18: the four residual streams (the stem shares stage 1's, its shortcut is
        the identity), then each block's ``conv1`` channels (8). ResNet-50: the stem, the
        four streams, then each block's ``conv1`` and ``conv2`` channels (2 x 16).

    Call:
      ``model.apply(variables, x, train)``; ``x`` ``(N, H, W, C)`` float32 with H, W >= 32.
      Returns float32 logits ``(N, num_classes)``.

    Example:
      >>> import functools, jax
      >>> from symog_jax.models import count_params
      >>> x = jax.ShapeDtypeStruct((1, 224, 224, 3), jax.numpy.float32)
      >>> shapes = jax.eval_shape(functools.partial(
      ...     ImageNetResNet(depth=18, num_classes=1000).init, train=False), jax.random.key(0), x)
      >>> count_params(shapes["params"])
      11689512
    """

    depth: int
    num_classes: int = 1000
    width: float = 1.0
    act: Callable[[jax.Array], jax.Array] = nn.relu
    widths: Optional[Sequence[int]] = None

    def __post_init__(self) -> None:
        validate_width(self.width)
        if self.depth not in _STAGE_BLOCKS:
            raise ValueError(f"ImageNetResNet depth must be one of {tuple(_STAGE_BLOCKS)}, "
                             f"got {self.depth}")
        if self.widths is not None:
            self.channel_widths()
        super().__post_init__()

    @property
    def bottleneck(self) -> bool:
        """Bottleneck blocks (ResNet-50) or basic blocks (ResNet-18)."""
        return self.depth == 50

    def channel_widths(self) -> tuple[int, ...]:
        """Channels per decision (see ``widths``): given, or from ``width``.

        Example:
          >>> ImageNetResNet(depth=18, width=0.25).channel_widths()
          (16, 32, 64, 128, 16, 16, 32, 32, 64, 64, 128, 128)
        """
        blocks = _STAGE_BLOCKS[self.depth]
        base = [scale_width(c, self.width) for c in _STAGE_CHANNELS]
        if self.bottleneck:
            streams = [scale_width(4 * c, self.width) for c in _STAGE_CHANNELS]
            default = [scale_width(64, self.width)] + streams + [
                base[s] for s in range(4) for _ in range(blocks[s]) for _ in range(2)]
        else:
            default = base + [base[s] for s in range(4) for _ in range(blocks[s])]
        if self.widths is not None:
            return check_widths(self.widths, len(default), f"ResNet-{self.depth}")
        return tuple(default)

    def decision_names(self) -> tuple[str, ...]:
        """Names of the prunable decisions, the order of ``widths`` (see ``widths``)."""
        blocks = [(s, b) for s, n in enumerate(_STAGE_BLOCKS[self.depth], start=1)
                  for b in range(1, n + 1)]
        streams = tuple(f"stream{s}" for s in range(1, 5))
        if self.bottleneck:
            return ("stem",) + streams + tuple(f"stage{s}_block{b}_conv{i}"
                                               for s, b in blocks for i in (1, 2))
        return streams + tuple(f"stage{s}_block{b}_conv1" for s, b in blocks)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        check_nhwc(x, type(self).__name__)
        if x.shape[1] < 32 or x.shape[2] < 32:
            raise ValueError(f"ResNet-{self.depth} needs spatial size >= 32x32 (five stride-2 "
                             f"steps), got {tuple(x.shape)}")
        widths = list(self.channel_widths())
        first = 5 if self.bottleneck else 4       # decisions before the blocks' own
        stream_ids = range(first - 4, first)
        stem_id = 0
        inner = iter(enumerate(widths[first:], start=first))
        x = S.Conv(widths[stem_id], (7, 7), strides=(2, 2), padding="SAME", use_bias=False,
                   kernel_init=conv_kernel_init, name="conv_in",
                   out_chan=S.decision(stem_id))(x)
        x = S.activation(self.act, batch_norm(train, name="bn_in")(x))
        x = S.max_pool(x, (3, 3), (2, 2), padding="SAME")
        for s, (d, n) in enumerate(zip(stream_ids, _STAGE_BLOCKS[self.depth]), start=1):
            for b in range(1, n + 1):
                name = f"stage{s}_block{b}"
                stride = 2 if (s > 1 and b == 1) else 1
                project = b == 1 and (s > 1 or self.bottleneck)
                own = [next(inner) for _ in range(2 if self.bottleneck else 1)]
                x = _Block(widths[d], stride, project, self.bottleneck,
                           tuple(w for _, w in own), act=self.act, out_chan=S.decision(d),
                           inner_chans=tuple(S.decision(i) for i, _ in own),
                           name=name)(x, train)
        x = S.global_avg_pool(x)
        return S.Dense(self.num_classes, name="fc")(x)


class _Block(nn.Module):
    """A basic or bottleneck block with an optional projection shortcut (see the model)."""

    out_channels: int
    stride: int
    project: bool
    bottleneck: bool
    inner: tuple
    act: Callable[[jax.Array], jax.Array] = nn.relu
    out_chan: Optional[tuple] = None
    inner_chans: tuple = (None, None)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        def conv(c, k, s, name, chan):
            return S.Conv(c, (k, k), strides=(s, s), padding="SAME", use_bias=False,
                          kernel_init=conv_kernel_init, name=name, out_chan=chan)

        def act(v):
            return S.activation(self.act, v)
        i1, i2 = (tuple(self.inner_chans) + (None, None))[:2]
        if self.bottleneck:
            y = act(batch_norm(train, "bn1")(conv(self.inner[0], 1, 1, "conv1", i1)(x)))
            y = act(batch_norm(train, "bn2")(conv(self.inner[1], 3, self.stride, "conv2",
                                                  i2)(y)))
            y = batch_norm(train, "bn3")(conv(self.out_channels, 1, 1, "conv3",
                                              self.out_chan)(y))
        else:
            y = act(batch_norm(train, "bn1")(conv(self.inner[0], 3, self.stride, "conv1",
                                                  i1)(x)))
            y = batch_norm(train, "bn2")(conv(self.out_channels, 3, 1, "conv2",
                                              self.out_chan)(y))
        if self.project:
            x = batch_norm(train, "proj_bn")(conv(self.out_channels, 1, self.stride, "proj",
                                                  self.out_chan)(x))
        return act(S.add(y, x))


def resnet18(
    num_classes: int = 1000,
    *,
    width: float = 1.0,
    act: Callable[[jax.Array], jax.Array] = nn.relu,
    widths: Optional[Sequence[int]] = None,
) -> ImageNetResNet:
    """ResNet-18 (11.69M parameters, 1.82G multiply-accumulates at 224x224, 1000 classes).

    Example:
      >>> resnet18(10).channel_widths()[:4]
      (64, 128, 256, 512)
    """
    return ImageNetResNet(depth=18, num_classes=num_classes, width=width, act=act, widths=widths)


def resnet50(
    num_classes: int = 1000,
    *,
    width: float = 1.0,
    act: Callable[[jax.Array], jax.Array] = nn.relu,
    widths: Optional[Sequence[int]] = None,
) -> ImageNetResNet:
    """ResNet-50 (25.56M parameters, 4.1G multiply-accumulates at 224x224, 1000 classes).

    Example:
      >>> resnet50(10).channel_widths()[:5]
      (64, 256, 512, 1024, 2048)
    """
    return ImageNetResNet(depth=50, num_classes=num_classes, width=width, act=act, widths=widths)
