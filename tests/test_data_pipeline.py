"""Tests of batching (symog_jax.data.pipeline) and device augmentation (data.augment)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symog_jax.data import (
    MEAN,
    STD,
    augmentation_for,
    epoch_batches,
    normalize,
    num_batches,
    random_crop_flip,
)


def _data(n: int = 10):
    images = np.arange(n * 2 * 2 * 1, dtype=np.uint8).reshape(n, 2, 2, 1)
    return images, np.arange(n, dtype=np.int64)


@pytest.mark.parametrize(
    "n, bs, drop, want",
    [
        (10, 4, True, 2),
        (10, 4, False, 3),
        (8, 4, True, 2),
        (8, 4, False, 2),
        (3, 4, True, 0),
        (0, 4, False, 0),
    ],
)
def test_num_batches(n, bs, drop, want):
    assert num_batches(n, bs, drop) == want
    images, labels = _data(n)
    assert (
        len(list(epoch_batches(images, labels, bs, seed=0, epoch=0, drop_remainder=drop))) == want
    )


def test_epoch_batches_deterministic_and_epoch_dependent():
    images, labels = _data(50)

    def run(seed, epoch):
        return [y.tolist() for _, y in epoch_batches(images, labels, 8, seed=seed, epoch=epoch)]

    assert run(3, 1) == run(3, 1)
    assert run(3, 1) != run(3, 2)
    assert run(3, 1) != run(4, 1)
    for x, y in epoch_batches(images, labels, 8, seed=0, epoch=0):
        assert x.shape == (8, 2, 2, 1) and x.dtype == np.uint8 and y.dtype == np.int32
        np.testing.assert_array_equal(x, images[y])  # images stay paired with their labels


def test_epoch_batches_cover_every_example_once():
    images, labels = _data(23)
    seen = np.concatenate(
        [y for _, y in epoch_batches(images, labels, 5, seed=1, epoch=7, drop_remainder=False)]
    )
    assert sorted(seen.tolist()) == list(range(23))
    assert [len(y) for _, y in epoch_batches(images, labels, 5, seed=1, epoch=7)] == [5] * 4
    in_order = [y for _, y in epoch_batches(images, labels, 5, seed=1, epoch=7, shuffle=False)]
    np.testing.assert_array_equal(np.concatenate(in_order), np.arange(20))


def test_epoch_batches_resume_mid_epoch():
    images, labels = _data(40)
    full = [y for _, y in epoch_batches(images, labels, 6, seed=2, epoch=5)]
    resumed = [y for _, y in epoch_batches(images, labels, 6, seed=2, epoch=5, start_batch=4)]
    assert len(resumed) == len(full) - 4
    for a, b in zip(full[4:], resumed):
        np.testing.assert_array_equal(a, b)


def _all_crops_and_flips(image: np.ndarray, padding: int) -> list[np.ndarray]:
    """Brute force: every window of the zero-padded image, each also mirrored."""
    h, w, _ = image.shape
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    out = []
    for y in range(2 * padding + 1):
        for x in range(2 * padding + 1):
            crop = padded[y : y + h, x : x + w]
            out += [crop, crop[:, ::-1]]
    return out


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_random_crop_flip_matches_brute_force(dtype):
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, (16, 6, 5, 3)).astype(dtype)  # no zeros: padding is visible
    fn = jax.jit(random_crop_flip, static_argnames=("padding", "flip"))
    out = np.asarray(fn(jax.random.key(1), jnp.asarray(images), padding=2))
    assert out.shape == images.shape and out.dtype == dtype
    for img, got in zip(images, out):
        assert any(np.array_equal(got, c) for c in _all_crops_and_flips(img, 2))
    # Per-image randomness: not every image got the same transformation.
    variants = set()
    for img, got in zip(images, out):
        variants.add(
            next(i for i, c in enumerate(_all_crops_and_flips(img, 2)) if np.array_equal(got, c))
        )
    assert len(variants) > 1
    # Another key gives another result; the same key the same one.
    again = np.asarray(fn(jax.random.key(1), jnp.asarray(images), padding=2))
    other = np.asarray(fn(jax.random.key(2), jnp.asarray(images), padding=2))
    np.testing.assert_array_equal(out, again)
    assert not np.array_equal(out, other)


def test_random_crop_flip_options():
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (64, 4, 4, 1)), jnp.uint8)
    same = random_crop_flip(jax.random.key(0), images, padding=0, flip=False)
    np.testing.assert_array_equal(same, images)
    flipped = np.asarray(random_crop_flip(jax.random.key(0), images, padding=0, flip=True))
    mirrored = [np.array_equal(f, np.asarray(i)[:, ::-1]) for f, i in zip(flipped, images)]
    assert 10 < sum(mirrored) < 54  # about half of 64


def test_normalize_and_constants():
    x = jnp.asarray([[[[0, 128, 255]]]], jnp.uint8)
    out = normalize(x, MEAN["cifar10"], STD["cifar10"])
    assert out.dtype == jnp.float32
    want = (np.array([0, 128, 255]) / 255.0 - np.array(MEAN["cifar10"])) / np.array(STD["cifar10"])
    np.testing.assert_allclose(np.asarray(out)[0, 0, 0], want, rtol=1e-5, atol=1e-6)
    assert jax.jit(normalize, static_argnums=(1, 2))(x, (0.5,) * 3, (0.5,) * 3).shape == x.shape
    for name in ("mnist", "cifar10", "cifar100"):
        assert len(MEAN[name]) == len(STD[name]) == (1 if name == "mnist" else 3)


def test_augmentation_presets():
    images = jnp.asarray(np.random.default_rng(0).integers(1, 256, (8, 32, 32, 3)), jnp.uint8)
    cifar = jax.jit(augmentation_for("cifar10"))(jax.random.key(0), images)
    assert cifar.shape == images.shape and not np.array_equal(cifar, images)
    assert augmentation_for("cifar100").keywords == {"padding": 4, "flip": True}
    mnist = augmentation_for("mnist")(jax.random.key(0), images[..., :1])
    np.testing.assert_array_equal(mnist, images[..., :1])
    with pytest.raises(ValueError, match="No augmentation preset"):
        augmentation_for("imagenet")
