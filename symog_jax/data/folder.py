"""Image-folder data sets: ``<root>/{train,test}/<class>/<image>``, as a directory or a tar.

This is the layout of torchvision's ``ImageFolder`` / Keras' ``image_dataset_from_directory``
with one folder per split. Archives are decoded straight from the (compressed) tar stream:
nothing is extracted to disk, so no member name can ever write outside a target directory.
"""

from __future__ import annotations

import dataclasses
import io
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from symog_jax.data.cache import CacheDirArg, cached_dataset
from symog_jax.data.dataset import (KNOWN_SPECS, DatasetSpec, ImageDataset,
                                    source_path_as_given)
from symog_jax.data.errors import CorruptDataError, DataLayoutError, DataNotFoundError
from symog_jax.data.tarutil import (
    ARCHIVE_READ_ERRORS,
    is_tar_archive,
    open_tar_stream,
    safe_member_parts,
    saw_end_marker,
    strip_archive_suffix,
)

__all__ = ["load_image_folder", "find_image_folder_root", "IMAGE_EXTENSIONS"]

SPLITS = ("train", "test")
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp"}
)
# 8-bit greyscale modes become "L"; other 8-bit modes (P, RGBA, CMYK, ...) become "RGB"
# (alpha dropped). 16-bit and float images are refused: squeezing them into uint8 by
# clipping would silently destroy them.
_GREY_MODES = frozenset({"1", "L", "LA", "La"})
_WIDE_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_RE_DIGITS = re.compile(r"(\d+)")

# (split, class name, file name, display name, encoded bytes)
_Member = tuple[str, str, str, str, bytes]


def _natural_key(name: str) -> tuple:
    """Sort "2.png" before "10.png" so images keep their numeric order."""
    return tuple(int(t) if t.isdigit() else t for t in _RE_DIGITS.split(name))


