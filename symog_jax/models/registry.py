"""Model registry and small helpers shared by the training/eval entry points."""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Callable, Sequence

import flax.core
import flax.linen as nn
import jax
import jax.numpy as jnp

from symog_jax.models.densenet import densenet40, densenet_bc100
from symog_jax.models.layers import validate_width
from symog_jax.models.lenet import LeNet5
from symog_jax.models.resnet import resnet20, resnet32, resnet56
from symog_jax.models.resnet_imagenet import resnet18, resnet50
from symog_jax.models.vgg import VGG7, VGG11

__all__ = ["MODEL_NAMES", "count_params", "create_model", "init_variables"]

Activation = Callable[[jax.Array], jax.Array]

# Every factory takes (num_classes=, width=, act=, widths=) so create_model stays a lookup:
# a model class, or a variant of one as a partial (flax's examples do the same).
_FACTORIES: dict[str, Callable[..., nn.Module]] = {
    "lenet5": LeNet5,
    "vgg7": VGG7,
    "vgg11": VGG11,
    "densenet40": densenet40,
    "densenet_bc100": densenet_bc100,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "resnet18": resnet18,
    "resnet50": resnet50,
}

_FAST_COMPILE_OPTIONS = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
}

#: Names accepted by :func:`create_model`, in a stable order.
MODEL_NAMES: tuple[str, ...] = tuple(_FACTORIES)


