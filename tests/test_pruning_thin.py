"""Exact selection and physical removal: the thin registry model computes what the masked
full model computes, and the achieved reductions are within 1 percentage point of the rates
(both, when both are asked; brute force over every count vector on tiny nets)."""

from __future__ import annotations

import functools
import itertools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symog_jax.models import count_params
from symog_jax.pruning import architecture, complexity
from symog_jax.pruning import thin
from symog_jax.pruning.gates import apply_masks
from symog_jax.pruning.thin import (achieved_reductions, masks_for, select_channels,
                                    thin_variables)

FORWARD = [  # name, num_classes, (H, W, C), width: small nets, one forward each
    ("lenet5", 10, (28, 28, 1), 0.25),
    ("vgg7", 10, (32, 32, 3), 0.125),
    ("vgg11", 10, (32, 32, 3), 0.125),
    ("resnet20", 10, (32, 32, 3), 0.25),
    ("densenet40", 10, (32, 32, 3), 0.125),
    ("resnet18", 10, (32, 32, 3), 0.125),
]
RATES = [(None, 0.5), (0.5, None), (0.4, 0.45), (0.6, 0.6), (0.5, 0.4), (0.35, 0.5),
         (0.8, 0.75)]
ALL = ["lenet5", "vgg7", "vgg11", "resnet20", "resnet56", "densenet40", "densenet_bc100",
       "resnet18", "resnet50"]


def _random_variables(model, shape, seed=0):
    x = jax.ShapeDtypeStruct((1,) + shape, jnp.float32)
    shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            return rng.normal(0, math.sqrt(2.0 / math.prod(leaf.shape[:-1])), leaf.shape)
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5, leaf.shape)
        return rng.normal(0, 0.2, leaf.shape)
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32),
                                  jax.tree_util.tree_map_with_path(fill, shapes))


def _apply(model, variables, x):
    fn = jax.jit(functools.partial(model.apply, train=False),
                 compiler_options={"xla_backend_optimization_level": 0,
                                   "xla_llvm_disable_expensive_passes": True})
    return np.asarray(fn(variables, x))


