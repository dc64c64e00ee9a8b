"""LeNet-5 variant used by the SYMOG and relaxed-quantization MNIST benchmarks."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax

from symog_jax.models import structure as S
from symog_jax.models.layers import check_nhwc, check_widths, conv_kernel_init, scale_width

__all__ = ["LeNet5"]


class LeNet5(S.Described, nn.Module):
    """32C5-MP2-64C5-MP2-512FC-(num_classes), VALID convs, ReLU, no BN.

    On a 28x28x1 input the spatial size goes 28 -> 24 -> 12 -> 8 -> 4, so the
    first dense layer sees 4*4*64 = 1024 features; on 32x32x3 it sees
    5*5*64 = 1600. Every conv and dense layer has a bias.

    Submodules: ``conv1``, ``conv2``, ``fc1``, ``fc2`` (each with ``kernel``
    and ``bias`` leaves). There are no ``batch_stats``.

    Attributes:
      num_classes: Number of output logits.
      width: Multiplier on the conv channels (32, 64) and the hidden dense
        size (512); each is rounded and kept >= 1. ``num_classes`` is not
        scaled.
      act: Activation applied after every conv and the hidden dense layer;
        swap in a quantized activation here.
      widths: ``None`` (channels from ``width``) or the channel counts of the
        three prunable decisions ``(conv1, conv2, fc1)``, e.g. a pruned net.

    Call:
      ``model.apply(variables, x, train)`` with ``x`` a float32 NHWC batch
      ``(N, H, W, C)`` (H, W >= 16). ``train`` is accepted so that all models
      share one signature, and is ignored. Returns float32 logits
      ``(N, num_classes)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from symog_jax.models import init_variables
      >>> model = LeNet5(num_classes=10)
      >>> x = jnp.zeros((2, 28, 28, 1), jnp.float32)
      >>> variables = init_variables(model, jax.random.key(0), x.shape)
      >>> variables["params"]["fc1"]["kernel"].shape   # 4 * 4 * 64 features on 28x28
      (1024, 512)
      >>> model.apply(variables, x, train=False).shape
      (2, 10)
    """

    num_classes: int = 10
    width: float = 1.0
    act: Callable[[jax.Array], jax.Array] = nn.relu
    widths: Optional[Sequence[int]] = None

    def channel_widths(self) -> tuple[int, ...]:
        """``(conv1, conv2, fc1)`` channels: ``widths``, or the width-scaled defaults.

        Example:
          >>> LeNet5(width=0.5).channel_widths()
          (16, 32, 256)
        """
        if self.widths is not None:
            return check_widths(self.widths, 3, type(self).__name__)
        return tuple(scale_width(n, self.width) for n in (32, 64, 512))

    def decision_names(self) -> tuple[str, ...]:
        """Names of the prunable decisions, the order of ``widths``."""
        return ("conv1", "conv2", "fc1")

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        del train  # no BN or dropout; kept for a uniform training-loop API
        check_nhwc(x, type(self).__name__)
        c1, c2, hidden = self.channel_widths()
        x = S.Conv(
            c1, (5, 5), padding="VALID",
            kernel_init=conv_kernel_init, name="conv1", out_chan=S.decision(0),
        )(x)
        x = S.activation(self.act, x)
        x = S.max_pool(x, (2, 2), (2, 2))
        x = S.Conv(
            c2, (5, 5), padding="VALID",
            kernel_init=conv_kernel_init, name="conv2", out_chan=S.decision(1),
        )(x)
        x = S.activation(self.act, x)
        x = S.max_pool(x, (2, 2), (2, 2))
        x = S.flatten(x)
        x = S.Dense(hidden, kernel_init=conv_kernel_init, name="fc1", out_chan=S.decision(2))(x)
        x = S.activation(self.act, x)
        return S.Dense(self.num_classes, name="fc2")(x)