def create_model(
    name: str,
    num_classes: int,
    *,
    width: float = 1.0,
    act: Activation = nn.relu,
    widths: Sequence[int] | None = None,
) -> nn.Module:
    """Build a registered classifier by name.

    Args:
      name: One of :data:`MODEL_NAMES` (case-insensitive): ``"lenet5"``,
        ``"vgg7"``, ``"vgg11"``, ``"densenet40"``, ``"densenet_bc100"``,
        ``"resnet20"``, ``"resnet32"``, ``"resnet56"`` (CIFAR) and ``"resnet18"``,
        ``"resnet50"`` (the ImageNet form, projection shortcuts).
      num_classes: Number of output logits, an integer >= 2.
      width: Positive multiplier on every channel / hidden-feature count
        (not on ``num_classes``); e.g. 0.25 for quick CPU runs.
      act: Activation used wherever the architecture has a ReLU; pass a
        quantized activation to quantize activations.
      widths: ``None`` (today's networks, from ``width``) or one channel count
        per prunable decision of the architecture (documented on each model
        class, listed by :func:`symog_jax.pruning.architecture`); a pruned
        network is the registry model with its kept channels here.

    Returns:
      An unbound ``flax.linen`` module. Call it as
      ``model.apply(variables, x, train)`` with ``x`` a float32 NHWC batch
      ``(N, H, W, C)``; it returns float32 logits ``(N, num_classes)``.
      Models with BatchNorm keep running statistics in the ``batch_stats``
      collection, so training calls need ``mutable=["batch_stats"]``.

    Raises:
      ValueError: For an unknown ``name``, a non-positive/non-finite
        ``width``, ``num_classes`` that is not an integer >= 2, or ``widths``
        of the wrong length or with a count < 1.

    Example:
      >>> model = create_model("ResNet20", num_classes=100, width=0.25)  # any case
      >>> type(model).__name__, model.depth, model.num_classes, model.width
      ('ResNet', 20, 100, 0.25)
      >>> create_model("lenet5", 10, widths=(8, 16, 64)).channel_widths()
      (8, 16, 64)
      >>> create_model("resnet19", num_classes=10)  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      ValueError: unknown model name 'resnet19'; valid names: lenet5, vgg7, ..., resnet50
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in _FACTORIES:
        raise ValueError(
            f"unknown model name {name!r}; valid names: {', '.join(MODEL_NAMES)}"
        )
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, numbers.Integral)
        or num_classes < 2
    ):
        raise ValueError(
            f"num_classes must be an integer >= 2, got {num_classes!r} "
            f"(model {key!r}; valid names: {', '.join(MODEL_NAMES)})"
        )
    try:
        validate_width(width)
    except ValueError as e:
        raise ValueError(
            f"{e} (model {key!r}; valid names: {', '.join(MODEL_NAMES)})"
        ) from None
    if widths is not None:
        try:
            widths = tuple(widths)
        except TypeError:
            raise ValueError(f"widths must be a sequence of channel counts, got {widths!r} "
                             f"(model {key!r})") from None
    return _FACTORIES[key](num_classes=int(num_classes), width=float(width), act=act,
                           widths=widths)


def init_variables(
    model: nn.Module,
    rng: jax.Array | int,
    input_shape: Sequence[int],
) -> dict[str, Any]:
    """Initialise a model's variables from an all-zero float32 batch.

    Runs ``model.init(rng, x, train=False)``: eval mode, so BatchNorm running
    statistics start at their defaults (mean 0, var 1) instead of being
    updated with the statistics of a dummy zero batch.

    Args:
      model: Any model from this package (or one with the same call
        signature).
      rng: A PRNG key, or an ``int`` seed.
      input_shape: NHWC shape ``(N, H, W, C)``; an ``(H, W, C)`` shape gets a
        batch dimension of 1.

    Returns:
      A plain nested dict of collections, ``{"params": ...}`` plus
      ``"batch_stats"`` for models with BatchNorm.

    Example:
      >>> import jax
      >>> from symog_jax.models import LeNet5
      >>> v = init_variables(LeNet5(), jax.random.key(0), (28, 28, 1))
      >>> v["params"]["conv1"]["kernel"].shape
      (5, 5, 1, 32)

    For parameter counts without allocating anything, use
    ``jax.eval_shape`` on the same call and pass the result to
    :func:`count_params`. The init is jitted, with XLA's optimisation passes
    turned off on CPU, because compiling one random-number generator per
    parameter dominates its cost there; a key made with
    ``jax.random.key(seed, impl="rbg")`` compiles faster still.
    """
    shape = tuple(int(d) for d in input_shape)
    if len(shape) == 3:
        shape = (1,) + shape
    if len(shape) != 4:
        raise ValueError(f"input_shape must be (N, H, W, C) or (H, W, C), got {input_shape!r}")
    if isinstance(rng, numbers.Integral):
        rng = jax.random.key(int(rng))
    # One jitted program compiles faster than op-by-op init, where every
    # distinct layer shape triggers its own compilation. On CPU, XLA's
    # optimisation passes over the per-parameter RNG code dominate even that
    # (about 2 minutes for DenseNet-40 on 2 cores, ~10 s without them), and an
    # init runs once, so its runtime is irrelevant.
    compiler_options = _FAST_COMPILE_OPTIONS if jax.default_backend() == "cpu" else None
    init = jax.jit(functools.partial(model.init, train=False), compiler_options=compiler_options)
    variables = init(rng, jnp.zeros(shape, jnp.float32))
    return flax.core.unfreeze(variables)


def count_params(tree: Any) -> int:
    """Total number of scalar entries over all leaves of a pytree.

    Works on concrete arrays and on the ``jax.ShapeDtypeStruct`` leaves that
    ``jax.eval_shape`` returns. Pass ``variables["params"]`` for trainable
    parameters only, or ``variables["batch_stats"]`` for BN statistics.

    Example:
      >>> import jax, functools
      >>> from symog_jax.models import LeNet5
      >>> x = jax.ShapeDtypeStruct((1, 28, 28, 1), jax.numpy.float32)
      >>> shapes = jax.eval_shape(
      ...     functools.partial(LeNet5().init, train=False), jax.random.key(0), x)
      >>> count_params(shapes["params"])
      582026
    """
    return sum(math.prod(jnp.shape(leaf)) for leaf in jax.tree_util.tree_leaves(tree))
