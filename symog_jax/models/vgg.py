"""VGG-style CIFAR classifiers: VGG7 (SYMOG / BinaryConnect) and VGG11."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax

from symog_jax.models import structure as S
from symog_jax.models.layers import (batch_norm, check_nhwc, check_widths, conv_kernel_init,
                                     scale_width)

__all__ = ["VGG7", "VGG11"]

# "M" marks a 2x2/stride-2 max pool; integers are 3x3 conv output channels.
_VGG11_CFG: tuple[int | str, ...] = (
    64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M",
)
_VGG7_CFG: tuple[int | str, ...] = (128, 128, "M", 256, 256, "M", 512, 512, "M")


def _conv_stack(
    x: jax.Array,
    cfg: Sequence[int | str],
    channels: Sequence[int],
    act: Callable[[jax.Array], jax.Array],
    train: bool,
) -> jax.Array:
    """Run a VGG feature extractor; convs/BNs are named conv{i}/bn{i} from 1.

    ``channels[i]`` is the output channel count of the (i+1)-th conv of ``cfg``.
    """
    i = 0
    for item in cfg:
        if item == "M":
            x = S.max_pool(x, (2, 2), (2, 2))
            continue
        i += 1
        # No conv bias: the following BN's shift makes it redundant, and a
        # bias would be one more unquantized parameter per channel.
        x = S.Conv(
            channels[i - 1], (3, 3), padding="SAME", use_bias=False,
            kernel_init=conv_kernel_init, name=f"conv{i}", out_chan=S.decision(i - 1),
        )(x)
        x = batch_norm(train, name=f"bn{i}")(x)
        x = S.activation(act, x)
    return x


class VGG7(S.Described, nn.Module):
    """2x128C3-MP2-2x256C3-MP2-2x512C3-MP2-1024FC-(num_classes).

    Every 3x3 SAME conv is followed by BN and ``act`` and has no bias. The
    1024-unit hidden dense layer is also followed by BN and ``act`` (and so
    has no bias either). This follows the BinaryConnect-style VGG7 used in
    low-bit benchmarks, where every hidden layer is batch-normalised, and
    keeps the pre-activations of the 8192x1024 layer -- by far the largest --
    on a fixed scale however coarsely its weights are quantized. The final
    dense layer has a bias and no BN.

    On 32x32 inputs the flattened feature is 4*4*512 = 8192.

    Submodules: ``conv1``..``conv6`` / ``bn1``..``bn6``, ``fc1`` / ``bn_fc1``,
    ``fc2``.

    Attributes:
      num_classes: Number of output logits.
      width: Multiplier on all conv channels and the 1024 hidden units
        (rounded, >= 1); ``num_classes`` is not scaled.
      act: Activation after every BN; swap in a quantized activation here.
      widths: ``None`` (channels from ``width``) or the channel counts of the
        seven prunable decisions ``(conv1, ..., conv6, fc1)``.

    Call:
      ``model.apply(variables, x, train)`` with ``x`` a float32 NHWC batch
      ``(N, H, W, C)`` (H, W >= 8). ``train`` must be a Python bool: ``True``
      uses batch statistics and requires ``mutable=["batch_stats"]``;
      ``False`` uses the running averages. Returns float32 logits
      ``(N, num_classes)``.

    Example:
      >>> import functools, jax, jax.numpy as jnp
      >>> from symog_jax.models import init_variables
      >>> model = VGG7(num_classes=10, width=0.25)
      >>> x = jnp.zeros((2, 32, 32, 3), jnp.float32)
      >>> variables = init_variables(model, jax.random.key(0), x.shape)
      >>> variables["params"]["fc1"]["kernel"].shape   # 4 * 4 * 128 features at width 0.25
      (2048, 256)
      >>> train_apply = jax.jit(functools.partial(
      ...     model.apply, train=True, mutable=["batch_stats"]))
      >>> logits, updates = train_apply(variables, x)
      >>> logits.shape
      (2, 10)
    """

    num_classes: int = 10
    width: float = 1.0
    act: Callable[[jax.Array], jax.Array] = nn.relu
    widths: Optional[Sequence[int]] = None

    def channel_widths(self) -> tuple[int, ...]:
        """Channels per decision ``(conv1, ..., conv6, fc1)``: ``widths`` or width-scaled.

        Example:
          >>> VGG7(width=0.25).channel_widths()
          (32, 32, 64, 64, 128, 128, 256)
        """
        if self.widths is not None:
            return check_widths(self.widths, 7, type(self).__name__)
        return tuple(scale_width(int(c), self.width) for c in _VGG7_CFG if c != "M") + (
            scale_width(1024, self.width),)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        check_nhwc(x, type(self).__name__)
        widths = self.channel_widths()
        x = _conv_stack(x, _VGG7_CFG, widths[:6], self.act, train)
        x = S.flatten(x)
        x = S.Dense(
            widths[6], use_bias=False,
            kernel_init=conv_kernel_init, name="fc1", out_chan=S.decision(6),
        )(x)
        x = batch_norm(train, name="bn_fc1")(x)
        x = S.activation(self.act, x)
        return S.Dense(self.num_classes, name="fc2")(x)

    def decision_names(self) -> tuple[str, ...]:
        """Names of the prunable decisions, the order of ``widths``."""
        return tuple(f"conv{i}" for i in range(1, 7)) + ("fc1",)


class VGG11(S.Described, nn.Module):
    """CIFAR VGG11: 64-M-128-M-256-256-M-512-512-M-512-512-M, then one Dense.

    Every 3x3 SAME conv is followed by BN and ``act`` and has no bias. The
    classifier is a single ``Dense(num_classes)`` (with bias) on the 512-d
    feature, the usual CIFAR adaptation: the ImageNet 4096-4096 head would
    would add ~20M parameters on top of a 1x1 spatial map. The
    feature is the global average of the last map, which for 32x32 inputs is
    exactly the flattened 1x1x512 tensor, and keeps the head shape
    independent of larger input sizes.

    Submodules: ``conv1``..``conv8`` / ``bn1``..``bn8``, ``fc``.

    Attributes:
      num_classes: Number of output logits.
      width: Multiplier on all conv channels (rounded, >= 1).
      act: Activation after every BN; swap in a quantized activation here.
      widths: ``None`` (channels from ``width``) or the channel counts of the
        eight prunable decisions ``(conv1, ..., conv8)``.

    Call:
      ``model.apply(variables, x, train)`` with ``x`` a float32 NHWC batch
      ``(N, H, W, C)`` with H, W >= 32 (five 2x2 pools). ``train`` as in
      :class:`VGG7`. Returns float32 logits ``(N, num_classes)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from symog_jax.models import init_variables
      >>> model = VGG11(num_classes=10, width=0.25)
      >>> x = jnp.zeros((2, 32, 32, 3), jnp.float32)
      >>> variables = init_variables(model, jax.random.key(0), x.shape)
      >>> apply = jax.jit(model.apply, static_argnames="train")
      >>> apply(variables, x, train=False).shape
      (2, 10)
    """

    num_classes: int = 10
    width: float = 1.0
    act: Callable[[jax.Array], jax.Array] = nn.relu
    widths: Optional[Sequence[int]] = None

    def channel_widths(self) -> tuple[int, ...]:
        """Channels per decision ``(conv1, ..., conv8)``: ``widths`` or width-scaled.

        Example:
          >>> VGG11(width=0.5).channel_widths()
          (32, 64, 128, 128, 256, 256, 256, 256)
        """
        if self.widths is not None:
            return check_widths(self.widths, 8, type(self).__name__)
        return tuple(scale_width(int(c), self.width) for c in _VGG11_CFG if c != "M")

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        name = type(self).__name__
        check_nhwc(x, name)
        if x.shape[1] < 32 or x.shape[2] < 32:
            # Otherwise the fifth pool yields an empty map and a silent 0-d feature.
            raise ValueError(
                f"{name} needs spatial size >= 32x32 (five 2x2 max pools), "
                f"got {tuple(x.shape)}"
            )
        x = _conv_stack(x, _VGG11_CFG, self.channel_widths(), self.act, train)
        x = S.global_avg_pool(x)
        return S.Dense(self.num_classes, name="fc")(x)

    def decision_names(self) -> tuple[str, ...]:
        """Names of the prunable decisions, the order of ``widths``."""
        return tuple(f"conv{i}" for i in range(1, 9))
