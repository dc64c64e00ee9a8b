"""Exceptions raised by the data loaders.

They subclass the built-in exception a caller would naturally catch
(`FileNotFoundError`, `ValueError`, `ImportError`), so generic handlers keep working.
"""

from __future__ import annotations

__all__ = [
    "DataNotFoundError",
    "CorruptDataError",
    "DataLayoutError",
    "TensorFlowRequiredError",
]


class DataNotFoundError(FileNotFoundError):
    """A data set (or a file it needs) is not where it was looked for.

    The message names every place that was looked at and how to fix it.
    """


class CorruptDataError(ValueError):
    """A file exists but cannot be decoded (truncated download, bad image, bad archive).

    The message names the offending file, or the member inside an archive.
    """


class DataLayoutError(ValueError):
    """Files are readable but not laid out as expected (e.g. no ``train/`` folder)."""


class TensorFlowRequiredError(ImportError):
    """An operation needs TensorFlow (e.g. preparing a tfds data set) and it is missing."""
