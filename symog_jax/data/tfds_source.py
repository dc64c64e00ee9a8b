"""tensorflow-datasets as a source, readable without TensorFlow.

What tfds 4.9.10 needs TensorFlow for, and what it does not (checked against its source):

* Reading prepared data in the ``array_record`` format (what :func:`prepare_tfds` writes) goes
  through ``builder.as_data_source`` -> ``ArrayRecordDataSource``; examples are parsed with
  tfds' bundled ``tf.train.Example`` protos and images decoded with Pillow. No TensorFlow.
  The ``array_record`` package is required (a tfds dependency on Linux only).
* Reading the default ``tfrecord`` format through tfds needs ``tf.data``. The files are plain
  TFRecord framing around the same protos, so this module reads the framing itself and hands
  each record to tfds' numpy parser: still no TensorFlow.
* Preparing (download + convert) needs TensorFlow: tfds encodes the images with
  ``tf.image.encode_png``. :func:`prepare_tfds` checks for it up front.
"""

from __future__ import annotations

import importlib.util
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from symog_jax.data.cache import CacheDirArg, cached_dataset
from symog_jax.data.dataset import ImageDataset
from symog_jax.data.errors import (
    CorruptDataError,
    DataLayoutError,
    DataNotFoundError,
    TensorFlowRequiredError,
)

__all__ = [
    "load_tfds",
    "prepare_tfds",
    "tfds_default_data_dir",
    "is_tfds_prepared",
    "tensorflow_available",
]

TFDS_NAMES = ("mnist", "cifar10", "cifar100")
_OTHER_SOURCES = (
    "Sources that need no TensorFlow: load_image_folder(<dir or .tar.gz with "
    "{train,test}/<class>/<image>>), load_original_archive(<cifar-10-python.tar.gz, "
    "cifar-100-python.tar.gz or the MNIST idx .gz files>), or load_bundled_mnist5k() "
    "(5,000 MNIST digits shipped with symog_jax)."
)


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def tensorflow_available() -> bool:
    """Whether TensorFlow can be imported (checked without importing it).

    Example:
        >>> isinstance(tensorflow_available(), bool)
        True
    """
    return _has_module("tensorflow")