@pytest.mark.e2e
@pytest.mark.parametrize("name,nc,shape,width", FORWARD)
def test_thin_model_equals_masked_model(name, nc, shape, width):
    arch = architecture(name, nc, shape, width=width)
    model = arch.model()
    variables = _random_variables(model, shape)
    rng = np.random.default_rng(1)
    scores = {k: rng.random(n) for k, n in zip(arch.decisions, arch.full)}
    keep = select_channels(arch, scores, prune_macs=0.5)
    masked = dict(variables, params=apply_masks(arch, variables["params"], masks_for(arch, keep)))
    widths, thin = thin_variables(arch, variables, keep)
    thin_model = arch.model(widths)
    x = rng.normal(size=(2,) + shape).astype(np.float32)
    want = _apply(model, masked, x)
    got = _apply(thin_model, thin, x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # the thin network is genuinely smaller, by exactly the counted parameters
    assert count_params(thin["params"]) == complexity(arch, widths)[0]
    assert count_params(thin["params"]) < count_params(variables["params"])


@pytest.mark.e2e
@pytest.mark.parametrize("name", ALL)
def test_achieved_rates_within_one_point(name):
    shape = (224, 224, 3) if name in ("resnet18", "resnet50") else (
        (28, 28, 1) if name == "lenet5" else (32, 32, 3))
    width = 0.25 if name in ("resnet50", "densenet_bc100") else 1.0
    arch = architecture(name, 10, shape, width=width)
    rng = np.random.default_rng(0)
    for prune_params, prune_macs in RATES:
        scores = {k: rng.random(n) for k, n in zip(arch.decisions, arch.full)}
        with warnings.catch_warnings():
            warnings.simplefilter("error")          # a miss would warn: make it fail here
            keep = select_channels(arch, scores, prune_params, prune_macs)
        red_p, red_m = achieved_reductions(arch, [len(keep[k]) for k in arch.decisions])
        for red, rate in ((red_p, prune_params), (red_m, prune_macs)):
            if rate is not None:           # every asked rate in [rate, rate + 1 pp]
                assert rate <= red <= rate + 0.01 + 1e-12, (name, prune_params, prune_macs,
                                                            red_p, red_m)


def _all_counts(arch):
    """Brute force: every count vector ``(N, D)`` and its exact reductions ``(N,)`` x 2."""
    grid = np.array(list(itertools.product(*[range(1, f + 1) for f in arch.full])))
    p0, m0 = complexity(arch, arch.full)
    p, m = zip(*(complexity(arch, tuple(int(v) for v in n)) for n in grid))
    return grid, 1 - np.array(p) / p0, 1 - np.array(m) / m0


@pytest.mark.parametrize("name,shape,widths,exhaustive", [
    ("lenet5", (28, 28, 1), (4, 6, 10), True),
    ("lenet5", (28, 28, 1), (8, 16, 24), False),
    ("vgg7", (32, 32, 3), (3, 5, 4, 6, 8, 4, 6), True),
    ("vgg7", (32, 32, 3), (3, 5, 4, 6, 8, 4, 6), False)])
def test_no_selection_missed_on_a_tiny_net(name, shape, widths, exhaustive, monkeypatch):
    """Against every count vector: a selection in the band is found whenever one exists
    (``exhaustive=False``: the local search alone, in at least 90 % of the cases); where none
    exists a one-line warning says so and every rate is still reached."""
    arch = architecture(name, 10, shape, widths=widths)
    _, all_p, all_m = _all_counts(arch)
    if not exhaustive:
        monkeypatch.setattr(thin, "EXHAUSTIVE_LIMIT", 0)
    rng = np.random.default_rng(3)
    found = missed = absent = 0
    while found + missed + absent < 60:
        if rng.random() < 0.5:           # near an achievable pair: often one exists
            k = rng.integers(len(all_p))
            rp, rm = (float(np.round(v - rng.uniform(0, 0.012), 4))
                      for v in (all_p[k], all_m[k]))
        else:
            rp, rm = (float(v) for v in np.round(rng.uniform(0.05, 0.8, 2), 3))
        if min(rp, rm) <= 0:
            continue
        if rp > all_p.max() or rm > all_m.max():         # out of reach: check_budget
            continue
        exists = bool(np.any((all_p >= rp) & (all_p <= rp + 0.01)
                             & (all_m >= rm) & (all_m <= rm + 0.01)))
        scores = {k: rng.random(n) for k, n in zip(arch.decisions, arch.full)}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            keep = select_channels(arch, scores, rp, rm)
        p, m = achieved_reductions(arch, [len(keep[k]) for k in arch.decisions])
        assert p >= rp and m >= rm
        inside = p <= rp + 0.01 + 1e-12 and m <= rm + 0.01 + 1e-12
        assert inside == (not caught), (rp, rm, p, m)
        if caught:
            msg = str(caught[0].message)
            assert "\n" not in msg and "one channel changes the reductions by at least" in msg
        if not exists:
            absent += 1
            assert not inside
            if exhaustive:
                assert "exists" in str(caught[0].message)
        elif inside:
            found += 1
        else:
            missed += 1
            assert not exhaustive, (rp, rm, p, m)
    assert found >= 5 and absent >= 5, (found, missed, absent)       # both cases seen
    assert missed <= 0.1 * (found + missed), (found, missed)


def test_selection_follows_the_scores():
    arch = architecture("lenet5", 10, (28, 28, 1), widths=(4, 4, 4))
    scores = {"conv1": [0.9, 0.1, 0.8, 0.7], "conv2": [1, 1, 1, 1], "fc1": [1, 1, 1, 1]}
    keep = select_channels(arch, scores, prune_macs=0.24)     # one conv1 channel: 24.9 %
    assert 1 not in keep["conv1"] and len(keep["conv2"]) == 4


def test_unreachable_selection_is_a_one_line_error():
    arch = architecture("lenet5", 10, (28, 28, 1))
    with pytest.raises(ValueError, match="out of reach") as e:
        select_channels(arch, {k: np.ones(n) for k, n in zip(arch.decisions, arch.full)},
                        prune_params=0.99999)
    assert "\n" not in str(e.value)
