"""Decode-once cache: decoded data sets are stored as uncompressed ``.npz`` files.

Decoding 60,000 JPEGs takes seconds; loading the same arrays from an uncompressed ``.npz``
takes a fraction of a second. The key is derived from the absolute path, size and mtime of
every input file, so editing or replacing the source invalidates the entry automatically.
Entries are written atomically (temporary file, then rename) and record their image count;
an entry that is unreadable or disagrees with its count is deleted and rebuilt, and
temporary files left by killed runs are removed by the next run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Union

import numpy as np

from symog_jax.data.dataset import ImageDataset
from symog_jax.files import atomic_write

__all__ = [
    "CACHE_FORMAT_VERSION",
    "CacheDirArg",
    "default_cache_dir",
    "resolve_cache_dir",
    "cached_dataset",
    "remove_stale_temp_files",
]

logger = logging.getLogger(__name__)

# Bump whenever what the loaders produce changes (decoding rules, sort order, npz layout),
# so stale entries from older versions of this package are ignored rather than misread.
# 2: entries record their image count; version 1 could hold a tar cut at a member boundary.
CACHE_FORMAT_VERSION = 2
# Temporary files are named .tmp-<host>-<pid>-<random>.npz; one whose process is gone (or,
# from another host or an older version, untouched for this long) was left by a killed run.
STALE_TEMP_AGE_S = 3600
_TEMP_RE = re.compile(r"^\.tmp-(?:(?P<host>.+)-(?P<pid>\d+)-)?[A-Za-z0-9_]+\.npz$")

# None: default location; False: caching disabled; True: default location; else a directory.
CacheDirArg = Union[str, os.PathLike, bool, None]


def default_cache_dir() -> Path:
    """The cache directory used when ``cache_dir=None``.

    ``$SYMOG_JAX_CACHE`` if set, else ``$XDG_CACHE_HOME/symog_jax``, else
    ``~/.cache/symog_jax``.

    Example:
        >>> default_cache_dir()  # doctest: +SKIP
        PosixPath('/home/me/.cache/symog_jax')
    """
    env = os.environ.get("SYMOG_JAX_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "symog_jax"


def resolve_cache_dir(cache_dir: CacheDirArg) -> Path | None:
    """Turn a ``cache_dir`` argument into a directory, or ``None`` when caching is off.

    Example:
        >>> resolve_cache_dir(False) is None
        True
    """
    if cache_dir is None or cache_dir is True:
        return default_cache_dir()
    if cache_dir is False:
        return None
    return Path(cache_dir).expanduser()


def _fingerprint(inputs: Iterable[Path]) -> list[tuple[str, int, int]]:
    """``(absolute path, size, mtime_ns)`` of every input file (directories are walked:
    their own mtime does not change when a file deep inside is rewritten)."""
    entries: list[tuple[str, int, int]] = []
    for path in inputs:
        path = Path(path).resolve()
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames.sort()
                for fname in sorted(filenames):
                    full = os.path.join(dirpath, fname)
                    st = os.stat(full)
                    entries.append((full, st.st_size, st.st_mtime_ns))
        else:
            st = path.stat()
            entries.append((str(path), st.st_size, st.st_mtime_ns))
    return entries


def _cache_file(cache_dir: Path, kind: str, inputs: list[Path], extra: str) -> Path:
    payload = json.dumps(
        [CACHE_FORMAT_VERSION, kind, extra, _fingerprint(inputs)], separators=(",", ":")
    )
    digest = hashlib.sha256(payload.encode()).hexdigest()[:20]
    # A readable prefix so users can tell entries apart when cleaning the cache by hand.
    label = extra or (inputs[0].name if inputs else "data")
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", label)[:40]
    return cache_dir / f"{kind}-{stem}-{digest}.npz"


def _load(path: Path) -> ImageDataset | None:
    """Read a cache entry; a missing entry gives ``None``, a corrupt one is deleted."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["format_version"]) != CACHE_FORMAT_VERSION:
                raise ValueError(f"format version {int(z['format_version'])}")
            ds = ImageDataset(
                name=str(z["name"]),
                train_images=z["train_images"],
                train_labels=z["train_labels"],
                test_images=z["test_images"],
                test_labels=z["test_labels"],
                class_names=tuple(str(c) for c in z["class_names"]),
                source=str(z["source"]),
            )
            recorded = int(z["num_files"])
            if ds.num_train + ds.num_test != recorded:
                raise ValueError(
                    f"it holds {ds.num_train} + {ds.num_test} images but records {recorded}"
                )
            return ds
    except Exception as e:  # noqa: BLE001 - any failure means the entry is unusable
        warnings.warn(
            f"Cache file {path} is unreadable ({type(e).__name__}: {e}); deleting it and "
            "decoding the data again.",
            RuntimeWarning,
            stacklevel=3,
        )
        path.unlink(missing_ok=True)
        return None