def tfds_default_data_dir() -> Path:
    """tfds' default data directory: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``.

    Example:
        >>> tfds_default_data_dir()  # doctest: +SKIP
        PosixPath('/home/me/tensorflow_datasets')
    """
    # Read at call time, not tfds' import-time constant, so a changed env var is honoured.
    env = os.environ.get("TFDS_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / "tensorflow_datasets"


def _builder(name: str, data_dir: str | os.PathLike | None, **kwargs: Any) -> Any:
    import tensorflow_datasets as tfds  # deferred: keeps `import symog_jax.data` light

    data_dir = Path(data_dir).expanduser() if data_dir is not None else tfds_default_data_dir()
    try:
        return tfds.builder(name, data_dir=str(data_dir), **kwargs)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise ValueError(f"tfds has no data set named {name!r}: {e}") from e


def is_tfds_prepared(name: str, data_dir: str | os.PathLike | None = None) -> bool:
    """Whether tfds data set ``name`` is prepared in ``data_dir`` (default: tfds' default).

    Example:
        >>> is_tfds_prepared("mnist", "/nonexistent")
        False
    """
    return bool(_builder(name, data_dir).is_prepared())


def prepare_tfds(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    file_format: str = "array_record",
) -> Path:
    """Download and prepare a tfds data set (needs TensorFlow and internet access).

    The default ``array_record`` format can later be read by :func:`load_tfds` on a machine
    without TensorFlow (copy the ``<data_dir>/<name>/`` folder over).

    Args:
        name: tfds name, e.g. ``"mnist"``, ``"cifar10"``, ``"cifar100"``.
        data_dir: where to write; default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``.
        file_format: ``"array_record"`` (random access, no TF to read) or ``"tfrecord"``.

    Returns:
        The prepared version directory, e.g. ``<data_dir>/mnist/3.0.1``.

    Raises:
        TensorFlowRequiredError: TensorFlow is not installed.
        ImportError: ``importlib_resources`` is not installed (tfds needs it undeclared).

    Example:
        >>> prepare_tfds("cifar10", "/data/tfds")  # doctest: +SKIP
        PosixPath('/data/tfds/cifar10/3.0.2')
    """
    if not tensorflow_available():
        raise TensorFlowRequiredError(
            f"Preparing the tfds data set {name!r} needs TensorFlow (tfds encodes the images "
            "with tf.image) and internet access. Install it with `pip install tensorflow` "
            "(or tensorflow-cpu), or run prepare_tfds on another machine and copy the "
            f"<data_dir>/{name}/ folder here. {_OTHER_SOURCES}"
        )
    if not _has_module("importlib_resources"):
        # tfds 4.9.10 imports it while preparing registered data sets but only declares it
        # for Python < 3.9 (tensorflow/datasets#11212); fail before downloading anything.
        raise ImportError(
            "tensorflow-datasets needs the `importlib_resources` package to prepare data sets "
            "(missing from its declared dependencies, tensorflow/datasets#11212): "
            "pip install importlib_resources"
        )
    builder = _builder(name, data_dir, file_format=file_format)
    builder.download_and_prepare()
    return Path(builder.data_dir)


# --- TFRecord framing: uint64 length, uint32 masked crc32c(length), payload, uint32 crc. ---

_CRC32C_TABLE: list[int] = []


def _crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli); pure Python, so only used on the 8-byte length headers."""
    if not _CRC32C_TABLE:
        for i in range(256):
            c = i
            for _ in range(8):
                c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
            _CRC32C_TABLE.append(c)
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC32C_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc32c(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _iter_tfrecord(path: Path) -> Iterator[bytes]:
    """Yield the records of an uncompressed TFRecord file.

    The length header's CRC is verified, which catches truncation and misalignment; the
    payload CRC is not (too slow in pure Python): a damaged payload fails to parse instead.
    """
    with open(path, "rb") as f:
        while header := f.read(12):
            if len(header) < 12:
                raise CorruptDataError(f"{path} is truncated (partial record header).")
            length, crc = struct.unpack("<QI", header)
            if _masked_crc32c(header[:8]) != crc:
                raise CorruptDataError(
                    f"{path}: bad record header checksum; the file is corrupt, re-download "
                    "or re-prepare it."
                )
            payload = f.read(length)
            if len(payload) < length or len(f.read(4)) < 4:
                raise CorruptDataError(f"{path} is truncated; re-download or re-prepare it.")
            yield payload


def _read_split(builder: Any, split: str, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    from tensorflow_datasets.core import file_adapters

    info = builder.info
    image_key, label_key = info.supervised_keys or ("image", "label")
    fmt = info.file_format
    n = info.splits[split].num_examples
    images, labels = [], []
    bar = tqdm(
        total=n,
        unit="img",
        desc=f"Reading tfds {info.name}/{split}",
        disable=None if progress else True,
        leave=False,
    )
    with bar:
        if fmt in file_adapters.FileFormat.with_random_access():
            if fmt == file_adapters.FileFormat.ARRAY_RECORD and not _has_module("array_record"):
                raise ImportError(
                    f"tfds data in {builder.data_dir} is stored as array_record; reading it "
                    "needs the array_record package: pip install array_record"
                )
            source = builder.as_data_source(split=split)
            for start in range(0, len(source), 1024):
                stop = min(start + 1024, len(source))
                try:
                    examples = source.__getitems__(range(start, stop))
                except Exception as e:  # noqa: BLE001 - record reading / decoding errors
                    raise CorruptDataError(
                        f"Cannot read records {start}..{stop} of tfds {info.name}/{split} in "
                        f"{builder.data_dir}: {type(e).__name__}: {e}. Re-prepare the data set."
                    ) from e
                for ex in examples:
                    images.append(ex[image_key])
                    labels.append(ex[label_key])
                bar.update(stop - start)
        elif fmt == file_adapters.FileFormat.TFRECORD:
            for path in info.splits[split].filepaths:
                for raw in _iter_tfrecord(Path(path)):
                    try:
                        ex = info.features.deserialize_example_np(raw)
                    except Exception as e:  # noqa: BLE001 - proto / image decoding errors
                        raise CorruptDataError(
                            f"Cannot decode a record of {path}: {type(e).__name__}: {e}. "
                            "Re-download or re-prepare the data set."
                        ) from e
                    images.append(ex[image_key])
                    labels.append(ex[label_key])
                    bar.update(1)
        else:
            raise DataLayoutError(
                f"tfds data in {builder.data_dir} is stored as {fmt.value}, which symog_jax "
                "cannot read; prepare it as array_record (prepare_tfds does) or tfrecord."
            )
    if len(images) != n:
        raise CorruptDataError(
            f"tfds {info.name}/{split} in {builder.data_dir}: dataset_info.json promises {n} "
            f"examples, the files hold {len(images)}. Re-prepare the data set."
        )
    x = np.stack(images).astype(np.uint8, copy=False)
    if x.ndim == 3:  # defensive: always 4-D
        x = x[..., None]
    return x, np.asarray(labels, dtype=np.int32)


def load_tfds(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    cache_dir: CacheDirArg = None,
    progress: bool = True,
) -> ImageDataset:
    """Load a prepared tensorflow-datasets image data set (``mnist``, ``cifar10``, ``cifar100``).

    Works without TensorFlow for data prepared as ``array_record`` (via ``tfds.data_source``
    machinery) or as the default ``tfrecord`` (read with a built-in TFRecord reader). Decoded
    arrays are cached like the other sources.

    Args:
        name: tfds name (any supervised image classification data set with ``train`` and
            ``test`` splits works; ``mnist``, ``cifar10``, ``cifar100`` are the tested ones).
        data_dir: tfds data directory; default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``.
        download: if the data is not prepared, download and prepare it (needs TensorFlow and
            internet access, see :func:`prepare_tfds`); off by default so nothing is fetched
            behind the user's back.
        cache_dir: decoded-array cache; ``None`` default location, ``False`` disables.
        progress: show a progress bar while decoding.

    Returns:
        :class:`ImageDataset` with images ``(N, H, W, C)`` uint8 and labels ``(N,)`` int32.

    Raises:
        DataNotFoundError: the data set is not prepared in ``data_dir`` and ``download=False``.
        TensorFlowRequiredError: ``download=True`` but TensorFlow is missing.

    Example:
        >>> ds = load_tfds("mnist", data_dir="/data/tfds")  # doctest: +SKIP
        >>> ds.train_images.shape  # doctest: +SKIP
        (60000, 28, 28, 1)
    """
    builder = _builder(name, data_dir)
    if not builder.is_prepared():
        if not download:
            raise DataNotFoundError(
                f"tfds data set {name!r} is not prepared in {builder.data_dir} (no "
                "dataset_info.json). Prepare it on a machine with TensorFlow and internet "
                f"access with symog_jax.data.prepare_tfds({name!r}, data_dir) and copy "
                f"<data_dir>/{name}/ here, or pass download=True. {_OTHER_SOURCES}"
            )
        prepare_tfds(name, data_dir)
        builder = _builder(name, data_dir)
    info = builder.info
    missing = [s for s in ("train", "test") if s not in info.splits]
    if missing:
        raise DataLayoutError(
            f"tfds {name!r} has no {missing} split(s); found {list(info.splits)}."
        )
    version_dir = Path(builder.data_dir)

    def build() -> ImageDataset:
        train = _read_split(builder, "train", progress)
        test = _read_split(builder, "test", progress)
        _, label_key = info.supervised_keys or ("image", "label")
        return ImageDataset(
            name=name,
            train_images=train[0],
            train_labels=train[1],
            test_images=test[0],
            test_labels=test[1],
            class_names=tuple(str(c) for c in info.features[label_key].names),
            source=f"tfds {name} {info.version} ({info.file_format.value}) in {version_dir}",
        )

    return cached_dataset("tfds", [version_dir], build, cache_dir, extra=name)
