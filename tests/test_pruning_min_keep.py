"""``min_keep``: a floor on every decision's kept fraction (masks, selection, budget, method)."""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from symog_jax.methods import make_method
from symog_jax.pruning import architecture, min_widths
from symog_jax.pruning.gates import check_budget, hard_masks
from symog_jax.pruning.thin import achieved_reductions, select_channels

ARCH = architecture("lenet5", 10, (28, 28, 1), widths=(5, 7, 9))


def _expected(gates: np.ndarray, min_keep: float) -> np.ndarray:
    """Brute force: above the threshold, or among the k largest (first index on ties)."""
    k = max(1, math.ceil(min_keep * len(gates) - 1e-9))
    order = sorted(range(len(gates)), key=lambda i: (-gates[i], i))
    out = gates > 0.5
    out[order[:k]] = True
    return out.astype(np.float32)


@pytest.mark.e2e
@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from([0.0, 0.1, 0.3, 0.3, 0.5, 0.6, 0.9]), min_size=21, max_size=21),
       st.sampled_from([0.0, 0.2, 0.25, 0.5, 0.75, 0.99]), st.booleans())
def test_hard_masks_keep_at_least_the_floor_of_largest_gates(values, min_keep, jit):
    gates = {"conv1": np.array(values[:5], np.float32),
             "conv2": np.array(values[5:12], np.float32),
             "fc1": np.array(values[12:], np.float32)}
    fn = (jax.jit(hard_masks, static_argnums=(0, 2)) if jit else hard_masks)
    got = fn(ARCH, {k: jnp.asarray(v) for k, v in gates.items()}, min_keep)
    for name, floor in zip(ARCH.decisions, min_widths(ARCH, min_keep)):
        np.testing.assert_array_equal(np.asarray(got[name]), _expected(gates[name], min_keep))
        assert float(np.sum(got[name])) >= floor


def test_min_widths_are_the_ceiling_of_the_fraction():
    assert min_widths(ARCH) == (1, 1, 1)
    assert min_widths(ARCH, 0.2) == (1, 2, 2)          # ceil(1.0), ceil(1.4), ceil(1.8)
    assert min_widths(ARCH, 0.4) == (2, 3, 4)
    for bad in (1.0, -0.1, float("nan"), True):
        with pytest.raises(ValueError, match="min_keep must be a fraction in"):
            min_widths(ARCH, bad)


def test_a_floor_can_put_a_rate_out_of_reach():
    arch = architecture("vgg7", 10, width=0.125)
    check_budget(arch, prune_macs=0.8)                 # one channel per decision: reachable
    with pytest.raises(ValueError, match=r"keeping 50% of the channels of every decision "
                                         r"still keeps 2\d\.\d\d% of its MACs") as e:
        check_budget(arch, prune_macs=0.8, min_keep=0.5)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="out of reach"):
        make_method("hfp", {"arch": "vgg7", "prune_macs": 0.8, "min_keep": 0.5}) \
            .architecture(_vgg7_params())


def _vgg7_params():
    from symog_jax.models import create_model, init_variables
    return init_variables(create_model("vgg7", 10, width=0.125), 0, (32, 32, 3))["params"]


@pytest.mark.parametrize("rate", [0.4, 0.6])
@pytest.mark.parametrize("min_keep", [0.25, 0.5])
def test_selection_keeps_the_floor_and_still_meets_the_rate(rate, min_keep):
    arch = architecture("vgg7", 10, width=0.125)
    rng = np.random.default_rng(0)
    # conv1/conv2 channels score lowest: without the floor they go first
    scores = {k: rng.random(n) + (0.0 if k in ("conv1", "conv2") else 10.0)
              for k, n in zip(arch.decisions, arch.full)}
    free = select_channels(arch, scores, prune_macs=rate)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        keep = select_channels(arch, scores, prune_macs=rate, min_keep=min_keep)
    floors = min_widths(arch, min_keep)
    assert len(free["conv1"]) < floors[0]               # the floor binds here
    for name, floor in zip(arch.decisions, floors):
        assert len(keep[name]) >= floor, (name, len(keep[name]), floor)
        # inside a decision the lowest scores still leave first
        kept = set(keep[name].tolist())
        gone = [i for i in range(len(scores[name])) if i not in kept]
        if gone:
            assert max(scores[name][gone]) <= min(scores[name][list(kept)])
    _, red_m = achieved_reductions(arch, [len(keep[k]) for k in arch.decisions])
    assert rate <= red_m <= rate + 0.01


@pytest.mark.e2e
def test_hfp_training_never_goes_below_the_floor(method_setup):
    from symog_jax.methods import RunInfo
    from symog_jax.models import create_model, init_variables
    model = create_model("lenet5", 10, width=0.25)
    params = init_variables(model, 0, (28, 28, 1))["params"]
    steps = 40
    run = RunInfo(steps_per_epoch=steps, epochs=1)
    method = make_method("hfp", {"arch": "lenet5", "input_shape": "28x28x1", "prune_macs": 0.6,
                                 "gate_lr": 0.1, "min_keep": 0.5, "gate_fraction": 1.0}, run)
    state, step = method_setup(model, method, params, run)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (32, 28, 28, 1)).astype(np.uint8)
    y = rng.integers(0, 10, 32).astype(np.int32)
    arch = method.architecture(params)
    floors = min_widths(arch, 0.5)
    for _ in range(steps):
        state, _ = step(state, x, y)
        masks = method.masks(state.trainable)
        assert all(float(jnp.sum(masks[d])) >= f for d, f in zip(arch.decisions, floors))
    gates = state.method_vars["hfp_gates"]
    # the budget pushed: some gates are below the threshold, but the floor keeps them
    assert any(int(jnp.sum(gates[d] <= 0.5)) > 0 for d in arch.decisions)
    _, rel_m = method.relative_complexity(state.trainable)
    assert float(rel_m) <= 0.4 + 0.05
