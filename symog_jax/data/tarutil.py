"""Tar helpers shared by the image-folder and original-archive readers."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "TAR_SUFFIXES",
    "ARCHIVE_READ_ERRORS",
    "is_tar_archive",
    "strip_archive_suffix",
    "safe_member_parts",
    "open_tar_stream",
]

TAR_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tbz2", ".txz", ".tar")
# What reading a damaged (compressed) tar can raise; gzip.BadGzipFile and bz2 errors are OSError.
ARCHIVE_READ_ERRORS = (tarfile.TarError, EOFError, OSError, lzma.LZMAError)


def is_tar_archive(path: str | Path) -> bool:
    """Whether ``path`` has a tar archive suffix (``.tar``, ``.tar.gz``, ``.tgz``, ...).

    Example:
        >>> is_tar_archive("cifar10-jpeg.tar.gz")
        True
    """
    return str(path).lower().endswith(TAR_SUFFIXES)


def strip_archive_suffix(name: str) -> str:
    """``"cifar10-jpeg.tar.gz"`` -> ``"cifar10-jpeg"`` (other names unchanged)."""
    for suffix in TAR_SUFFIXES:  # longest first where they overlap (.tar.gz before .tar)
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def safe_member_parts(name: str) -> tuple[str, ...] | None:
    """Split an archive member name into parts, or ``None`` if it could escape a target
    directory were it ever extracted (absolute path, drive letter, ``..``)."""
    name = name.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return None
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if any(p == ".." for p in parts):
        return None
    return parts


@contextlib.contextmanager
def open_tar_stream(path: Path) -> Iterator[tarfile.TarFile]:
    """Open a (compressed) tar for one sequential pass (``r|``: no seeking, no index).

    Decompression goes through gzip/bz2/lzma file objects rather than tarfile's own stream
    reader because they raise on a truncated stream; tarfile's silently ends the archive.
    """
    with open(path, "rb") as raw:
        magic = raw.read(6)
    if magic[:2] == b"\x1f\x8b":
        opener = gzip.open
    elif magic[:3] == b"BZh":
        opener = bz2.open
    elif magic == b"\xfd7zXZ\x00":
        opener = lzma.open
    else:
        opener = open
    with opener(path, "rb") as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        yield tar