def _save(path: Path, ds: ImageDataset) -> None:
    """Write atomically: a temp file in the same directory, then ``os.replace``, so a crash
    or a concurrent reader never sees a half-written entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.savez(
        f,
        format_version=np.asarray(CACHE_FORMAT_VERSION),
        name=np.asarray(ds.name),
        train_images=ds.train_images,
        train_labels=ds.train_labels,
        test_images=ds.test_images,
        test_labels=ds.test_labels,
        class_names=np.asarray(ds.class_names, dtype=str),
        source=np.asarray(ds.source),
        num_files=np.asarray(ds.num_train + ds.num_test),
    ), temp_prefix=_temp_prefix(), temp_suffix=".npz")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", socket.gethostname()) or "host"


def _temp_prefix() -> str:
    return f".tmp-{_host()}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, owned by someone else
        return True
    return True


def remove_stale_temp_files(directory: Path) -> list[Path]:
    """Delete the temporary files that killed runs left in the cache ``directory``.

    A file of this host whose process is gone is removed at once; any other temporary file
    (another host's, or an older version's, which records no process) once it has not been
    touched for :data:`STALE_TEMP_AGE_S`. Files of live processes are never touched.

    Returns:
        The files removed.
    """
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    now, host = time.time(), _host()
    for entry in entries:
        m = _TEMP_RE.match(entry.name)
        if m is None or not entry.is_file(follow_symlinks=False):
            continue
        try:
            if m["pid"] is not None and m["host"] == host:
                stale = not _pid_alive(int(m["pid"]))
            else:
                stale = now - entry.stat().st_mtime > STALE_TEMP_AGE_S
            if stale:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
                logger.info("Removed %s, left by a killed run", entry.path)
        except OSError:  # gone meanwhile, or not ours to delete: leave it
            continue
    return removed


def cached_dataset(
    kind: str,
    inputs: list[Path],
    build: Callable[[], ImageDataset],
    cache_dir: CacheDirArg,
    extra: str = "",
) -> ImageDataset:
    """Return the cached data set for ``inputs``, or ``build()`` it and cache the result.

    Args:
        kind: loader name, part of the key and of the file name (e.g. ``"folder"``).
        inputs: files or directories the data set is decoded from.
        build: decodes the data set; only called on a cache miss.
        cache_dir: see :func:`resolve_cache_dir`; ``False`` disables caching.
        extra: anything else that changes the result (e.g. the tfds split names).

    Returns:
        The :class:`ImageDataset`, identical whether it came from the cache or not.
    """
    directory = resolve_cache_dir(cache_dir)
    if directory is None:
        return build()
    remove_stale_temp_files(directory)
    path = _cache_file(directory, kind, inputs, extra)
    ds = _load(path)
    if ds is not None:
        logger.info("Loaded %s from cache %s", ds.name, path)
        return ds
    ds = build()
    try:
        _save(path, ds)
        logger.info("Cached %s at %s", ds.name, path)
    except OSError as e:
        # A read-only or full disk must not make loading fail; it only costs speed next time.
        warnings.warn(f"Could not write cache file {path}: {e}", RuntimeWarning, stacklevel=2)
    return ds
