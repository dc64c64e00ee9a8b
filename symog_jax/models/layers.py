"""Small building blocks shared by the model definitions.

Everything here is deliberately thin: the models use stock ``flax.linen``
layers so that parameter leaves keep Flax's default names (``kernel``,
``bias``, ``scale``) which the quantization code keys on.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import flax.linen as nn
import jax

__all__ = [
    "BN_EPSILON",
    "BN_MOMENTUM",
    "batch_norm",
    "check_nhwc",
    "check_widths",
    "conv_kernel_init",
    "scale_width",
    "validate_width",
]

# PyTorch-style running-average momentum (0.9 in Flax's convention). Flax's
# default of 0.99 makes the running statistics lag far behind during the short
# CIFAR runs this library is benchmarked with, which shows up as a large
# train/eval accuracy gap after quantization steps.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# He et al. (2015) initialisation: every conv in these networks feeds a ReLU
# (directly or through BN), and the ResNet/DenseNet papers use it.
conv_kernel_init = nn.initializers.he_normal()


def scale_width(n: int, width: float) -> int:
    """Scale a channel / hidden-feature count by a width multiplier.

    Args:
      n: The count at ``width=1``.
      width: Positive multiplier.

    Returns:
      ``max(1, round(n * width))`` as a Python ``int``.

    Raises:
      ValueError: If ``width`` is not a positive finite number.

    Example:
      >>> scale_width(64, 0.25)
      16
      >>> scale_width(3, 0.1)
      1
    """
    validate_width(width)
    return max(1, int(round(n * width)))


def validate_width(width: Any) -> None:
    """Raise ``ValueError`` unless ``width`` is a positive finite real number.

    Example:
      >>> validate_width(0.5)
    """
    # bool is an int subclass; width=True is almost certainly a config bug.
    if isinstance(width, bool) or not isinstance(width, numbers.Real):
        raise ValueError(f"width must be a positive finite float, got {width!r}")
    if not math.isfinite(width) or width <= 0:
        raise ValueError(f"width must be a positive finite float, got {width!r}")


def batch_norm(train: bool, name: str | None = None) -> nn.BatchNorm:
    """BatchNorm with the library-wide momentum/epsilon over the channel axis.

    Args:
      train: ``True`` normalises with batch statistics and updates the
        ``batch_stats`` collection (the caller must pass
        ``mutable=["batch_stats"]`` to ``apply``); ``False`` uses the running
        averages.
      name: Optional submodule name.

    Returns:
      An unbound ``nn.BatchNorm`` to be called on an NHWC (or NC) array.

    Example:
      >>> bn = batch_norm(train=False, name="bn1")
    """
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        name=name,
    )


def check_nhwc(x: jax.Array, model: str) -> None:
    """Raise ``ValueError`` unless ``x`` is a rank-4 NHWC batch.

    Example:
      >>> import jax.numpy as jnp
      >>> check_nhwc(jnp.zeros((2, 32, 32, 3)), "VGG7")
    """
    if x.ndim != 4:
        raise ValueError(
            f"{model} expects an NHWC batch of rank 4, got shape {tuple(x.shape)}"
        )


def check_widths(widths: Any, expected: int, model: str, *, zero_ok: tuple[int, ...] = ()
                 ) -> tuple[int, ...]:
    """Validate a per-decision channel tuple; return it as a tuple of Python ints.

    Args:
      widths: Channel counts, one per prunable decision of ``model``.
      expected: How many decisions ``model`` has.
      model: Model name for the message.
      zero_ok: Decision indices that may be 0 (e.g. a ResNet stage adding no channels).

    Raises:
      ValueError: (one line) wrong length, or an entry that is not an int >= 1.

    Example:
      >>> check_widths([4, 8], 2, "LeNet5")
      (4, 8)
      >>> check_widths((4,), 2, "LeNet5")
      Traceback (most recent call last):
      ...
      ValueError: LeNet5 widths must have 2 entries (one per prunable decision), got 1
    """
    try:
        values = tuple(widths)
    except TypeError:
        raise ValueError(f"{model} widths must be a sequence of {expected} channel counts, "
                         f"got {widths!r}") from None
    if len(values) != expected:
        raise ValueError(f"{model} widths must have {expected} entries (one per prunable "
                         f"decision), got {len(values)}")
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or \
                v < (0 if i in zero_ok else 1):
            raise ValueError(f"{model} widths[{i}] must be an integer >= "
                             f"{0 if i in zero_ok else 1}, got {v!r}")
        out.append(int(v))
    return tuple(out)
