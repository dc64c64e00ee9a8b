"""The in-memory container every loader returns."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from pathlib import Path

import numpy as np

from symog_jax.data.errors import DataLayoutError

__all__ = ["ImageDataset", "DatasetSpec", "KNOWN_SPECS", "MIN_CLASS_BALANCE",
           "source_path_as_given"]

#: In an image folder of a known data set, every class of a split must have at least this
#: fraction of the images of the split's largest class. Real MNIST's worst ratio is 0.79
#: (892 vs 1135 test digits), CIFAR's is 1; a download or extraction cut short leaves its last
#: class (folders are stored in class order) far below.
MIN_CLASS_BALANCE = 0.5


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


def _shape_str(shape) -> str:
    return "x".join(str(int(v)) for v in shape)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What a known data set looks like: its class count and image shape ``(H, W, C)``.

    Example:
        >>> KNOWN_SPECS["mnist"].describe()
        '10 classes of 28x28x1 images'
    """

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]

    def describe(self) -> str:
        return f"{self.num_classes} classes of {_shape_str(self.image_shape)} images"

    def mismatch(self, where: str, num_classes: int, image_shape) -> DataLayoutError:
        """The one-line error for data at ``where`` that is not this data set."""
        found = f"{num_classes} classes of {_shape_str(image_shape)} images"
        like = [
            s.name
            for s in KNOWN_SPECS.values()
            if s.name != self.name
            and s.num_classes == num_classes
            and s.image_shape == tuple(image_shape)
        ]
        hint = f" (the shape of {like[0]})" if like else ""
        return DataLayoutError(
            f"{where}: found {found}{hint}, expected {self.describe()} for {self.name}; point "
            f"data_dir / --data-dir at {self.name}, or name the data set it holds"
        )

    def check(self, ds: ImageDataset, where: str, *, balanced: bool = False) -> None:
        """Raises :class:`DataLayoutError` unless ``ds`` has this class count and image shape
        (and, with ``balanced``, each split is class-balanced within :data:`MIN_CLASS_BALANCE`).
        """
        if ds.num_classes != self.num_classes or ds.image_shape != self.image_shape:
            raise self.mismatch(where, ds.num_classes, ds.image_shape)
        if not balanced:
            return
        for split in ("train", "test"):
            counts = np.bincount(getattr(ds, f"{split}_labels"), minlength=ds.num_classes)
            low, high = int(np.argmin(counts)), int(np.argmax(counts))
            if counts[low] < MIN_CLASS_BALANCE * counts[high]:
                raise DataLayoutError(
                    f"{where}: the {split} split is not class-balanced as {self.name} is: class "
                    f"{ds.class_names[low]!r} has {counts[low]} images, class "
                    f"{ds.class_names[high]!r} {counts[high]}; the data looks incomplete (a "
                    "download or extraction cut short?): re-download it, or load it under "
                    "another name (source='folder') if this is intended"
                )


#: The data sets whose shape :func:`~symog_jax.data.load_dataset` checks.
KNOWN_SPECS = {
    "mnist": DatasetSpec("mnist", 10, (28, 28, 1)),
    "cifar10": DatasetSpec("cifar10", 10, (32, 32, 3)),
    "cifar100": DatasetSpec("cifar100", 100, (32, 32, 3)),
}


def source_path_as_given(argument: str):
    """Decorates a loader so the :attr:`ImageDataset.source` it returns names the data path as
    the caller gave it (e.g. ``../shared/data``), not the resolved absolute path it read.

    Reports and run files copy ``source``; this keeps the machine's directories out of them.
    ``argument`` is the name of the loader's path parameter (``None`` leaves ``source`` as is).
    """
    def wrap(loader):
        signature = inspect.signature(loader)

        @functools.wraps(loader)
        def load(*args, **kwargs):
            ds = loader(*args, **kwargs)
            given = signature.bind(*args, **kwargs).arguments.get(argument)
            if given is None or not isinstance(ds, ImageDataset):
                return ds
            resolved = str(Path(given).expanduser().resolve())
            if resolved not in ds.source or resolved == os.fspath(given):
                return ds
            return dataclasses.replace(ds, source=ds.source.replace(resolved, os.fspath(given)))
        return load
    return wrap
