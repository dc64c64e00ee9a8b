"""The bit-allocation pipeline, now :mod:`symog_jax.pipelines.allocation` (this name is kept
for existing code and notebooks)."""

from symog_jax.pipelines.allocation import *  # noqa: F401,F403
from symog_jax.pipelines.allocation import __all__  # noqa: F401
