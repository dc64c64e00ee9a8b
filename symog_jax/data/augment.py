"""Device-side augmentation and normalisation: pure, jittable JAX functions."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

__all__ = ["MEAN", "STD", "normalize", "random_crop_flip", "augmentation_for", "Augmentation"]

# Commonly used per-channel statistics of the training sets, on the [0, 1] pixel scale.
# (Checked against the shared copies: MNIST PNG gives 0.1307 / 0.3081; the CIFAR-10 JPEG q75
# copy gives 0.4913 0.4821 0.4465 / 0.2452 0.2428 0.2606, its std a little lower from JPEG
# smoothing. The usual values are kept so numbers stay comparable with the literature.)
MEAN: dict[str, tuple[float, ...]] = {
    "mnist": (0.1307,),
    "cifar10": (0.4914, 0.4822, 0.4465),
    "cifar100": (0.5071, 0.4865, 0.4409),
}
STD: dict[str, tuple[float, ...]] = {
    "mnist": (0.3081,),
    "cifar10": (0.2470, 0.2435, 0.2616),
    "cifar100": (0.2673, 0.2564, 0.2762),
}

# (rng, images (B, H, W, C)) -> augmented images, same shape and dtype.
Augmentation = Callable[[jax.Array, jax.Array], jax.Array]


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """``(images / 255 - mean) / std`` per channel, as float32.

    Args:
        images: ``(..., C)`` uint8 (or float in [0, 255]).
        mean, std: ``C`` values on the [0, 1] scale, e.g. ``MEAN["cifar10"]``.

    Returns:
        float32 array of the same shape.

    Example:
        >>> x = jnp.full((1, 2, 2, 1), 255, jnp.uint8)
        >>> float(normalize(x, (0.5,), (0.5,))[0, 0, 0, 0])
        1.0
    """
    mean_arr = jnp.asarray(mean, jnp.float32)
    std_arr = jnp.asarray(std, jnp.float32)
    return (jnp.asarray(images).astype(jnp.float32) / 255.0 - mean_arr) / std_arr


def random_crop_flip(
    rng: jax.Array, images: jax.Array, *, padding: int = 4, flip: bool = True
) -> jax.Array:
    """Per-image random crop after zero padding, and random horizontal flip.

    Each image is padded by ``padding`` pixels on every side and an ``H x W`` window is cut
    at an offset drawn uniformly from ``[0, 2 * padding]`` in each direction; with ``flip``
    it is then mirrored left-right with probability 1/2. Pure and jittable (``padding`` and
    ``flip`` are Python values: close over them or mark them static).

    Args:
        rng: a ``jax.random`` key.
        images: ``(B, H, W, C)``, uint8 or float.
        padding: pixels of zero padding per side (0: no cropping).
        flip: whether to apply random horizontal flips.

    Returns:
        Array with the shape and dtype of ``images``.

    Example:
        >>> x = jnp.zeros((8, 32, 32, 3), jnp.uint8)
        >>> aug = jax.jit(random_crop_flip, static_argnames=("padding", "flip"))
        >>> aug(jax.random.key(0), x).shape
        (8, 32, 32, 3)
    """
    images = jnp.asarray(images)
    b, h, w, c = images.shape
    k_y, k_x, k_flip = jax.random.split(rng, 3)
    out = images
    if padding > 0:
        padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
        dy = jax.random.randint(k_y, (b,), 0, 2 * padding + 1)
        dx = jax.random.randint(k_x, (b,), 0, 2 * padding + 1)
        crop = lambda im, y, x: jax.lax.dynamic_slice(im, (y, x, 0), (h, w, c))  # noqa: E731
        out = jax.vmap(crop)(padded, dy, dx)
    if flip:
        mirror = jax.random.bernoulli(k_flip, 0.5, (b,))
        out = jnp.where(mirror[:, None, None, None], out[:, :, ::-1, :], out)
    return out


def _identity(rng: jax.Array, images: jax.Array) -> jax.Array:
    del rng
    return jnp.asarray(images)


def augmentation_for(name: str) -> Augmentation:
    """The standard training augmentation of a data set, as ``fn(rng, images) -> images``.

    CIFAR-10/100: pad-4 random crop + random horizontal flip. MNIST: none (flipping digits
    changes their meaning, and the usual MNIST baselines train without augmentation).

    Example:
        >>> aug = augmentation_for("cifar10")
        >>> aug(jax.random.key(0), jnp.zeros((2, 32, 32, 3), jnp.uint8)).shape
        (2, 32, 32, 3)
    """
    if name in ("cifar10", "cifar100"):
        return functools.partial(random_crop_flip, padding=4, flip=True)
    if name == "mnist":
        return _identity
    raise ValueError(f"No augmentation preset for {name!r}; known: cifar10, cifar100, mnist.")
