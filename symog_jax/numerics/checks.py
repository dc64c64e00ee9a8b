"""The validation helpers of every config object: each appends a one-line problem naming the
field (dotted where the field is in a section, e.g. ``optim.lr``) to a list.

A config collects its problems and raises one ``ValueError`` joining them, so a user sees every
bad field at once. The checks are strict about types: ``True`` is not an integer, the string
``"false"`` is not a bool, the string ``"0.1"`` is not a number.

Example:
  >>> problems = []
  >>> check_bool(problems, "data.augment", "no")
  >>> check_number(problems, "optim.lr", "0.1", 0, lo_open=True)
  >>> check_choice(problems, "optim.optimizer", "adamw", ("sgd", "adam"))
  >>> problems[0]
  "data.augment must be true or false (a JSON boolean), got 'no'"
  >>> problems[1]
  "optim.lr must be a finite number, got '0.1'"
"""

from __future__ import annotations

import math
import numbers


def check_choice(problems: list[str], name: str, value, choices) -> None:
    """``value`` must be one of ``choices``."""
    if value not in choices:
        problems.append(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_bool(problems: list[str], name: str, value) -> None:
    """``value`` must be ``True`` or ``False`` (not a string, not a number)."""
    if not isinstance(value, bool):
        problems.append(f"{name} must be true or false (a JSON boolean), got {value!r}")


def check_str(problems: list[str], name: str, value) -> None:
    """``value`` must be a string."""
    if not isinstance(value, str):
        problems.append(f"{name} must be a string, got {value!r}")


def check_int(problems: list[str], name: str, value, lo=None, hi=None) -> None:
    """``value`` must be an integer (not a bool) in ``[lo, hi]`` (``None``: unbounded)."""
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(f"{name} must be an integer, got {value!r}")
    elif (lo is not None and value < lo) or (hi is not None and value > hi):
        problems.append(f"{name} must be in [{lo}, {hi}], got {value}")


def check_number(problems: list[str], name: str, value, lo=None, hi=None, *,
                 lo_open=False, hi_open=False) -> None:
    """``value`` must be a finite int or float (not a bool or a string) in the range given."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(value)):
        problems.append(f"{name} must be a finite number, got {value!r}")
        return
    v = float(value)
    if lo is not None and (v < lo or (lo_open and v == lo)) or \
            hi is not None and (v > hi or (hi_open and v == hi)):
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        problems.append(f"{name} must be in {left}{lo}, {hi}{right}, got {value}")
