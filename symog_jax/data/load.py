"""`load_dataset`: the one entry point experiments call; finds the data wherever it is."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from symog_jax.data.archives import detect_original_format, load_original_archive
from symog_jax.data.bundled import load_bundled_mnist5k
from symog_jax.data.cache import CacheDirArg
from symog_jax.data.dataset import KNOWN_SPECS, ImageDataset, source_path_as_given
from symog_jax.data.errors import DataLayoutError, DataNotFoundError
from symog_jax.data.folder import SPLITS, find_image_folder_root, load_image_folder
from symog_jax.data.tarutil import is_tar_archive, strip_archive_suffix
from symog_jax.data.tfds_source import is_tfds_prepared, load_tfds, tfds_default_data_dir

__all__ = ["load_dataset", "KNOWN_DATASETS", "SOURCES"]

KNOWN_DATASETS = ("mnist", "cifar10", "cifar100")
SOURCES = ("auto", "tfds", "folder", "archive", "bundled")

# Spellings seen in file names ("cifar10-jpeg.tar.gz", "CIFAR-10-images/", "mnist_png/").
_ALIASES = {
    "mnist": ("mnist",),
    "cifar10": ("cifar10", "cifar-10", "cifar_10"),
    "cifar100": ("cifar100", "cifar-100", "cifar_100"),
}
# Original distributions: (archive file, extracted folder). Never mistaken for image folders.
_ORIGINALS = {
    "cifar10": ("cifar-10-python.tar.gz", "cifar-10-batches-py"),
    "cifar100": ("cifar-100-python.tar.gz", "cifar-100-python"),
}
# Folders that may hold the four MNIST idx files ("MNIST/raw" is torchvision's layout).
_MNIST_IDX_DIRS = (".", "mnist", "MNIST/raw", "mnist/raw")
_ORIGINAL_NAMES = {n.lower() for pair in _ORIGINALS.values() for n in pair}

Loader = Callable[[], ImageDataset]


def _name_matches(entry: Path, name: str) -> bool:
    stem = strip_archive_suffix(entry.name.lower())
    if entry.name.lower() in _ORIGINAL_NAMES or stem in _ORIGINAL_NAMES:
        return False
    for alias in _ALIASES.get(name, (name.lower(),)):
        # "cifar10-jpeg" matches cifar10 but "cifar100-png" must not: require a separator.
        if stem == alias or (stem.startswith(alias) and stem[len(alias)] in "-_."):
            return True
    return False


def _is_image_folder(path: Path) -> bool:
    try:
        find_image_folder_root(path)
        return True
    except (DataLayoutError, OSError):
        return False


def _has_a_split(path: Path) -> bool:
    """``path`` (or its only subfolder) has ``train/`` or ``test/``: meant as an image folder."""
    if any((path / s).is_dir() for s in SPLITS):
        return True
    subdirs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return len(subdirs) == 1 and any((subdirs[0] / s).is_dir() for s in SPLITS)


def _folder_candidates(
    d: Path, name: str, cache_dir: CacheDirArg, progress: bool
) -> tuple[list[str], list[tuple[Path, Loader]]]:
    """Image-folder archives, then image-folder directories, named like the data set."""

    def loader(p: Path) -> Loader:
        return lambda: load_image_folder(p, cache_dir=cache_dir, name=name, progress=progress)

    entries = sorted(d.iterdir()) if d.is_dir() else []
    archives = [p for p in entries if p.is_file() and is_tar_archive(p) and _name_matches(p, name)]
    folders = []
    for p in entries:
        if p.is_dir() and _name_matches(p, name):
            if _is_image_folder(p):
                folders.append(p)
            elif not archives and _has_a_split(p):
                find_image_folder_root(p)  # raises, naming the split that is missing
    pattern = "|".join(_ALIASES.get(name, (name,)))
    looked = [
        f"{d}/({pattern})[-_.*].tar|.tar.gz|.tgz (image-folder archive)",
        f"{d}/({pattern})[-_.*]/ (image-folder directory with train/ and test/)",
    ]
    return looked, [(p, loader(p)) for p in archives + folders]


def _archive_candidates(d: Path, name: str) -> tuple[list[str], list[tuple[Path, Loader]]]:
    """The original distribution files of CIFAR-10/100 and MNIST."""

    def loader(p: Path) -> Loader:
        return lambda: load_original_archive(p, name=name)

    if name == "mnist":
        dirs = [(d / sub).resolve() for sub in _MNIST_IDX_DIRS]
        looked = [f"{p}/ (MNIST idx files train-images-idx3-ubyte.gz, ...)" for p in dirs]
        found = [p for p in dirs if p.is_dir() and detect_original_format(p) == "mnist"]
        return looked, [(p, loader(p)) for p in found]
    if name in _ORIGINALS:
        paths = [d / n for n in _ORIGINALS[name]]
        looked = [f"{p} (original {name} archive)" for p in paths]
        return looked, [(p, loader(p)) for p in paths if p.exists()]
    return [], []


def _tfds_candidates(
    d: Path, name: str, cache_dir: CacheDirArg, progress: bool
) -> tuple[list[str], list[tuple[Path, Loader]]]:
    if name not in KNOWN_DATASETS:
        return [], []
    looked = [f"{d}/{name}/<version>/ (prepared tensorflow-datasets directory)"]
    # Cheap existence test first: asking tfds builds a builder object (~0.5 s on first use).
    if (d / name).is_dir() and is_tfds_prepared(name, d):

        def loader() -> ImageDataset:
            return _load_tfds_checked(name, d, cache_dir, progress)

        return looked, [(d / name, loader)]
    return looked, []


def _load_tfds_checked(
    name: str, d: Path | None, cache_dir: CacheDirArg, progress: bool
) -> ImageDataset:
    ds = load_tfds(name, data_dir=d, cache_dir=cache_dir, progress=progress)
    if name in KNOWN_SPECS:
        KNOWN_SPECS[name].check(ds, f"tfds {name} in {d if d else tfds_default_data_dir()}")
    return ds


def _load_path(
    path: Path, name: str, cache_dir: CacheDirArg, progress: bool
) -> ImageDataset | None:
    """``data_dir`` pointing straight at one data set: an archive, image folder or original."""
    if path.is_file():
        kind = detect_original_format(path)
        if kind is not None:
            if name in KNOWN_DATASETS and kind != name:
                raise DataLayoutError(f"{path} holds {kind}, but {name} was requested.")
            return load_original_archive(path, name=name)
        if is_tar_archive(path):
            return load_image_folder(path, cache_dir=cache_dir, name=name, progress=progress)
        raise DataLayoutError(
            f"{path} is neither an image-folder tar archive nor an original data set file."
        )
    if _is_image_folder(path):
        return load_image_folder(path, cache_dir=cache_dir, name=name, progress=progress)
    kind = detect_original_format(path)
    if kind is not None and (kind == name or name not in KNOWN_DATASETS):
        return load_original_archive(path, name=name)
    if _has_a_split(path):
        find_image_folder_root(path)  # raises, naming the split that is missing
    return None


def _describe_dir(d: Path, limit: int = 8) -> str:
    """``"it is empty"`` or ``"it holds: a.txt, b/, ..."`` (a few entries, for messages)."""
    try:
        entries = sorted(p.name + ("/" if p.is_dir() else "") for p in d.iterdir())
    except OSError as e:
        return f"it cannot be listed: {e.strerror or e}"
    if not entries:
        return "it is empty"
    more = f", ... ({len(entries) - limit} more)" if len(entries) > limit else ""
    return "it holds: " + ", ".join(entries[:limit]) + more


def _not_found(name: str, looked: list[str], data_dir: Path | None = None) -> DataNotFoundError:
    places = "\n".join(f"  - {p}" for p in looked) or "  (nowhere: no data_dir given)"
    fixes = [
        "pass --data-dir / data_dir= pointing at an image folder (directory or .tar.gz with "
        "{train,test}/<class>/<image>, e.g. cifar10-jpeg.tar.gz) or at the folder holding it",
        "or point it at the original archive (cifar-10-python.tar.gz, cifar-100-python.tar.gz, "
        "the MNIST idx .gz files)",
        "or prepare it with tensorflow-datasets on a machine with internet access "
        f"(symog_jax.data.prepare_tfds({name!r}, data_dir)) and pass that data_dir",
    ]
    if name == "mnist":
        fixes.append(
            "or, for MNIST, use the bundled 5,000-digit subset: allow_bundled=True or "
            "source='bundled' (--data-source bundled)"
            + (" without data_dir (an explicit data_dir is never replaced by another source)"
               if data_dir is not None else "")
        )
    where = f" in {data_dir} ({_describe_dir(data_dir)})" if data_dir is not None else ""
    return DataNotFoundError(
        f"Could not find the {name} data set{where}. Looked at:\n{places}\nTo fix:\n"
        + "\n".join(f"  * {f}" for f in fixes)
    )


@source_path_as_given("data_dir")
def load_dataset(
    name: str,
    *,
    source: str = "auto",
    data_dir: str | os.PathLike | None = None,
    cache_dir: CacheDirArg = None,
    allow_bundled: bool = False,
    progress: bool = True,
) -> ImageDataset:
    """Load ``mnist``, ``cifar10`` or ``cifar100`` (or any image folder) from wherever it is.

    With ``source="auto"`` the first hit wins, in this order:

    1. ``data_dir`` itself, if it is an archive, an image folder or an original folder;
    2. inside ``data_dir``: an image-folder archive named like the data set
       (``cifar10-jpeg.tar.gz``, ``mnist-png.tar.gz``, ``cifar10.tgz``), then an image-folder
       directory (``cifar10/`` holding ``train/`` and ``test/``), then the original archive
       (``cifar-10-python.tar.gz``, ``cifar-10-batches-py/``, ``cifar-100-python.tar.gz``,
       MNIST idx files in ``data_dir``, ``mnist/`` or ``MNIST/raw/``), then a prepared
       tensorflow-datasets directory (``<data_dir>/<name>/<version>/``);
    3. without ``data_dir``: tfds' default directory (``$TFDS_DATA_DIR`` or
       ``~/tensorflow_datasets``);
    4. for ``mnist`` with ``allow_bundled=True`` and no ``data_dir``: the 5k subset shipped
       with the package (its ``source`` says so; its test split comes from MNIST's training
       set). An explicit ``data_dir`` is never replaced by another source: if nothing usable
       is there, loading fails and the message says what the directory holds.

    The data found must be the data set named: for ``mnist``, ``cifar10`` and ``cifar100``
    the class count and image shape are checked (``mnist`` found as 10 classes of 32x32x3
    images is an error saying so), and image folders must be class-balanced within
    :data:`~symog_jax.data.dataset.MIN_CLASS_BALANCE`.

    The other ``source`` values force one kind: ``"folder"`` and ``"archive"`` search
    ``data_dir`` only for that kind, ``"tfds"`` calls :func:`load_tfds`, ``"bundled"``
    :func:`load_bundled_mnist5k`. Errors in data that *was* found (corrupt files, wrong
    layout) are raised, not skipped.

    Args:
        name: ``"mnist"``, ``"cifar10"``, ``"cifar100"``; any name with ``source="folder"``.
        source: ``"auto"``, ``"tfds"``, ``"folder"``, ``"archive"`` or ``"bundled"``.
        data_dir: folder to search, or a path straight to an archive / image folder.
        cache_dir: decoded-array cache; ``None`` default location, ``False`` disables.
        allow_bundled: let ``"auto"`` fall back to the bundled MNIST subset.
        progress: show progress bars while decoding.

    Returns:
        :class:`ImageDataset` named ``name``: images ``(N, H, W, C)`` uint8, labels ``(N,)``
        int32.

    Raises:
        DataNotFoundError: nothing found; the message names ``data_dir`` and what it holds,
            then lists every place looked at and fixes.
        DataLayoutError: the data found is not the data set named, or an image folder is
            incomplete (only ``train/``, a class folder without images).
        CorruptDataError: a damaged or truncated file.
        ValueError: unknown ``name`` or ``source``; ``source="bundled"`` with a ``data_dir``.

    Example:
        With the data under ``../shared/data`` (not run here: it needs the archive):

        >>> ds = load_dataset("cifar10", data_dir="../shared/data")  # doctest: +SKIP
        >>> print(ds.summary())  # doctest: +SKIP
        cifar10: 50000 train / 10000 test images, 32x32x3 uint8, 10 classes (airplane, ...)
          source: image folder ../shared/data/cifar10-jpeg.tar.gz

        Offline, MNIST can come from the subset shipped with the package:

        >>> ds = load_dataset("mnist", source="bundled")
        >>> ds.num_train, ds.num_test, ds.image_shape
        (4000, 1000, (28, 28, 1))
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if name not in KNOWN_DATASETS and source != "folder":
        raise ValueError(
            f"Unknown data set {name!r}; known: {KNOWN_DATASETS} (any name works with "
            "source='folder')."
        )
    d = Path(data_dir).expanduser().resolve() if data_dir is not None else None

    if source == "bundled":
        if name != "mnist":
            raise ValueError(f"Only MNIST is bundled, not {name!r}.")
        if d is not None:
            raise ValueError(
                f"source='bundled' loads the MNIST subset shipped with the package and takes no "
                f"data_dir (got {d}); drop one of the two."
            )
        return load_bundled_mnist5k()
    if source == "tfds":
        return _load_tfds_checked(name, d, cache_dir, progress)
    if source in ("folder", "archive"):
        if d is None:
            raise ValueError(f"source={source!r} needs data_dir.")
        if not d.exists():
            raise DataNotFoundError(f"data_dir {d} does not exist.")
        if d.is_file() or (
            _is_image_folder(d) if source == "folder" else detect_original_format(d)
        ):
            if source == "folder":
                return load_image_folder(d, cache_dir=cache_dir, name=name, progress=progress)
            return load_original_archive(d, name=name)
        looked, found = (
            _folder_candidates(d, name, cache_dir, progress)
            if source == "folder"
            else _archive_candidates(d, name)
        )
        if found:
            return found[0][1]()
        raise _not_found(name, [str(d), *looked], d)

    # source == "auto"
    looked: list[str] = []
    if d is not None:
        if not d.exists():
            raise DataNotFoundError(f"data_dir {d} does not exist.")
        looked.append(f"{d} itself (archive, image folder or original files)")
        ds = _load_path(d, name, cache_dir, progress)
        if ds is not None:
            return ds
        for finder in (
            lambda: _folder_candidates(d, name, cache_dir, progress),
            lambda: _archive_candidates(d, name),
            lambda: _tfds_candidates(d, name, cache_dir, progress),
        ):
            places, found = finder()
            looked.extend(places)
            if found:
                return found[0][1]()
    else:
        tfds_dir = tfds_default_data_dir()
        places, found = _tfds_candidates(tfds_dir, name, cache_dir, progress)
        looked.extend(places)
        if found:
            return found[0][1]()
    if name == "mnist":
        if d is not None:
            looked.append("bundled MNIST 5k subset (not used: data_dir was given)")
        elif allow_bundled:
            return load_bundled_mnist5k()
        else:
            looked.append("bundled MNIST 5k subset (not used: allow_bundled=False)")
    raise _not_found(name, looked, d)
