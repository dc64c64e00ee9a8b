"""Writing files so that nothing is lost: the one atomic-write helper every writer uses.

A file is written to a temporary file in its own directory, flushed and ``fsync``-ed, then
renamed over the target with :func:`os.replace`. A reader (or a later run) therefore sees the
old file or the new one, never half of one; a write that fails (an exception in the writing
function, a full disk, Ctrl-C) removes its temporary file and leaves the previous file exactly
as it was. :func:`atomic_write_many` does the same for files that belong together (an export's
``.npz`` and its manifest): every file is written to its temporary first, and only then are
they renamed, in the order given.

JSON is written strictly (``allow_nan=False``): a NaN or inf raises ``ValueError`` before
anything is written. Appended logs (``metrics.jsonl``) use :func:`append_line`, which writes
one whole line per call and flushes it to disk.

This module is the package's lowest layer: it imports nothing from ``symog_jax``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_write_many", "write_bytes_atomic", "write_text_atomic",
           "write_json_atomic", "json_text", "append_line", "save_figure_atomic",
           "path_in_dir", "resolve_in_dir"]


def _temp_for(path: Path, prefix: str | None, suffix: str) -> Path:
    prefix = f".{path.name}." if prefix is None else prefix
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=suffix)
    os.close(fd)
    return Path(tmp)


def _write_temp(tmp: Path, write_fn: Callable[[IO], Any], binary: bool) -> None:
    with open(tmp, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
        write_fn(f)
        f.flush()
        os.fsync(f.fileno())


def atomic_write(path: str | os.PathLike, write_fn: Callable[[IO], Any],
                 binary: bool = True, temp_prefix: str | None = None,
                 temp_suffix: str = ".tmp") -> Path:
    """Writes ``path`` by calling ``write_fn(file)`` on a temporary file, then renaming it.

    Args:
      path: the file to (re)write; its directory must exist.
      write_fn: writes the contents to the open file object it is given.
      binary: open the temporary file in binary (default) or text mode (UTF-8).
      temp_prefix, temp_suffix: how the temporary file's name starts and ends (default
        ``.<name>.`` and ``.tmp``; a cache names its temporaries so it can clean up after a
        killed process).

    Returns:
      ``path`` as a :class:`~pathlib.Path`.

    Raises:
      Whatever ``write_fn`` or the file system raises; the previous ``path`` is then unchanged
      and no temporary file is left behind.

    Example:
      >>> import tempfile
      >>> p = Path(tempfile.mkdtemp()) / "a.bin"
      >>> atomic_write(p, lambda f: f.write(b"abc")).read_bytes()
      b'abc'
    """
    return atomic_write_many([(path, write_fn)], binary=binary, temp_prefix=temp_prefix,
                             temp_suffix=temp_suffix)[0]


def atomic_write_many(items: Sequence[tuple[str | os.PathLike, Callable[[IO], Any]]],
                      binary: bool = True, temp_prefix: str | None = None,
                      temp_suffix: str = ".tmp") -> list[Path]:
    """Writes several files that belong together: all temporaries first, then the renames.

    If any ``write_fn`` fails, no target is touched. The renames happen in the order of
    ``items`` (put the file that vouches for the others, e.g. a manifest, last).

    Args:
      items: ``(path, write_fn)`` pairs as for :func:`atomic_write`.
      binary, temp_prefix, temp_suffix: as for :func:`atomic_write`.

    Returns:
      The paths, in order.
    """
    paths = [Path(p) for p, _ in items]
    temps: list[Path] = []
    try:
        for path, (_, write_fn) in zip(paths, items):
            temps.append(_temp_for(path, temp_prefix, temp_suffix))
            _write_temp(temps[-1], write_fn, binary)
        for tmp, path in zip(temps, paths):
            os.replace(tmp, path)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)       # only those not renamed (a failure) still exist
    return paths


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Writes ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Writes ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def json_text(data: Any, indent: int | None = 2) -> str:
    """``data`` as strict JSON text (a NaN or inf raises ``ValueError`` naming the problem).

    Example:
      >>> json_text({"a": 1}, indent=None)
      '{"a": 1}'
      >>> json_text({"a": float("nan")})
      Traceback (most recent call last):
      ...
      ValueError: cannot write non-finite number (NaN or inf) as JSON: {'a': nan}
    """
    try:
        return json.dumps(data, indent=indent, allow_nan=False)
    except ValueError:
        shown = repr(data)
        shown = shown if len(shown) <= 200 else shown[:200] + "..."
        raise ValueError(
            f"cannot write non-finite number (NaN or inf) as JSON: {shown}") from None


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int | None = 2) -> Path:
    """Writes ``data`` as strict JSON (or a ``str`` as it is) to ``path`` atomically.

    A non-finite number raises ``ValueError`` (naming ``path``) before anything is written:
    the previous file stays as it was.

    Example:
      >>> import tempfile
      >>> p = write_json_atomic(Path(tempfile.mkdtemp()) / "r.json", {"acc": 0.5})
      >>> json.loads(p.read_text())
      {'acc': 0.5}
    """
    if isinstance(data, str):
        text = data
    else:
        try:
            text = json_text(data, indent=indent)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        text += "\n" if indent is not None else ""
    return write_text_atomic(path, text)


def save_figure_atomic(fig: Any, path: str | os.PathLike, **savefig_kwargs: Any) -> Path:
    """Saves a matplotlib figure to ``path`` atomically (the format from the file suffix)."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    return atomic_write(path, lambda f: fig.savefig(f, format=fmt, **savefig_kwargs))


def append_line(path: str | os.PathLike, line: str) -> None:
    """Appends ``line`` plus a newline to ``path`` in one write, flushed and ``fsync``-ed.

    Used for logs that grow by whole records (``metrics.jsonl``): a crash can lose the last
    line but never leaves a half line followed by the next record.
    """
    if "\n" in line:
        raise ValueError(f"{path}: an appended line must not contain a newline")
    data = (line + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def path_in_dir(path: str | os.PathLike, directory: str | os.PathLike) -> str:
    """How a file that names ``path`` and lives in ``directory`` stores it: no machine path.

    A path inside ``directory`` is stored relative to it (POSIX form, ``"."`` for the directory
    itself), so the file still points to the right place after the directory is moved or
    copied to another machine. Any other path is stored as it was given (a relative path a user
    typed stays relative). Read it back with :func:`resolve_in_dir`.

    Example:
      >>> path_in_dir("/a/run/checkpoints", "/a/run")
      'checkpoints'
      >>> path_in_dir("data/x.tar.gz", "/a/run")
      'data/x.tar.gz'
    """
    p, d = Path(path), Path(directory)
    try:
        return Path(os.path.abspath(p)).relative_to(os.path.abspath(d)).as_posix() or "."
    except ValueError:
        return os.fspath(path)


def resolve_in_dir(stored: str | os.PathLike, directory: str | os.PathLike) -> Path:
    """A path read from a file in ``directory``: a relative one is taken relative to
    ``directory`` (not to the current working directory); an absolute one as it is.

    Example:
      >>> resolve_in_dir("checkpoints", "/a/run").as_posix()
      '/a/run/checkpoints'
      >>> resolve_in_dir("/b/c", "/a/run").as_posix()
      '/b/c'
    """
    return Path(directory) / stored
