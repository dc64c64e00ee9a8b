"""Holistic filter pruning (Enderich, Timm, Burgard, WACV 2021): complexity model, gates, thinning.

* :mod:`~symog_jax.pruning.complexity`: the prunable decisions of any described model and its
  exact parameter / MAC counts as a function of the kept channels (differentiable in jnp).
* :mod:`~symog_jax.pruning.gates`: per-channel gates, masks, soft kept counts, the budget loss.
* :mod:`~symog_jax.pruning.thin`: exact channel selection for requested rates and the physically
  thinner registry model.
* :mod:`~symog_jax.pruning.baselines`: the uniformly thinner network with the same MACs and
  per-layer L1-norm filter selection with the same rate everywhere.

``python -m experiments.prune`` runs the whole pipeline (prune, remove, fine-tune).

>>> from symog_jax.pruning import architecture, complexity
>>> arch = architecture("resnet56", 10)
>>> [round(v / 1e6, 2) for v in complexity(arch, arch.full)]
[0.85, 125.49]
"""

from symog_jax.pruning.baselines import l1_select, uniform_width_for_macs
from symog_jax.pruning.complexity import (Architecture, architecture, architecture_of,
                                          complexity, min_widths, relative_complexity,
                                          traced_complexity)

__all__ = ["Architecture", "architecture", "architecture_of", "complexity", "min_widths",
           "relative_complexity", "traced_complexity", "l1_select", "uniform_width_for_macs"]
