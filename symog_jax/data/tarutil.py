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
    "saw_end_marker",
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


class _EndAwareTarInfo(tarfile.TarInfo):
    """Notes on the archive when the header block read is all zeros: the end-of-archive
    marker. tarfile ends iteration the same way when the data simply stops (a tar cut at a
    member boundary), so only this tells a complete archive from a truncated one."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tar)
        except tarfile.EOFHeaderError:  # raised only for a full block of zeros
            tar._symog_end_marker = True  # type: ignore[attr-defined]
            raise


def saw_end_marker(tar: tarfile.TarFile) -> bool:
    """Whether iterating ``tar`` (opened by :func:`open_tar_stream`) reached the
    end-of-archive marker, i.e. the archive was not cut short at a member boundary."""
    return bool(getattr(tar, "_symog_end_marker", False))


@contextlib.contextmanager
def open_tar_stream(path: Path) -> Iterator[tarfile.TarFile]:
    """Open a (compressed) tar for one sequential pass (``r|``: no seeking, no index).

    Decompression goes through gzip/bz2/lzma file objects rather than tarfile's own stream
    reader because they raise on a truncated stream; tarfile's silently ends the archive.
    A tar cut exactly at a member boundary also ends silently: after a full pass,
    :func:`saw_end_marker` tells whether the end-of-archive marker was there.
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
    with opener(path, "rb") as stream, tarfile.open(
        fileobj=stream, mode="r|", tarinfo=_EndAwareTarInfo
    ) as tar:
        yield tar
