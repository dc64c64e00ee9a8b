"""Image classification data for symog_jax: loaders, cache, batching and augmentation.

Typical use in an experiment::

    from symog_jax import data

    ds = data.load_dataset("cifar10", data_dir=args.data_dir)  # ImageDataset, uint8 NHWC
    augment = data.augmentation_for(ds.name)                   # jittable, on device
    for x, y in data.epoch_batches(ds.train_images, ds.train_labels, 128, seed=0, epoch=e):
        ...

Sources: :func:`load_image_folder` (``{train,test}/<class>/<image>`` directory or tar),
:func:`load_original_archive` (``cifar-10-python.tar.gz`` & co., MNIST idx files),
:func:`load_tfds` (prepared tensorflow-datasets, no TensorFlow needed to read) and
:func:`load_bundled_mnist5k` (5,000 MNIST digits shipped with the package).
"""

from symog_jax.data.archives import load_original_archive
from symog_jax.data.augment import MEAN, STD, augmentation_for, normalize, random_crop_flip
from symog_jax.data.bundled import load_bundled_mnist5k
from symog_jax.data.cache import default_cache_dir
from symog_jax.data.dataset import ImageDataset
from symog_jax.data.errors import (
    CorruptDataError,
    DataLayoutError,
    DataNotFoundError,
    TensorFlowRequiredError,
)
from symog_jax.data.folder import load_image_folder
from symog_jax.data.load import KNOWN_DATASETS, load_dataset
from symog_jax.data.pipeline import epoch_batches, epoch_permutation, num_batches
from symog_jax.data.tfds_source import load_tfds, prepare_tfds, tensorflow_available

__all__ = [
    "ImageDataset",
    "load_dataset",
    "load_image_folder",
    "load_original_archive",
    "load_tfds",
    "prepare_tfds",
    "load_bundled_mnist5k",
    "tensorflow_available",
    "default_cache_dir",
    "KNOWN_DATASETS",
    "epoch_batches",
    "epoch_permutation",
    "num_batches",
    "random_crop_flip",
    "normalize",
    "augmentation_for",
    "MEAN",
    "STD",
    "DataNotFoundError",
    "CorruptDataError",
    "DataLayoutError",
    "TensorFlowRequiredError",
]
