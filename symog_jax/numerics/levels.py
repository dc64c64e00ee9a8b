"""The one interface of every kind of quantization levels: integer codes times a step.

A *format* says how a tensor is stored after quantization: each element becomes an integer
``code`` in ``[code_min, code_max]`` and its value is ``code * step``, where the step is one
number for the tensor or one per channel, group or kernel position (broadcast against the
tensor by :meth:`Levels.step_for`). Every kind -- power-of-two fixed point
(:class:`~symog_jax.numerics.formats.FixedPointFormat`), SYQ's scaled ternary/binary levels
(:class:`~symog_jax.quantizers.syq.SYQFormat`), GDRQ's group scales
(:class:`~symog_jax.quantizers.gdrq.GDRQFormat`) and plain float scales
(:class:`~symog_jax.quantizers.scaled.ScaledFormat`) -- subclasses :class:`Levels`, and
everything above (``hard_quantize``, the integer export, the figures) uses only these members:

======================  =========================================================================
member                  meaning
======================  =========================================================================
``kind``                class attribute: the registry key and the ``"kind"`` of the record
``bits``                storage bits per code
``code_min/code_max``   the code range (Python ints)
``step_for(ndim)``      the step as an array broadcastable against a rank-``ndim`` tensor
``to_codes(x)``         int32 codes of ``x`` (jnp in, jnp out; works under ``jit``)
``quantize(x)``         ``x`` on the levels: ``to_codes(x) * step_for(x.ndim)``, ``x``'s dtype
``code_levels()``       the codes ``to_codes`` can produce, sorted (binary SYQ has no 0)
``value_levels()``      the values ``quantize`` can produce, where one step holds for the whole
                        tensor; ``None`` for a step per channel, group or position
``label()``             a short tag for tables (``"3"``, ``"-1..4"``, ``"pixelx9"``)
``overhead_bits``       storage beyond the codes (float scales; 0 for power-of-two steps)
``rounding_stats(x)``   ``(near_level_fraction, max_abs_error_in_steps)`` for the report
``concrete()``          the format with concrete (host) values, for use outside ``jit``
``to_record()``         a JSON-able dict with a ``"kind"`` key
``to_arrays(ndim)``     the arrays a record needs beside it (``{"step": ...}``)
``from_record(r, a)``   class method, the inverse of the two above
``examples()``          class method, small instances that the contract test runs over
======================  =========================================================================

Why an abstract base class and not a :class:`typing.Protocol`: the kinds share real code
(``quantize`` from the codes, the levels, the report statistics, value equality), and a
subclass registers itself by defining ``kind`` (:meth:`Levels.__init_subclass__`), so that a
new kind of levels is one module and nothing else names it. The base class also gives
``isinstance(x, Levels)``, which tree traversals use to stop at a format. The data members
(``bits``, ``code_min``, ``code_max``) are plain attributes or properties of the subclasses,
not abstract properties here, because the dataclass kinds store them as fields.

**Registry.** :func:`from_record` looks the record's ``"kind"`` up in a dict filled by the
subclasses; :func:`kinds` lists it. A kind's module must be imported for its records to be
readable: :mod:`symog_jax.quantizers` imports its kinds, and ``import symog_jax`` imports it.

**Contract** (checked for every registered kind by ``tests/test_levels.py``): codes lie in
``[code_min, code_max]``; ``quantize(x) == to_codes(x) * step_for(x.ndim)``; the record round
trip gives an equal format; ``value_levels()`` (where not ``None``) is exactly the set of values
``quantize`` produces. ``quantize`` is idempotent when every level lies in its own rounding
cell: always for fixed point; for SYQ when every scale exceeds the threshold; for GDRQ when the
learned scales are within ``1 / (2 * code_max)`` of the clip's step (the examples are).
"""

from __future__ import annotations

