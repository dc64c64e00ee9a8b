"""Baselines at the same budget: the uniform width search and L1-norm filter selection, against
brute force (a dense grid of multipliers, per-layer norms computed directly from the kernels)."""

from __future__ import annotations

import numpy as np
import pytest

from symog_jax.models import init_variables
from symog_jax.pruning import architecture, complexity
from symog_jax.pruning.baselines import (channel_l1_norms, l1_select, uniform_width_for_macs,
                                         uniform_widths)

CASES = [("lenet5", (28, 28, 1), 0.125), ("vgg7", (32, 32, 3), 0.0625),
         ("resnet20", (32, 32, 3), 0.25)]


def _grid_best(arch, macs=None, params=None):
    """Brute force: the largest network on a fine multiplier grid meeting the rates."""
    p0, m0 = complexity(arch, arch.full)
    best = None
    for m in np.arange(1e-4, 1.2, 1e-4):
        w = tuple(0 if f == 0 else max(1, int(np.floor(f * m + 0.5))) for f in arch.full)
        p, mac = complexity(arch, w)
        if (macs is None or 1 - mac / m0 >= macs) and (params is None or 1 - p / p0 >= params):
            if best is None or mac > best[1] or (mac == best[1] and p > best[2]):
                best = (w, mac, p)
    return best


@pytest.mark.parametrize("name, shape, width", CASES)
@pytest.mark.parametrize("rates", [{"macs": 0.4}, {"macs": 0.6}, {"macs": 0.5, "params": 0.7}])
def test_uniform_width_is_the_largest_meeting_the_budget(name, shape, width, rates):
    arch = architecture(name, 10, shape, width=width)
    u = uniform_width_for_macs(arch, rates.get("macs"), rates.get("params"))
    w, mac, p = _grid_best(arch, rates.get("macs"), rates.get("params"))
    assert complexity(arch, u.widths) == (p, mac)
    assert u.widths == uniform_widths(arch, u.multiplier)
    assert u.macs_reduction >= rates["macs"]


def test_uniform_width_errors_are_one_line():
    arch = architecture("lenet5", 10, (28, 28, 1))
    for rate, msg in ((1.0, r"must be a fraction in \(0, 1\)"), (0.99999, "out of reach"),
                      (None, "give prune_params")):
        with pytest.raises(ValueError, match=msg) as e:
            uniform_width_for_macs(arch, rate)
        assert "\n" not in str(e.value)


def test_l1_select_keeps_the_largest_norm_filters_at_the_uniform_counts():
    arch = architecture("lenet5", 10, (28, 28, 1), width=0.25)
    params = init_variables(arch.model(), 3, (28, 28, 1))["params"]
    keep = l1_select(arch, params, prune_macs=0.6)
    counts = uniform_width_for_macs(arch, 0.6).widths
    for name, n in zip(arch.decisions, counts):
        norms = np.abs(np.asarray(params[name]["kernel"])).reshape(
            -1, arch.full[arch.decisions.index(name)]).sum(axis=0)
        expected = np.sort(np.argsort(-norms, kind="stable")[:n])
        np.testing.assert_array_equal(keep[name], expected)


def test_channel_norms_sum_every_writer_of_a_resnet_stream():
    arch = architecture("resnet20", 10, width=0.25)
    params = init_variables(arch.model(), 0, (32, 32, 3))["params"]
    norms = channel_l1_norms(arch, params)
    k = lambda path: np.abs(np.asarray(params[path[0]][path[1]]["kernel"] if len(path) == 2  # noqa
                                       else params[path[0]]["kernel"])).sum(axis=(0, 1, 2))
    n1 = arch.full[0]
    expected = k(("conv_in",)) + sum(k((f"stage1_block{b}", "conv2")) for b in (1, 2, 3))
    expected = expected + sum(k((f"stage{s}_block{b}", "conv2"))[:n1]
                              for s in (2, 3) for b in (1, 2, 3))
    np.testing.assert_allclose(norms["stream1"], expected, rtol=1e-6)
