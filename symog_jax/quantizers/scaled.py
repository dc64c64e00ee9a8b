"""Integer codes times float scales: the ``"scaled"`` kind of levels.

:class:`ScaledFormat` is the plain case of :class:`~symog_jax.numerics.levels.Levels`: codes in
``[code_min, code_max]`` times a float32 scale broadcastable against the tensor (one for the
tensor, per channel, per group -- any broadcastable shape), rounding to the nearest level. The
integer export also reads the record of a kind this code does not know as a ``ScaledFormat``
(its codes and steps are in the file), keeping the record as ``info`` so that writing it again
gives the same record.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from symog_jax.numerics.levels import Levels, RecordNeedsArrays

__all__ = ["ScaledFormat"]


@dataclasses.dataclass(frozen=True, eq=False)
class ScaledFormat(Levels):
    """Codes in ``[code_min, code_max]`` times a float32 scale; nearest level, ties to even.

    Attributes:
      bits, code_min, code_max: the code range (``bits`` is the storage per code).
      scale: float32 array broadcastable to the tensor (``value = code * scale``).
      info: extra record entries (for a record of another kind: that record, whose ``kind``
        :meth:`to_record` keeps).

    Example:
      >>> fmt = ScaledFormat(3, -3, 3, np.array([0.5, 2.0], np.float32))
      >>> fmt.to_codes(jnp.array([[0.7, -3.1], [5.0, 0.9]])).tolist()
      [[1, -2], [3, 0]]
      >>> fmt.quantize(jnp.array([[0.7, -3.1], [5.0, 0.9]])).tolist()
      [[0.5, -4.0], [1.5, 0.0]]
    """
    kind = "scaled"

    bits: int
    code_min: int
    code_max: int
    scale: np.ndarray
    info: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not int(self.code_min) <= int(self.code_max):
            raise ValueError(f"ScaledFormat: empty code range [{self.code_min}, "
                             f"{self.code_max}]")
        object.__setattr__(self, "scale", np.asarray(self.scale, np.float32))

    def step_for(self, x_ndim: int, dtype=jnp.float32) -> jax.Array:
        """The scale, broadcastable against the tensor (as stored)."""
        return jnp.asarray(self.scale, dtype)

    def to_codes(self, x) -> jax.Array:
        """int32 ``round(clip(x / scale, code_min, code_max))`` (computed in float32)."""
        x = jnp.asarray(x, jnp.float32)
        codes = jnp.round(x / self.step_for(x.ndim))
        return jnp.clip(codes, self.code_min, self.code_max).astype(jnp.int32)

    @property
    def overhead_bits(self) -> int:
        """Storage of the float32 scales."""
        return 32 * int(self.scale.size)

    def label(self) -> str:
        return f"{self.info.get('kind', 'scale')}x{self.scale.size}"

    def to_record(self) -> dict:
        """``info`` with the kind (``info``'s own, else ``"scaled"``) and the code range."""
        return {**self.info, "kind": self.info.get("kind", self.kind), "bits": int(self.bits),
                "code_min": int(self.code_min), "code_max": int(self.code_max)}

    @classmethod
    def from_record(cls, record, arrays=None) -> "ScaledFormat":
        """Needs ``arrays["step"]`` (the scale)."""
        if arrays is None or "step" not in arrays:
            raise RecordNeedsArrays(f"a {record.get('kind')!r} record read as scaled levels "
                                    "needs its 'step' array")
        info = {k: v for k, v in record.items()
                if k not in ("bits", "code_min", "code_max")
                and not (k == "kind" and v == cls.kind)}
        return cls(int(record["bits"]), int(record["code_min"]), int(record["code_max"]),
                   np.asarray(arrays["step"], np.float32), info)

    @classmethod
    def examples(cls):
        return [(cls(3, -3, 3, np.array([0.5, 2.0], np.float32)), (4, 2)),
                (cls(4, 0, 15, np.array(0.25, np.float32)), (5, 3)),
                (cls(2, -2, 1, np.array([[0.5], [1.0], [0.25]], np.float32),
                     {"note": "per row"}), (3, 4))]