import abc
import dataclasses
import json
from typing import Any, ClassVar, Mapping

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Levels", "RecordNeedsArrays", "from_record", "get_kind", "kinds"]

_KINDS: dict[str, type["Levels"]] = {}


class RecordNeedsArrays(ValueError):
    """A record alone cannot rebuild its format: the arrays (e.g. ``"step"``) are missing."""


class Levels(abc.ABC):
    """Base of every kind of quantization levels (see the module docstring for the members).

    Subclasses set the class attribute ``kind`` (a new, non-empty string) to be registered.
    """

    kind: ClassVar[str]
    #: Bits per stored code (subclasses: a field or a property).
    bits: int
    #: Smallest and largest integer code (subclasses: fields, class attributes or properties).
    code_min: int
    code_max: int

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if kind is None:
            return
        if not isinstance(kind, str) or not kind:
            raise TypeError(f"{cls.__name__}.kind must be a non-empty string, got {kind!r}")
        if kind in _KINDS and _KINDS[kind].__qualname__ != cls.__qualname__:
            raise ValueError(f"a kind of levels named {kind!r} is already registered "
                             f"({_KINDS[kind].__module__}.{_KINDS[kind].__qualname__})")
        _KINDS[kind] = cls

    # -- what every kind implements ----------------------------------------------------------
    @abc.abstractmethod
    def step_for(self, x_ndim: int, dtype=jnp.float32) -> jax.Array:
        """The step (scale) of the codes, broadcastable against a rank-``x_ndim`` tensor."""

    @abc.abstractmethod
    def to_codes(self, x) -> jax.Array:
        """int32 codes of ``x`` (same shape), in ``[code_min, code_max]``."""

    @property
    @abc.abstractmethod
    def overhead_bits(self) -> int:
        """Storage bits of the whole tensor beyond its codes (e.g. its float32 scales)."""

    @abc.abstractmethod
    def label(self) -> str:
        """A short tag for report tables."""

    @abc.abstractmethod
    def to_record(self) -> dict:
        """A JSON-able description with a ``"kind"`` key (arrays go to :meth:`to_arrays`)."""

    @classmethod
    @abc.abstractmethod
    def from_record(cls, record: Mapping[str, Any],
                    arrays: Mapping[str, np.ndarray] | None = None) -> "Levels":
        """The format of :meth:`to_record`'s ``record`` and :meth:`to_arrays`'s ``arrays``.

        Raises:
          RecordNeedsArrays: the record alone does not determine the format and ``arrays``
            is ``None``.
        """

    @classmethod
    @abc.abstractmethod
    def examples(cls) -> list[tuple["Levels", tuple[int, ...]]]:
        """``[(format, shape of a tensor it applies to), ...]``, covering the kind's variants;
        the contract test runs over them."""

    # -- shared behaviour --------------------------------------------------------------------
    def quantize(self, x) -> jax.Array:
        """``x`` rounded to the levels: ``to_codes(x) * step_for(x.ndim)`` in ``x``'s dtype
        (float32 for integer input)."""
        x = jnp.asarray(x)
        dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
        return self.from_codes(self.to_codes(x), dtype)

    def from_codes(self, codes, dtype=jnp.float32) -> jax.Array:
        """``codes * step`` computed in float32 (exact for every kind here), cast to ``dtype``."""
        codes = jnp.asarray(codes)
        return (codes.astype(jnp.float32) * self.step_for(codes.ndim, jnp.float32)).astype(dtype)

    def code_levels(self) -> np.ndarray:
        """The codes :meth:`to_codes` can produce, sorted, int32 ``(K,)``."""
        return np.arange(int(self.code_min), int(self.code_max) + 1, dtype=np.int32)

    def value_levels(self) -> np.ndarray | None:
        """The values :meth:`quantize` can produce, sorted, float64 ``(K,)``, when the format
        has one step for the whole tensor; ``None`` when it has a step per channel, group or
        position (even if they happen to be equal: the figures then plot in units of steps).

        (The default reads ``step_for(1)``; a kind whose steps need a higher rank overrides.)
        """
        steps = np.asarray(self.step_for(1), np.float32)
        if steps.size != 1:
            return None
        return self.code_levels().astype(np.float64) * np.float64(steps.ravel()[0])

    def rounding_stats(self, x) -> tuple[float, float]:
        """``(fraction of entries within a quarter step of their level, largest |x - q(x)| /
        step)`` of a concrete tensor; what the report calls ``near_level_fraction`` and
        ``max_abs_error_in_steps``."""
        x32 = jnp.asarray(x, jnp.float32)
        q = self.quantize(x).astype(jnp.float32)
        err = jnp.abs(x32 - q) / self.step_for(x32.ndim, jnp.float32)
        near = int(jnp.count_nonzero(err <= 0.25)) / max(int(np.size(x)), 1)
        return near, float(jnp.max(err)) if err.size else 0.0

    def concrete(self) -> "Levels":
        """The format with concrete host values (the default: itself)."""
        return self

    def to_arrays(self, x_ndim: int) -> dict[str, np.ndarray]:
        """The arrays that :meth:`from_record` needs beside the record: the float32 step for a
        rank-``x_ndim`` tensor (what the integer export stores)."""
        return {"step": np.asarray(self.step_for(x_ndim), np.float32)}

    # -- value equality (dataclass kinds holding arrays) -------------------------------------
    def _identity(self) -> tuple:
        return tuple(_hashable(getattr(self, f.name)) for f in dataclasses.fields(self))

    def __eq__(self, other):
        return type(self) is type(other) and self._identity() == other._identity()

    def __hash__(self):
        return hash((type(self).__name__, self._identity()))


