"""The in-memory container every loader returns."""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["ImageDataset"]


# eq=False: the generated __eq__ would compare arrays element-wise and fail on `bool(...)`.
@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
    """Train and test splits of an image classification data set, held as numpy arrays.

    Attributes:
        name: short data set name, e.g. ``"mnist"`` or ``"cifar10"``.
        train_images: ``(N, H, W, C)`` uint8; ``C == 1`` for greyscale (always 4-D).
        train_labels: ``(N,)`` int32 in ``[0, num_classes)``.
        test_images: ``(M, H, W, C)`` uint8, same ``(H, W, C)`` as the train images.
        test_labels: ``(M,)`` int32.
        class_names: one name per class; label ``i`` means ``class_names[i]``.
        source: human-readable description of where the data came from,
            e.g. ``"image folder /data/cifar10-jpeg.tar.gz"``.

    Example:
        >>> from symog_jax.data import load_dataset
        >>> ds = load_dataset("mnist", source="bundled")   # offline: the 5k subset
        >>> ds.image_shape, ds.num_classes, ds.num_train, ds.num_test
        ((28, 28, 1), 10, 4000, 1000)
        >>> ds.train_images.dtype, ds.train_labels.dtype
        (dtype('uint8'), dtype('int32'))
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]
    source: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"ImageDataset.name must be a non-empty str, got {self.name!r}")
        if not isinstance(self.class_names, tuple) or not all(
            isinstance(c, str) for c in self.class_names
        ):
            raise TypeError(
                f"{self.name}: class_names must be a tuple of str, got {self.class_names!r}"
            )
        if not self.class_names:
            raise ValueError(f"{self.name}: class_names is empty")
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            if not isinstance(images, np.ndarray) or not isinstance(labels, np.ndarray):
                raise TypeError(f"{self.name}: {split} images and labels must be numpy arrays")
            if images.dtype != np.uint8 or images.ndim != 4:
                raise ValueError(
                    f"{self.name}: {split}_images must be uint8 of shape (N, H, W, C), "
                    f"got {images.dtype} {images.shape}"
                )
            if labels.dtype != np.int32 or labels.ndim != 1:
                raise ValueError(
                    f"{self.name}: {split}_labels must be int32 of shape (N,), "
                    f"got {labels.dtype} {labels.shape}"
                )
            if len(images) != len(labels):
                raise ValueError(
                    f"{self.name}: {len(images)} {split} images but {len(labels)} labels"
                )
            if len(labels) and (labels.min() < 0 or labels.max() >= len(self.class_names)):
                raise ValueError(
                    f"{self.name}: {split} labels must lie in [0, {len(self.class_names)}), "
                    f"got range [{labels.min()}, {labels.max()}]"
                )
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise ValueError(
                f"{self.name}: train images are {self.train_images.shape[1:]} but test images "
                f"are {self.test_images.shape[1:]}"
            )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of every image."""
        h, w, c = self.train_images.shape[1:]
        return (int(h), int(w), int(c))

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(class_names)``)."""
        return len(self.class_names)

    @property
    def num_train(self) -> int:
        """Number of training examples."""
        return len(self.train_labels)

    @property
    def num_test(self) -> int:
        """Number of test examples."""
        return len(self.test_labels)

    def summary(self) -> str:
        """One short human-readable paragraph describing the data set.

        Example:
            >>> ds = ImageDataset(
            ...     "toy", np.zeros((4, 8, 8, 3), np.uint8), np.array([0, 1, 2, 0], np.int32),
            ...     np.zeros((2, 8, 8, 3), np.uint8), np.array([1, 2], np.int32),
            ...     class_names=("cat", "dog", "bird"), source="made up in a docstring")
            >>> print(ds.summary())
            toy: 4 train / 2 test images, 8x8x3 uint8, 3 classes (cat, dog, bird)
              source: made up in a docstring

            With more than ten classes only the first five names are shown, e.g. for
            CIFAR-100: ``(apple, aquarium_fish, baby, bear, beaver, ...)``.
        """
        h, w, c = self.image_shape
        names = self.class_names
        shown = ", ".join(names) if len(names) <= 10 else ", ".join(names[:5]) + ", ..."
        return (
            f"{self.name}: {self.num_train} train / {self.num_test} test images, "
            f"{h}x{w}x{c} uint8, {self.num_classes} classes ({shown})\n"
            f"  source: {self.source}"
        )
