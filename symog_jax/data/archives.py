"""The original distribution formats of CIFAR-10/100 (pickled batches) and MNIST (idx files).

For users who downloaded ``cifar-10-python.tar.gz``, ``cifar-100-python.tar.gz`` or the four
MNIST ``*-ubyte.gz`` files by hand. Archives are read in one streaming pass without
extracting anything; pickles are unpickled with an allow-list that admits only the numpy
array constructors these files need, so a tampered file cannot run code.
"""

from __future__ import annotations

import codecs
import gzip
import importlib
import io
import pickle
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from symog_jax.data.dataset import KNOWN_SPECS, ImageDataset
from symog_jax.data.errors import CorruptDataError, DataLayoutError, DataNotFoundError
from symog_jax.data.tarutil import (
    ARCHIVE_READ_ERRORS,
    is_tar_archive,
    open_tar_stream,
    safe_member_parts,
    saw_end_marker,
)

__all__ = ["load_original_archive", "detect_original_format", "MNIST_IDX_FILES"]

_CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
_CIFAR100_FILES = ("train", "test", "meta")
# Canonical names; "<name>.gz", "<name>" and the "train-images.idx3-ubyte" spelling of some
# mirrors are all accepted.
MNIST_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_MAGIC = {"images": 2051, "labels": 2049}  # 0x0803: uint8, 3 dims; 0x0801: uint8, 1 dim
_REDOWNLOAD = "The file is corrupt or truncated; re-download it."


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Resolves only the globals that pickled numpy arrays need; anything else is refused."""

    _ALLOWED = {"_reconstruct", "scalar", "ndarray", "dtype"}

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 era pickles name numpy.core; numpy 2 moved it to numpy._core.
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in (
            "_reconstruct",
            "scalar",
        ):
            return getattr(importlib.import_module("numpy._core.multiarray"), name)
        if module == "numpy" and name in self._ALLOWED:
            return getattr(np, name)
        if (module, name) == ("_codecs", "encode"):  # how protocol-2 pickles store bytes
            return codecs.encode
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def _unpickle(data: bytes, where: str) -> dict:
    try:
        # encoding="bytes": the CIFAR pickles were written by Python 2 (str keys -> bytes).
        obj = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - unpickling bad data raises many types
        raise CorruptDataError(
            f"Cannot unpickle {where}: {type(e).__name__}: {e}. {_REDOWNLOAD}"
        ) from e
    if not isinstance(obj, dict):
        raise CorruptDataError(f"{where} does not hold a dict. {_REDOWNLOAD}")
    # Normalise keys to str so files re-pickled by Python 3 work too.
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_members(path: Path, wanted: tuple[str, ...]) -> dict[str, bytes]:
    """Read the members whose base name is in ``wanted`` (at the top or one folder deep)
    in one sequential pass: random access into a .tar.gz would decompress it repeatedly."""
    found: dict[str, bytes] = {}
    try:
        with open_tar_stream(path) as tar:
            for member in tar:
                parts = safe_member_parts(member.name)
                if parts is None or not member.isfile() or len(parts) > 2:
                    continue
                if parts[-1] in wanted:
                    fobj = tar.extractfile(member)
                    assert fobj is not None
                    found[parts[-1]] = fobj.read()
            if not saw_end_marker(tar):
                raise CorruptDataError(
                    f"Archive {path} ends without the tar end-of-archive marker: it was cut "
                    f"short (at a member boundary). {_REDOWNLOAD}"
                )
    except ARCHIVE_READ_ERRORS as e:
        raise CorruptDataError(
            f"Cannot read archive {path}: {type(e).__name__}: {e}. {_REDOWNLOAD}"
        ) from e
    return found


def _sniff_tar(path: Path, max_files: int = 3) -> set[str]:
    """Base names of the first few regular files of an archive (cheap format detection)."""
    names: set[str] = set()
    try:
        with open_tar_stream(path) as tar:
            for member in tar:
                if member.isfile():
                    names.add(member.name.rsplit("/", 1)[-1])
                    if len(names) >= max_files:
                        break
    except ARCHIVE_READ_ERRORS as e:
        raise CorruptDataError(
            f"Cannot read archive {path}: {type(e).__name__}: {e}. {_REDOWNLOAD}"
        ) from e
    return names


def _find_idx(directory: Path, stem: str) -> Path | None:
    dotted = stem.replace("-idx", ".idx")
    for candidate in (stem + ".gz", stem, dotted + ".gz", dotted):
        if (directory / candidate).is_file():
            return directory / candidate
    return None


def detect_original_format(path: str | Path) -> str | None:
    """Which original format ``path`` holds: ``"cifar10"``, ``"cifar100"``, ``"mnist"`` or None.

    ``path`` may be a CIFAR tar archive, an extracted CIFAR folder (``cifar-10-batches-py/``,
    ``cifar-100-python/``), a folder with the four MNIST idx files, or one of those files.

    Example:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> cifar = Path(tmp.name) / "cifar-10-batches-py"
        >>> cifar.mkdir()
        >>> (cifar / "batches.meta").touch()        # one telltale file is enough
        >>> detect_original_format(cifar)
        'cifar10'
        >>> print(detect_original_format(tmp.name))  # a folder with no data set files
        None
        >>> tmp.cleanup()
    """
    path = Path(path)
    if path.is_file():
        if is_tar_archive(path):
            names = _sniff_tar(path)
            if names & set(_CIFAR10_FILES):
                return "cifar10"
            if names & set(_CIFAR100_FILES):
                return "cifar100"
            return None
        return "mnist" if "idx" in path.name and "ubyte" in path.name else None
    if path.is_dir():
        # Any one telltale file is enough: an incomplete download then gets an error naming
        # the missing files instead of being silently passed over.
        if any((path / f).is_file() for f in _CIFAR10_FILES):
            return "cifar10"
        if (path / "meta").is_file() and any((path / f).is_file() for f in ("train", "test")):
            return "cifar100"
        if any(_find_idx(path, stem) for stem in MNIST_IDX_FILES.values()):
            return "mnist"
    return None


def _cifar_images(batch: dict, where: str) -> np.ndarray:
    data = batch.get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise CorruptDataError(f"{where}: 'data' is not a uint8 matrix. {_REDOWNLOAD}")
    if data.shape[1] != 3 * 32 * 32:
        raise CorruptDataError(
            f"{where}: rows have {data.shape[1]} values, expected 3072. {_REDOWNLOAD}"
        )
    # Rows are the red, green, blue planes of a 32x32 image (CHW); the library uses NHWC.
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _labels(batch: dict, key: str, n: int, num_classes: int, where: str) -> np.ndarray:
    if key not in batch:
        raise CorruptDataError(f"{where}: no {key!r} entry. {_REDOWNLOAD}")
    labels = np.asarray(batch[key])
    if labels.shape != (n,) or labels.min() < 0 or labels.max() >= num_classes:
        raise CorruptDataError(
            f"{where}: {key!r} must hold {n} labels in [0, {num_classes}), got shape "
            f"{labels.shape}. {_REDOWNLOAD}"
        )
    return labels.astype(np.int32)


def _names(meta: dict, key: str, where: str) -> tuple[str, ...]:
    if key not in meta:
        raise CorruptDataError(f"{where}: no {key!r} entry. {_REDOWNLOAD}")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta[key])


def _load_cifar(kind: str, path: Path, name: str | None) -> ImageDataset:
    wanted = _CIFAR10_FILES if kind == "cifar10" else _CIFAR100_FILES
    if path.is_dir():
        files = {f: (path / f).read_bytes() for f in wanted if (path / f).is_file()}
    else:
        files = _read_members(path, wanted)
    missing = [f for f in wanted if f not in files]
    if missing:
        raise CorruptDataError(
            f"{path} lacks {missing} of the original {kind} files {list(wanted)}. "
            "The download is incomplete; re-download it."
        )
    batches = {f: _unpickle(files.pop(f), f"{f} in {path}") for f in wanted}
    if kind == "cifar10":
        meta_key, label_key = "label_names", "labels"
        class_names = _names(batches["batches.meta"], meta_key, f"batches.meta in {path}")
        train = [batches[f] for f in _CIFAR10_FILES[:5]]
        train_files, test, test_file = list(_CIFAR10_FILES[:5]), batches["test_batch"], "test_batch"
    else:
        meta_key, label_key = "fine_label_names", "fine_labels"
        class_names = _names(batches["meta"], meta_key, f"meta in {path}")
        train, train_files, test, test_file = [batches["train"]], ["train"], batches["test"], "test"

    def split(parts: list[dict], files: list[str]) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for batch, f in zip(parts, files):
            where = f"{f} in {path}"
            imgs = _cifar_images(batch, where)
            images.append(imgs)
            labels.append(_labels(batch, label_key, len(imgs), len(class_names), where))
        return np.concatenate(images), np.concatenate(labels)

    train_images, train_labels = split(train, train_files)
    test_images, test_labels = split([test], [test_file])
    pretty = "CIFAR-10" if kind == "cifar10" else "CIFAR-100"
    return ImageDataset(
        name=name or kind,
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        class_names=class_names,
        source=f"original {pretty} python archive {path}",
    )


def _parse_idx(data: bytes, kind: str, where: str) -> np.ndarray:
    """Parse an idx file: big-endian magic (0x0803 images / 0x0801 labels), one uint32 per
    dimension, then the uint8 payload."""
    expected_magic = _IDX_MAGIC[kind]
    if len(data) < 4 or int.from_bytes(data[:4], "big") != expected_magic:
        got = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
        raise CorruptDataError(
            f"{where} is not an idx {kind} file (magic number {got}, expected "
            f"{expected_magic}). {_REDOWNLOAD}"
        )
    ndim = expected_magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise CorruptDataError(f"{where}: header is truncated. {_REDOWNLOAD}")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims))
    if len(data) - header != expected:
        raise CorruptDataError(
            f"{where}: header promises {dims} = {expected} bytes of data but the file holds "
            f"{len(data) - header}. {_REDOWNLOAD}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def _load_mnist(directory: Path, name: str | None) -> ImageDataset:
    arrays: dict[str, np.ndarray] = {}
    for key, stem in MNIST_IDX_FILES.items():
        f = _find_idx(directory, stem)
        if f is None:
            raise DataNotFoundError(
                f"MNIST idx file {stem}.gz (or {stem}) not found in {directory}; expected "
                f"{[s + '.gz' for s in MNIST_IDX_FILES.values()]}."
            )
        raw = f.read_bytes()
        if f.suffix == ".gz":
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError, zlib.error) as e:
                raise CorruptDataError(f"Cannot decompress {f}: {e}. {_REDOWNLOAD}") from e
        arrays[key] = _parse_idx(raw, key.split("_")[1], str(f))
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) != len(labels):
            raise CorruptDataError(
                f"MNIST {split} in {directory}: {len(images)} images but {len(labels)} labels. "
                f"{_REDOWNLOAD}"
            )
        if labels.size and labels.max() > 9:
            raise CorruptDataError(f"MNIST {split} labels in {directory} exceed 9. {_REDOWNLOAD}")
    return ImageDataset(
        name=name or "mnist",
        train_images=arrays["train_images"][..., None],
        train_labels=arrays["train_labels"].astype(np.int32),
        test_images=arrays["test_images"][..., None],
        test_labels=arrays["test_labels"].astype(np.int32),
        class_names=tuple(str(d) for d in range(10)),
        source=f"MNIST idx files in {directory}",
    )


def load_original_archive(path_or_dir: str | Path, *, name: str | None = None) -> ImageDataset:
    """Load CIFAR-10/100 or MNIST from the files as originally distributed.

    Accepted inputs (nothing is extracted to disk):

    * ``cifar-10-python.tar.gz`` or its extracted ``cifar-10-batches-py/`` folder
      (``data_batch_1`` ... ``data_batch_5``, ``test_batch``, ``batches.meta``);
    * ``cifar-100-python.tar.gz`` or ``cifar-100-python/`` (``train``, ``test``, ``meta``;
      the 100 fine labels are used);
    * a folder with ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
      ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz`` (or uncompressed), or
      one of those files (its folder is used).

    Args:
        path_or_dir: archive, extracted folder, or MNIST folder / idx file.
        name: data set name; default ``"cifar10"``, ``"cifar100"`` or ``"mnist"``.

    Returns:
        :class:`ImageDataset`: CIFAR ``(50000, 32, 32, 3)`` / ``(10000, 32, 32, 3)`` uint8,
        MNIST ``(60000, 28, 28, 1)`` / ``(10000, 28, 28, 1)`` uint8; labels ``(N,)`` int32.

    Raises:
        DataNotFoundError: the path (or a needed MNIST file) does not exist.
        CorruptDataError: truncated or damaged file (the message names it).
        DataLayoutError: the path is not one of the formats above, or ``name`` is another
            known data set than the one found.

    Example:
        With the real download (not run here: it needs the 163 MB file):

        >>> ds = load_original_archive("~/Downloads/cifar-10-python.tar.gz")  # doctest: +SKIP
        >>> ds.train_images.shape, ds.class_names[0]  # doctest: +SKIP
        ((50000, 32, 32, 3), 'airplane')

        A miniature MNIST in the original idx format (big-endian magic number, one uint32
        per dimension, then the uint8 data), 3 training and 2 test digits:

        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> def write_idx(name, magic, array):
        ...     dims = b"".join(n.to_bytes(4, "big") for n in array.shape)
        ...     data = magic.to_bytes(4, "big") + dims + array.tobytes()
        ...     (Path(tmp.name) / name).write_bytes(gzip.compress(data))
        >>> write_idx("train-images-idx3-ubyte.gz", 2051, np.zeros((3, 28, 28), np.uint8))
        >>> write_idx("train-labels-idx1-ubyte.gz", 2049, np.array([5, 0, 4], np.uint8))
        >>> write_idx("t10k-images-idx3-ubyte.gz", 2051, np.zeros((2, 28, 28), np.uint8))
        >>> write_idx("t10k-labels-idx1-ubyte.gz", 2049, np.array([7, 2], np.uint8))
        >>> ds = load_original_archive(tmp.name)
        >>> ds.train_images.shape, ds.train_labels.tolist(), ds.test_labels.tolist()
        ((3, 28, 28, 1), [5, 0, 4], [7, 2])
        >>> tmp.cleanup()
    """
    path = Path(path_or_dir).expanduser()
    if not path.exists():
        raise DataNotFoundError(f"Original data set archive or folder not found: {path}")
    path = path.resolve()
    kind = detect_original_format(path)
    if kind is None:
        raise DataLayoutError(
            f"{path} is not an original data set archive. Expected cifar-10-python.tar.gz, "
            "cifar-100-python.tar.gz, their extracted folders, or a folder with the MNIST idx "
            f"files {[s + '.gz' for s in MNIST_IDX_FILES.values()]}."
        )
    if kind == "mnist":
        ds = _load_mnist(path if path.is_dir() else path.parent, name)
    else:
        ds = _load_cifar(kind, path, name)
    if name in KNOWN_SPECS:
        KNOWN_SPECS[name].check(ds, str(path))
    return ds