def _hashable(value):
    """Arrays as (shape, values) tuples, dicts as sorted JSON: equal contents, equal keys."""
    if isinstance(value, (np.ndarray, jax.Array)):
        arr = np.asarray(value)
        return (arr.shape, tuple(arr.ravel().tolist()))
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def kinds() -> dict[str, type[Levels]]:
    """``{kind: class}`` of the registered kinds of levels, in registration order.

    Example:
      >>> sorted(kinds())
      ['fixed_point', 'gdrq', 'scaled', 'syq']
    """
    return dict(_KINDS)


def get_kind(kind: str) -> type[Levels]:
    """The class registered as ``kind``.

    Raises:
      ValueError: no such kind (the message lists the registered ones).
    """
    try:
        return _KINDS[kind]
    except (KeyError, TypeError):
        raise ValueError(f"unknown kind of levels {kind!r}; registered kinds: "
                         f"{', '.join(_KINDS)}") from None


def from_record(record: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None, *,
                unknown_as: str | None = None) -> Levels:
    """The format described by ``record`` (a :meth:`Levels.to_record` dict) and ``arrays``.

    Args:
      record: a dict with a ``"kind"`` key.
      arrays: :meth:`Levels.to_arrays`'s dict (``None``: the record alone; enough for fixed
        point and GDRQ, and for SYQ with one scale).
      unknown_as: a registered kind that reads records of unregistered kinds (the integer
        export reads those as ``"scaled"``: codes times the stored step); ``None`` refuses them.

    Raises:
      ValueError: no ``"kind"``, or an unregistered one and no ``unknown_as``.
      RecordNeedsArrays: the kind needs ``arrays``.

    Example:
      >>> from_record({"kind": "fixed_point", "bits": 2, "frac_bits": 1}).value_levels()
      array([-0.5,  0. ,  0.5])
    """
    if not isinstance(record, Mapping) or "kind" not in record:
        raise ValueError(f"a format record needs a 'kind' key, got {record!r}")
    cls = _KINDS.get(record["kind"])
    if cls is None:
        cls = get_kind(unknown_as if unknown_as is not None else record["kind"])
    return cls.from_record(record, arrays)