def _is_junk(parts: tuple[str, ...]) -> bool:
    # Hidden files, macOS resource forks ("._x.png", "__MACOSX/") and similar clutter.
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _decode_image(data: bytes, where: str) -> np.ndarray:
    """Decode one encoded image to ``(H, W, C)`` uint8 with ``C`` in {1, 3}."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            mode = im.mode
            if mode not in ("L", "RGB") and mode not in _WIDE_MODES:
                im = im.convert("L" if mode in _GREY_MODES else "RGB")
            arr = np.asarray(im)
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for bad data
        raise CorruptDataError(
            f"Cannot decode image {where}: {type(e).__name__}: {e}. The file is corrupt or "
            "truncated; re-download the data set (or delete this file)."
        ) from e
    if mode in _WIDE_MODES:
        raise DataLayoutError(
            f"Image {where} has 16-bit or float pixels (mode {mode}); only 8-bit images are "
            "supported."
        )
    return arr[:, :, None] if arr.ndim == 2 else arr


def find_image_folder_root(path: str | Path) -> Path:
    """The directory holding ``train/`` and ``test/``: ``path`` itself or its only subfolder.

    Raises:
        DataLayoutError: neither ``path`` nor a single subfolder holds ``train/`` and ``test/``.

    Example:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> for split in ("train", "test"):
        ...     (Path(tmp.name) / "cifar10" / split).mkdir(parents=True)
        >>> find_image_folder_root(tmp.name) == Path(tmp.name) / "cifar10"
        True
        >>> tmp.cleanup()
    """
    path = Path(path)

    def has_splits(p: Path) -> bool:
        return all((p / s).is_dir() for s in SPLITS)

    if has_splits(path):
        return path
    subdirs = [d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if len(subdirs) == 1 and has_splits(subdirs[0]):
        return subdirs[0]
    for p in [path] + (subdirs if len(subdirs) == 1 else []):
        present = [s for s in SPLITS if (p / s).is_dir()]
        if present:
            (missing,) = [s for s in SPLITS if s not in present]
            raise DataLayoutError(
                f"{p} has {present[0]}/ but no {missing}/: an image folder needs both "
                f"{p}/train/<class>/<image> and {p}/test/<class>/<image>."
            )
    found = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())[:10]
    raise DataLayoutError(
        f"{path} is not an image folder: expected {path}/train/<class>/<image> and "
        f"{path}/test/<class>/<image> (optionally inside one top-level folder); found "
        f"{found or 'nothing'}."
    )


def _no_images(folder: str) -> DataLayoutError:
    return DataLayoutError(
        f"Class folder {folder} has no images (files ending in "
        f"{', '.join(sorted(IMAGE_EXTENSIONS)[:4])}, ...); add its images or remove the folder."
    )


def _list_directory(root: Path) -> list[tuple[str, str, Path]]:
    """``(split, class, file)`` of every image, in class then file-name order; a class folder
    without images is an error (it would otherwise silently vanish from the class list)."""
    files = []
    for split in SPLITS:
        class_dirs = sorted(
            (d for d in (root / split).iterdir() if d.is_dir() and not d.name.startswith(".")),
            key=lambda d: d.name,
        )
        for class_dir in class_dirs:
            images = sorted(
                (
                    f
                    for f in class_dir.iterdir()
                    if f.suffix.lower() in IMAGE_EXTENSIONS
                    and not f.name.startswith(".")
                    and f.is_file()
                ),
                key=lambda f: f.name,
            )
            if not images:
                raise _no_images(str(class_dir))
            files.extend((split, class_dir.name, f) for f in images)
    return files


def _iter_directory(files: list[tuple[str, str, Path]]) -> Iterator[_Member]:
    for split, cls, f in files:
        yield split, cls, f.name, str(f), f.read_bytes()


class _TarScan:
    """Streams image members of a tar archive, noting its top-level folder and oddities."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.prefixes: set[tuple[str, ...]] = set()
        self.unsafe: list[str] = []
        self.misplaced: list[str] = []
        # Member paths of class folders (from directory entries and non-image files), to find
        # class folders without images once the whole archive has been read.
        self.folders: set[tuple[str, ...]] = set()

    def declared_classes(self) -> dict[str, dict[str, str]]:
        """``{split: {class: display name}}`` of the class folders seen beside the images."""
        out: dict[str, dict[str, str]] = {s: {} for s in SPLITS}
        prefix = next(iter(self.prefixes), ())
        for parts in self.folders:
            if parts[:-2] == prefix:
                out[parts[-2]][parts[-1]] = f"{'/'.join(parts)}/ in {self.path}"
        return out

    def _warn(self) -> None:
        if self.unsafe:
            warnings.warn(
                f"Skipped {len(self.unsafe)} unsafe member(s) of {self.path} (absolute paths, "
                f"'..' or links), e.g. {self.unsafe[:3]}.",
                RuntimeWarning,
                stacklevel=4,
            )
        if self.misplaced:
            warnings.warn(
                f"Ignored {len(self.misplaced)} image(s) of {self.path} outside "
                f"{{train,test}}/<class>/, e.g. {self.misplaced[:3]}.",
                RuntimeWarning,
                stacklevel=4,
            )

    def __iter__(self) -> Iterator[_Member]:
        last = last_header = "(start of archive)"
        try:
            with open_tar_stream(self.path) as tar:
                for member in tar:
                    last_header = member.name
                    parts = safe_member_parts(member.name)
                    if parts is None or member.issym() or member.islnk():
                        # Never followed nor extracted; reported once at the end.
                        self.unsafe.append(member.name)
                        continue
                    if _is_junk(parts):
                        continue
                    if member.isdir():
                        if len(parts) in (2, 3) and parts[-2] in SPLITS:
                            self.folders.add(parts)
                        continue
                    if not member.isfile():
                        continue
                    if Path(parts[-1]).suffix.lower() not in IMAGE_EXTENSIONS:
                        if len(parts) in (3, 4) and parts[-3] in SPLITS:
                            self.folders.add(parts[:-1])
                        continue
                    if len(parts) not in (3, 4) or parts[-3] not in SPLITS:
                        self.misplaced.append(member.name)
                        continue
                    self.prefixes.add(parts[:-3])
                    if len(self.prefixes) > 1:
                        tops = sorted("/".join(p) or "." for p in self.prefixes)
                        raise DataLayoutError(
                            f"{self.path} holds several data sets (top-level folders {tops}); "
                            "expected train/ and test/ at the top or inside one single folder."
                        )
                    fobj = tar.extractfile(member)
                    assert fobj is not None  # regular file
                    data = fobj.read()
                    last = member.name
                    yield parts[-3], parts[-2], parts[-1], f"{member.name} in {self.path}", data
                if not saw_end_marker(tar):
                    raise CorruptDataError(
                        f"Archive {self.path} ends after member {last_header!r} without the tar "
                        "end-of-archive marker: it was cut short (at a member boundary); "
                        "re-download it."
                    )
            # Warn before the caller validates the layout, so the hint comes with the error.
            self._warn()
        except ARCHIVE_READ_ERRORS as e:
            raise CorruptDataError(
                f"Cannot read archive {self.path} (failed after member {last!r}): "
                f"{type(e).__name__}: {e}. The archive is corrupt or truncated; re-download it."
            ) from e


