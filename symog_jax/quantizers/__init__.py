"""Quantizers for parameter pytrees: which leaves (masks), their fixed-point formats (policy),
learned group scales (SYQ, GDRQ), activation quantization for Flax models, and the kinds of
levels a finalized network is stored in.

Importing this package registers every kind of levels
(:func:`symog_jax.numerics.levels.kinds`): a kind's module registers itself when imported, and
the imports below make sure records of every kind can be read back.
"""

# Importing a module that defines a kind of levels registers it.
from symog_jax.numerics import formats  # noqa: F401  ("fixed_point")
from symog_jax.quantizers import gdrq, scaled, syq  # noqa: F401  ("gdrq", "scaled", "syq")
