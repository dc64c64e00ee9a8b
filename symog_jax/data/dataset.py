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
        >>> ds = load_dataset("mnist", allow_bundled=True)  # doctest: +SKIP
        >>> ds.image_shape, ds.num_classes  # doctest: +SKIP
        ((28, 28, 1), 10)
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
            >>> print(ds.summary())  # doctest: +SKIP
            cifar10: 50000 train / 10000 test images, 32x32x3 uint8, 10 classes (airplane, ...)
              source: image folder /data/cifar10-jpeg.tar.gz
        """
        h, w, c = self.image_shape
        names = self.class_names
        shown = ", ".join(names) if len(names) <= 10 else ", ".join(names[:5]) + ", ..."
        return (
            f"{self.name}: {self.num_train} train / {self.num_test} test images, "
            f"{h}x{w}x{c} uint8, {self.num_classes} classes ({shown})\n"
            f"  source: {self.source}"
        )