def _assemble(
    members: Iterator[_Member],
    *,
    where: str,
    total: int | None,
    progress: bool,
    declared: Callable[[], dict[str, dict[str, str]]] | None = None,
    expect: DatasetSpec | None = None,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[str, ...]]:
    """Decode all members; return ``{split: (images, labels)}`` and the class names.

    ``declared()`` gives the class folders seen (to refuse those without images); with
    ``expect``, a first image of another size stops decoding: the rest is only counted, for an
    error that says what the data is.
    """
    by_split: dict[str, list[tuple[str, str, np.ndarray]]] = {s: [] for s in SPLITS}
    first: tuple[str, tuple[int, int]] | None = None
    channels: set[int] = set()
    wrong_shape: tuple[int, ...] | None = None
    wrong_classes: set[str] = set()
    bar = tqdm(
        members,
        total=total,
        unit="img",
        desc=f"Decoding {Path(where).name}",
        disable=None if progress else True,  # None: tqdm hides itself when not on a tty
        leave=False,
    )
    for split, cls, fname, display, data in bar:
        if wrong_shape is not None:
            wrong_classes.add(cls)
            continue
        arr = _decode_image(data, display)
        hw = arr.shape[:2]
        if first is None:
            first = (display, hw)
            # Greyscale among colour images is promoted later: only 3 channels for 1 is wrong.
            if expect is not None and (
                hw != expect.image_shape[:2] or arr.shape[2] > expect.image_shape[2]
            ):
                wrong_shape, wrong_classes = arr.shape, {cls}
                continue
        elif hw != first[1]:
            raise DataLayoutError(
                f"Image {display} is {hw[0]}x{hw[1]} but {first[0]} is "
                f"{first[1][0]}x{first[1][1]}; all images of a data set must have the same size."
            )
        channels.add(arr.shape[2])
        by_split[split].append((cls, fname, arr))

    if wrong_shape is not None:
        assert expect is not None
        raise expect.mismatch(where, len(wrong_classes), wrong_shape)
    classes = {s: sorted({cls for cls, _, _ in items}) for s, items in by_split.items()}
    if declared is not None:
        for split, folders in declared().items():
            for cls in sorted(set(folders) - set(classes[split])):
                raise _no_images(folders[cls])
    for split in SPLITS:
        if not by_split[split]:
            raise DataLayoutError(
                f"{where}: found no images under '{split}/'. Expected the layout "
                "<root>/train/<class>/<image> and <root>/test/<class>/<image>."
            )
    if classes["train"] != classes["test"]:
        only_train = sorted(set(classes["train"]) - set(classes["test"]))
        only_test = sorted(set(classes["test"]) - set(classes["train"]))
        raise DataLayoutError(
            f"{where}: train and test have different class folders "
            f"(only in train: {only_train}, only in test: {only_test})."
        )
    class_names = tuple(classes["train"])
    index = {c: i for i, c in enumerate(class_names)}
    # A few greyscale files among colour ones (common in scraped data) are promoted to RGB.
    n_channels = max(channels)
    out = {}
    for split, items in by_split.items():
        # Archive order is arbitrary; sorting makes the result independent of it.
        items.sort(key=lambda t: (t[0], _natural_key(t[1])))
        images = np.empty((len(items), *first[1], n_channels), dtype=np.uint8)
        for i, (_, _, arr) in enumerate(items):
            images[i] = arr  # broadcasting repeats a single channel when promoting
        labels = np.fromiter((index[c] for c, _, _ in items), dtype=np.int32, count=len(items))
        out[split] = (images, labels)
    return out, class_names


def _build(path: Path, progress: bool, expect: DatasetSpec | None = None) -> ImageDataset:
    if path.is_dir():
        root = find_image_folder_root(path)
        files = _list_directory(root)
        arrays, class_names = _assemble(
            _iter_directory(files), where=str(root), total=len(files), progress=progress,
            expect=expect,
        )
        default_name = root.name
    else:
        scan = _TarScan(path)
        arrays, class_names = _assemble(
            iter(scan), where=str(path), total=None, progress=progress,
            declared=scan.declared_classes, expect=expect,
        )
        (prefix,) = scan.prefixes
        default_name = prefix[0] if prefix else strip_archive_suffix(path.name)
    return ImageDataset(
        name=default_name,
        train_images=arrays["train"][0],
        train_labels=arrays["train"][1],
        test_images=arrays["test"][0],
        test_labels=arrays["test"][1],
        class_names=class_names,
        source=f"image folder {path}",
    )


