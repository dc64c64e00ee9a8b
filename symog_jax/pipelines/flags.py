"""argparse types that validate a flag's value while the command line is parsed.

Every command-line entry point (``experiments/*``, :mod:`symog_jax.pipelines.cli`) uses these
for its numeric flags, so a bad value (``nan``, a negative count, a bit-width outside its range)
is refused by argparse -- ``error: argument --flag: ...``, exit code 2 -- before any data is
loaded or anything is trained.

Example:
  >>> import argparse
  >>> p = argparse.ArgumentParser(prog="x", exit_on_error=False)
  >>> _ = p.add_argument("--limit", type=positive_int)
  >>> p.parse_args(["--limit", "5"]).limit
  5
  >>> try:
  ...     p.parse_args(["--limit", "0"])
  ... except argparse.ArgumentError as e:
  ...     print(e)
  argument --limit: must be an integer >= 1, got '0'
"""

from __future__ import annotations

import argparse
import math
from typing import Callable

__all__ = ["finite_float", "int_in", "nonnegative_float", "nonnegative_int", "positive_float",
           "positive_int"]


def _int(text: str, lo: int | None, hi: int | None) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        value = None
    if value is None or (lo is not None and value < lo) or (hi is not None and value > hi):
        if hi is None:
            want = f"an integer >= {lo}"
        else:
            want = f"an integer in {lo}..{hi}"
        raise argparse.ArgumentTypeError(f"must be {want}, got {text!r}")
    return value


def _float(text: str, lo: float | None, strict: bool, what: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or (lo is not None and (value <= lo if strict else value < lo)):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer ``>= 1`` (a count of images, epochs, examples)."""
    return _int(text, 1, None)


def nonnegative_int(text: str) -> int:
    """An integer ``>= 0`` (0 meaning none, e.g. no fine-tuning epochs)."""
    return _int(text, 0, None)


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type for integers in ``lo..hi`` (inclusive)."""
    def parse(text: str) -> int:
        return _int(text, lo, hi)
    parse.__name__ = f"int_in_{lo}_{hi}"
    return parse


def finite_float(text: str) -> float:
    """A finite number (no ``nan``/``inf``)."""
    return _float(text, None, False, "a finite number")


def positive_float(text: str) -> float:
    """A finite number ``> 0`` (a learning rate, a weight)."""
    return _float(text, 0.0, True, "a finite number > 0")


def nonnegative_float(text: str) -> float:
    """A finite number ``>= 0`` (a tolerance)."""
    return _float(text, 0.0, False, "a finite number >= 0")
