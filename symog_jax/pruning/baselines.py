"""The two baselines a user tries before holistic pruning, at the same parameter/MAC budget.

* :func:`uniform_width_for_macs`: one width multiplier ``m`` for every decision (a uniformly
  thinner network, trained from scratch), the largest whose counts meet the requested
  reductions. ``widths(m)`` rounds ``full * m`` half up (at least one channel), so the counts
  are step functions of ``m``; every step (``m = (k + 1/2) / full_d``) is visited, which makes
  the search exact.
* :func:`l1_select`: per-layer L1-norm filter pruning (Li et al., ICLR 2017) with the same
  rate everywhere -- the same per-decision counts as the uniform network -- keeping in each
  decision the channels with the largest L1 norm of the weights that produce them
  (:func:`channel_l1_norms`), then fine-tuning the thinned trained network.

Example:
  >>> from symog_jax.pruning import architecture
  >>> arch = architecture("lenet5", 10, (28, 28, 1))
  >>> u = uniform_width_for_macs(arch, 0.6)
  >>> u.widths, round(u.macs_reduction, 4)
  ((19, 39, 312), 0.6117)
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import numpy as np

from symog_jax.pruning.complexity import Architecture, complexity
from symog_jax.pruning.gates import check_budget

__all__ = ["UniformWidth", "channel_l1_norms", "l1_select", "uniform_width_for_macs",
           "uniform_widths"]


class UniformWidth(NamedTuple):
    """A uniformly thinner network: ``multiplier`` (the middle of its interval of
    multipliers), ``widths`` per decision and its ``(params|macs)_reduction``."""
    multiplier: float
    widths: tuple
    params_reduction: float
    macs_reduction: float


def uniform_widths(arch: Architecture, multiplier: float) -> tuple[int, ...]:
    """``max(1, floor(full * multiplier + 1/2))`` per decision (0 where the full is 0).

    Example:
      >>> from symog_jax.pruning import architecture
      >>> uniform_widths(architecture("lenet5", 10, (28, 28, 1)), 0.25)
      (8, 16, 128)
    """
    if not (isinstance(multiplier, (int, float)) and math.isfinite(multiplier)
            and multiplier > 0):
        raise ValueError(f"multiplier must be a finite number > 0, got {multiplier!r}")
    return tuple(0 if f == 0 else max(1, math.floor(f * multiplier + 0.5)) for f in arch.full)


def _reductions(arch: Architecture, widths: Sequence[int]) -> tuple[float, float]:
    p0, m0 = complexity(arch, tuple(int(v) for v in arch.full))
    p, m = complexity(arch, tuple(int(v) for v in widths))
    return 1.0 - p / p0, 1.0 - m / m0


def _check_rates(arch: Architecture, prune_params, prune_macs) -> None:
    check_budget(arch, prune_params, prune_macs)


def uniform_width_for_macs(arch: Architecture, prune_macs: float | None = None,
                           prune_params: float | None = None) -> UniformWidth:
    """The largest uniform multiplier whose network removes at least the requested fractions.

    Args:
      arch: the full network (its :attr:`~Architecture.full` widths are multiplied).
      prune_macs, prune_params: fractions to remove, in (0, 1) (at least one).

    Returns:
      :class:`UniformWidth`; its reductions are the smallest reachable ones >= the requested.

    Raises:
      ValueError: (one line) no rate, a rate outside (0, 1) or out of reach.

    Example:
      >>> from symog_jax.pruning import architecture
      >>> u = uniform_width_for_macs(architecture("resnet20", 10), 0.4)
      >>> u.widths[:3], round(u.macs_reduction, 3)
      ((12, 12, 25), 0.417)
    """
    _check_rates(arch, prune_params, prune_macs)
    steps = sorted({(k + 0.5) / f for f in arch.full if f > 0 for k in range(1, f)})
    # Intervals [0, s0), [s0, s1), ...: widths are constant inside each; take their middles.
    bounds = [0.0] + steps + [max(steps, default=0.5) * 2 + 1.0]
    best = None
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        m = (lo + hi) / 2 if lo > 0 else hi / 2
        widths = uniform_widths(arch, m)
        rp, rm = _reductions(arch, widths)
        if (prune_params is None or rp >= prune_params) and \
                (prune_macs is None or rm >= prune_macs):
            best = UniformWidth(m, widths, rp, rm)
        else:
            break              # counts only grow with m
    if best is None:           # not reached: already refused by check_budget
        raise ValueError("the requested rates cannot be reached by a uniform width")
    return best


def channel_l1_norms(arch: Architecture, params: Any) -> dict[str, np.ndarray]:
    """``{decision: float64 (channels,)}``: L1 norm of the kernel weights producing each
    channel, summed over every conv/dense layer that writes it (a ResNet stream: the stem and
    every block's last conv and projection).

    Example:
      >>> from symog_jax.pruning import architecture
      >>> from symog_jax.models import init_variables
      >>> arch = architecture("lenet5", 10, (28, 28, 1), widths=(2, 1, 1))
      >>> p = init_variables(arch.model(), 0, (28, 28, 1))["params"]
      >>> n = channel_l1_norms(arch, p)["conv1"]
      >>> bool(np.allclose(n, np.abs(np.asarray(p["conv1"]["kernel"])).sum(axis=(0, 1, 2))))
      True
    """
    norms = [np.zeros(f, np.float64) for f in arch.full]
    for layer in arch.layers:
        node = params
        for key in layer.path.split("/"):
            node = node[key]
        k = np.abs(np.asarray(node["kernel"], np.float64))
        per_out = k.reshape(-1, k.shape[-1]).sum(axis=0)
        for d, start, size in arch.chan_offsets(layer.cout):
            if d is not None:
                norms[d] += per_out[start:start + size]
    return dict(zip(arch.decisions, norms))


def l1_select(arch: Architecture, params: Any, prune_macs: float | None = None,
              prune_params: float | None = None) -> dict[str, np.ndarray]:
    """Kept channel indices per decision: the same rate in every decision, largest L1 first.

    The per-decision counts are those of :func:`uniform_width_for_macs` (the largest uniform
    network meeting the rates); within a decision the channels with the largest
    :func:`channel_l1_norms` stay (ties: the lower index). Use with
    :func:`~symog_jax.pruning.thin.thin_variables`.

    Returns:
      ``{decision: sorted int64 indices}``.

    Example:
      >>> from symog_jax.pruning import architecture
      >>> from symog_jax.models import init_variables
      >>> arch = architecture("lenet5", 10, (28, 28, 1), width=0.125)
      >>> p = init_variables(arch.model(), 0, (28, 28, 1))["params"]
      >>> {k: len(v) for k, v in l1_select(arch, p, prune_macs=0.5).items()}
      {'conv1': 2, 'conv2': 5, 'fc1': 40}
    """
    counts = uniform_width_for_macs(arch, prune_macs, prune_params).widths
    norms = channel_l1_norms(arch, params)
    out = {}
    for name, n in zip(arch.decisions, counts):
        order = np.lexsort((np.arange(len(norms[name])), -norms[name]))   # norm desc, index asc
        out[name] = np.sort(order[:n]).astype(np.int64)
    return out