@source_path_as_given("path")
def load_image_folder(
    path: str | Path,
    *,
    cache_dir: CacheDirArg = None,
    name: str | None = None,
    progress: bool = True,
) -> ImageDataset:
    """Load ``<root>/{train,test}/<class>/<image>`` from a directory or a tar archive.

    ``path`` is a directory or a ``.tar``/``.tar.gz``/``.tgz`` (also ``.tar.bz2``/``.tar.xz``)
    archive. ``train/`` and ``test/`` may sit at the top or inside one single top-level
    folder (e.g. ``cifar10/train/...``). Class names are the sorted class folder names and
    must be the same in both splits; images are ordered by class, then file name (numbers in
    natural order). A class folder without images is an error, not a class dropped. Archives
    are streamed (never extracted); unsafe member names (absolute, ``..``, links) are skipped
    with a warning; a tar without its end-of-archive marker (cut short, even exactly at a
    member boundary) is refused. The decoded arrays are cached (see
    :func:`symog_jax.data.cache.default_cache_dir`), so only the first call decodes.

    With ``name`` one of ``mnist``, ``cifar10``, ``cifar100``, the data must be that data set:
    its class count and image shape (a first image of the wrong size stops decoding), and
    class balance within :data:`~symog_jax.data.dataset.MIN_CLASS_BALANCE` in each split.

    Args:
        path: image-folder directory or tar archive.
        cache_dir: cache directory; ``None`` for the default, ``False`` to disable caching.
        name: data set name; default: the top-level folder inside the archive, else the
            directory / archive name without its suffix.
        progress: show a tqdm progress bar while decoding (hidden anyway when not on a tty).

    Returns:
        :class:`ImageDataset` with ``train_images`` ``(N, H, W, C)`` uint8 (``C == 1`` when
        every image is greyscale, else 3; greyscale images among colour ones are repeated to
        3 channels; alpha is dropped), ``train_labels`` ``(N,)`` int32, likewise for test.

    Raises:
        DataNotFoundError: ``path`` does not exist.
        CorruptDataError: an image or the archive cannot be decoded (names the member), or
            the archive is truncated.
        DataLayoutError: no ``train/``/``test/``, a class folder without images, differing
            classes or image sizes, or data that is not the known data set ``name``.

    Example:
        With a real data set (not run here: it needs the archive):

        >>> ds = load_image_folder("../shared/data/cifar10-jpeg.tar.gz")  # doctest: +SKIP
        >>> ds.train_images.shape, ds.class_names[:2]  # doctest: +SKIP
        ((50000, 32, 32, 3), ('airplane', 'automobile'))

        A miniature folder: two classes, 4x4 RGB PNGs of one colour each:

        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> for split, n in (("train", 2), ("test", 1)):
        ...     for cls, value in (("cat", 10), ("dog", 200)):
        ...         folder = Path(tmp.name) / "toy" / split / cls
        ...         folder.mkdir(parents=True)
        ...         for i in range(n):
        ...             pixels = np.full((4, 4, 3), value, np.uint8)
        ...             Image.fromarray(pixels).save(folder / f"{i}.png")
        >>> ds = load_image_folder(Path(tmp.name) / "toy", cache_dir=False, progress=False)
        >>> ds.name, ds.class_names, ds.train_images.shape, ds.test_images.shape
        ('toy', ('cat', 'dog'), (4, 4, 4, 3), (2, 4, 4, 3))
        >>> ds.train_labels.tolist(), ds.train_images[:, 0, 0, 0].tolist()
        ([0, 0, 1, 1], [10, 10, 200, 200])
        >>> tmp.cleanup()
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataNotFoundError(f"Image folder or archive not found: {path}")
    path = path.resolve()
    if not path.is_dir() and not is_tar_archive(path):
        raise DataLayoutError(
            f"{path} is neither a directory nor a tar archive (.tar, .tar.gz, .tgz, ...)."
        )
    spec = KNOWN_SPECS.get(name) if name else None
    ds = cached_dataset("folder", [path], lambda: _build(path, progress, spec), cache_dir)
    if spec is not None:
        spec.check(ds, str(path), balanced=True)
    return dataclasses.replace(ds, name=name) if name else ds
