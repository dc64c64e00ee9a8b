"""Bit allocation against exhaustive search, the relaxed optimum's KKT conditions, the additive
noise model on LeNet-5, and the bridge from an allocation to FormatPolicy."""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from symog_jax.numerics.formats import symmetric_format, unsigned_format
from symog_jax.numerics.optimal_step import DB_PER_BIT
from symog_jax.quantizers.bit_allocation import (
    FEASIBILITY_RTOL,
    Allocation,
    SQNRModel,
    allocate_bits,
    bits_policy,
    equal_bit_allocation,
    layer_costs,
    layer_macs,
    relaxed_allocation,
)
from symog_jax.quantizers.policy import FormatPolicy
from symog_jax.quantizers.sqnr import (
    activation_formats_for,
    measure_noise_model,
    measured_sqnr_db,
    predicted_output_sqnr_db,
    quantize_params,
    quantized_output_sqnr_db,
    weight_formats_for,
)


# -- the noise model formula ---------------------------------------------------------------

def test_predicted_output_sqnr():
    assert predicted_output_sqnr_db([30.0]) == pytest.approx(30.0)
    assert predicted_output_sqnr_db([30.0] * 4) == pytest.approx(30.0 - 10 * math.log10(4))
    s = [12.0, 25.0, 31.5]
    assert predicted_output_sqnr_db(s) == pytest.approx(
        -10 * math.log10(sum(10 ** (-v / 10) for v in s)), rel=1e-13)
    assert predicted_output_sqnr_db([20.0, math.inf]) == pytest.approx(20.0)
    assert predicted_output_sqnr_db([math.inf, math.inf]) == math.inf
    assert predicted_output_sqnr_db([4000.0, 4000.0]) == pytest.approx(4000 - 10 * math.log10(2))
    assert predicted_output_sqnr_db([-4000.0]) == pytest.approx(-4000.0)
    for bad in ([], [math.nan], [-math.inf]):
        with pytest.raises(ValueError, match="predicted_output_sqnr_db"):
            predicted_output_sqnr_db(bad)


# -- exhaustive search ---------------------------------------------------------------------

def brute_force(costs, table, lo, target=None, budget=None):
    """All assignments: (a) the least size meeting the target, (b) the best SQNR in budget."""
    n, k = table.shape
    combos = np.array(list(itertools.product(range(k), repeat=n)))
    cost = combos @ (np.asarray(costs, float)) + lo * float(np.sum(costs))
    noise = np.sum(10.0 ** (-table[np.arange(n)[None, :], combos] / 10.0), axis=1)
    sqnr = -10 * np.log10(noise)
    if target is not None:
        ok = noise <= 10 ** (-target / 10) * (1 + FEASIBILITY_RTOL)
        best_cost = cost[ok].min()
        return best_cost, sqnr[ok & (cost == best_cost)].max()
    ok = cost <= budget * (1 + FEASIBILITY_RTOL)
    return cost[ok][np.argmax(sqnr[ok])], sqnr[ok].max()


@st.composite
def problems(draw):
    n = draw(st.integers(1, 5))
    lo = draw(st.integers(1, 4))
    hi = draw(st.integers(lo, min(lo + 6, 8) if n >= 4 else lo + 7))
    costs = draw(st.lists(st.integers(1, 5000), min_size=n, max_size=n))
    kind = draw(st.sampled_from(["linear", "slopes", "table"]))
    if kind == "table":   # measured-like: any table, increasing or not
        rows = [draw(st.lists(st.floats(-10, 80, allow_nan=False), min_size=hi - lo + 1,
                              max_size=hi - lo + 1)) for _ in range(n)]
        model = SQNRModel.from_table(rows, lo)
    else:
        a = draw(st.lists(st.floats(-15, 15, allow_nan=False), min_size=n, max_size=n))
        s = DB_PER_BIT if kind == "linear" else draw(
            st.lists(st.floats(2.0, 9.0), min_size=n, max_size=n))
        model = SQNRModel.linear(a, s)
    frac = draw(st.floats(0.0, 1.0))
    return costs, model, lo, hi, frac


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_target_allocation_equals_exhaustive_search(problem):
    costs, model, lo, hi, frac = problem
    table = model.table(lo, hi)
    reachable = predicted_output_sqnr_db(table.max(axis=1))
    floor = predicted_output_sqnr_db(table.min(axis=1))
    target = floor + frac * (reachable - floor)
    best_cost, best_sqnr = brute_force(costs, table, lo, target=target)
    r = allocate_bits(costs, model, target_sqnr_db=target, min_bits=lo, max_bits=hi)
    assert r.method == "exact"
    assert r.cost == best_cost
    assert r.sqnr_db == pytest.approx(best_sqnr, abs=1e-9)
    assert all(lo <= b <= hi for b in r.bits)
    g = allocate_bits(costs, model, target_sqnr_db=target, min_bits=lo, max_bits=hi,
                      method="greedy")
    assert g.method == "greedy" and g.cost >= best_cost
    assert g.sqnr_db >= target - 1e-8
    try:
        e = equal_bit_allocation(costs, model, target_sqnr_db=target, min_bits=lo, max_bits=hi)
    except ValueError as err:            # possible only if some layer's SQNR falls with bits
        assert "one bit-width" in str(err) and model.table_db is not None
    else:
        assert e.cost >= r.cost and e.sqnr_db >= target - 1e-8


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_budget_allocation_equals_exhaustive_search(problem):
    costs, model, lo, hi, frac = problem
    table = model.table(lo, hi)
    budget = sum(costs) * (lo + frac * (hi - lo))
    best_cost, best_sqnr = brute_force(costs, table, lo, budget=budget)
    r = allocate_bits(costs, model, budget=budget, min_bits=lo, max_bits=hi)
    assert r.method == "exact"
    assert r.sqnr_db == pytest.approx(best_sqnr, abs=1e-9)
    assert r.cost <= budget * (1 + FEASIBILITY_RTOL)
    g = allocate_bits(costs, model, budget=budget, min_bits=lo, max_bits=hi, method="greedy")
    assert g.cost <= budget * (1 + FEASIBILITY_RTOL) and g.sqnr_db <= best_sqnr + 1e-9
    e = equal_bit_allocation(costs, model, budget=budget, min_bits=lo, max_bits=hi)
    assert e.sqnr_db <= r.sqnr_db + 1e-9 and e.cost <= budget * (1 + FEASIBILITY_RTOL)
    assert e.bits[0] == max(b for b in range(lo, hi + 1) if b * sum(costs) <= budget * (1 + 1e-9))


@pytest.mark.parametrize("goal", ["target", "budget"])
def test_five_layers_bits_2_to_8_equal_exhaustive_search(goal):
    """The brief's size: 5 layers, 7 bit-widths each (16807 assignments), 25 random problems."""
    rng = np.random.default_rng(7 if goal == "target" else 8)
    for _ in range(25):
        costs = rng.integers(10, 1_000_000, 5).tolist()
        model = SQNRModel.linear(rng.uniform(-8, 8, 5), rng.uniform(4.0, 7.0, 5))
        table = model.table(2, 8)
        if goal == "target":
            target = float(rng.uniform(predicted_output_sqnr_db(table[:, 0]),
                                       predicted_output_sqnr_db(table[:, -1])))
            best_cost, best_sqnr = brute_force(costs, table, 2, target=target)
            r = allocate_bits(costs, model, target_sqnr_db=target)
            assert r.cost == best_cost and r.sqnr_db == pytest.approx(best_sqnr, abs=1e-9)
        else:
            budget = float(rng.uniform(2, 8)) * sum(costs)
            best_cost, best_sqnr = brute_force(costs, table, 2, budget=budget)
            r = allocate_bits(costs, model, budget=budget)
            assert r.sqnr_db == pytest.approx(best_sqnr, abs=1e-9) and r.cost <= budget


def test_exact_search_falls_back_to_greedy_when_too_large(monkeypatch):
    import symog_jax.quantizers.bit_allocation as ba

    monkeypatch.setattr(ba, "MAX_PARETO_STATES", 2)
    costs, model = [5, 7, 11, 13], SQNRModel.linear([0.0, 1.0, 2.0, 3.0])
    with pytest.warns(RuntimeWarning, match="Pareto states"):
        r = allocate_bits(costs, model, target_sqnr_db=30.0)
    assert r.method == "greedy" and r.sqnr_db >= 30.0 - 1e-8


def test_greedy_quality_is_reported():
    """How often the paper's greedy route (relax, round, repair, improve) is already optimal."""
    rng = np.random.default_rng(0)
    hits, gaps = 0, []
    for _ in range(200):
        n = int(rng.integers(3, 6))
        costs = rng.integers(100, 100_000, n).tolist()
        model = SQNRModel.linear(rng.uniform(-5, 5, n))
        target = float(rng.uniform(15, 40))
        ex = allocate_bits(costs, model, target_sqnr_db=target)
        gr = allocate_bits(costs, model, target_sqnr_db=target, method="greedy")
        hits += gr.cost == ex.cost
        gaps.append(gr.cost / ex.cost - 1)
    print(f"greedy optimal in {hits}/200 target problems, worst size gap {max(gaps):.2%}")
    assert hits >= 150 and max(gaps) < 0.1


# -- the relaxed optimum -------------------------------------------------------------------

@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 10**6), min_size=1, max_size=8),
       st.floats(-10, 10), st.floats(0.0, 1.0), st.booleans())
def test_relaxed_kkt(costs, a0, frac, by_target):
    n = len(costs)
    rng = np.random.default_rng(len(costs))
    a = a0 + rng.uniform(-5, 5, n)
    s = rng.uniform(4.0, 7.0, n)
    model = SQNRModel.linear(a, s)
    lo, hi = 2, 8
    c = np.asarray(costs, float)
    if by_target:
        top = predicted_output_sqnr_db(a + s * hi)
        bottom = predicted_output_sqnr_db(a + s * lo)
        target = bottom + frac * (top - bottom)
        b = relaxed_allocation(costs, model, target_sqnr_db=target)
        got = predicted_output_sqnr_db(a + s * b)
        assert got == pytest.approx(target, abs=1e-6) or got >= target
    else:
        budget = float(c.sum()) * (lo + frac * (hi - lo))
        b = relaxed_allocation(costs, model, budget=budget)
        assert float(c @ b) == pytest.approx(budget, rel=1e-9)
    assert np.all((b >= lo - 1e-12) & (b <= hi + 1e-12))
    # KKT: n_i s_i / c_i is one value theta on free layers, >= theta at max, <= theta at min
    ratio = 10 ** (-(a + s * b) / 10) * s / c
    free = (b > lo + 1e-9) & (b < hi - 1e-9)
    if free.any():
        theta = ratio[free]
        assert np.allclose(theta, theta[0], rtol=1e-6)
        assert np.all(ratio[b >= hi - 1e-9] >= theta[0] * (1 - 1e-6))
        assert np.all(ratio[b <= lo + 1e-9] <= theta[0] * (1 + 1e-6))


def test_relaxed_closed_form_and_lower_bound():
    costs = [3000, 12000, 48000, 500]
    model = SQNRModel.linear([1.0, -2.0, 0.5, 3.0])
    b = relaxed_allocation(costs, model, target_sqnr_db=30.0, min_bits=1, max_bits=16)
    # SQNR_i = T + 10 log10(C / c_i) for equal slopes
    layer = np.array([1.0, -2.0, 0.5, 3.0]) + DB_PER_BIT * b
    assert layer == pytest.approx(30.0 + 10 * np.log10(sum(costs) / np.array(costs)), abs=1e-9)
    assert b[0] - b[2] == pytest.approx((10 * math.log10(48000 / 3000) + 0.5 - 1.0) / DB_PER_BIT)
    exact = allocate_bits(costs, model, target_sqnr_db=30.0, min_bits=1, max_bits=16)
    assert float(np.dot(costs, b)) <= exact.cost                    # relaxation is a bound
    assert exact.relaxed_bits == pytest.approx(tuple(b))
    rb = relaxed_allocation(costs, model, budget=exact.cost, min_bits=1, max_bits=16)
    assert predicted_output_sqnr_db(np.array([1.0, -2.0, 0.5, 3.0]) + DB_PER_BIT * rb) >= \
        allocate_bits(costs, model, budget=exact.cost, min_bits=1, max_bits=16).sqnr_db


def test_many_layers_stay_exact_and_fast():
    rng = np.random.default_rng(3)
    costs = rng.integers(1_000, 2_000_000, 40).tolist()
    model = SQNRModel.linear(rng.uniform(-3, 3, 40))
    e = equal_bit_allocation(costs, model, target_sqnr_db=25.0)
    r = allocate_bits(costs, model, target_sqnr_db=25.0)
    assert r.method == "exact" and r.sqnr_db >= 25.0 - 1e-8
    print(f"40 layers: optimized {r.cost / e.cost:.1%} of the equal-bit size ({e.bits[0]} bits)")
    assert r.cost < e.cost


# -- bad input -----------------------------------------------------------------------------

LIN2 = SQNRModel.linear([0.0, 0.0])


@pytest.mark.parametrize("kwargs, match", [
    (dict(costs=[], model=SQNRModel.linear([0.0]), target_sqnr_db=10), "costs is empty"),
    (dict(costs=[1, -2], target_sqnr_db=10), r"costs\[1\] must be a positive"),
    (dict(costs=[1, math.nan], target_sqnr_db=10), r"costs\[1\]"),
    (dict(costs=[1, 2, 3], target_sqnr_db=10), "the SQNR model has 2 layers but costs has 3"),
    (dict(costs=[1, 2], target_sqnr_db=90), "cannot be met: every layer at max_bits=8"),
    (dict(costs=[1, 2], budget=5), "below the smallest size 6"),
    (dict(costs=[1, 2], budget=-1), "budget must be a positive"),
    (dict(costs=[1, 2]), "exactly one of"),
    (dict(costs=[1, 2], target_sqnr_db=10, budget=100), "exactly one of"),
    (dict(costs=[1, 2], target_sqnr_db=math.inf), "finite"),
    (dict(costs=[1, 2], target_sqnr_db=10, min_bits=6, max_bits=4), "min_bits <= max_bits"),
    (dict(costs=[1, 2], target_sqnr_db=10, min_bits=0), "1 <= min_bits"),
    (dict(costs=[1, 2], target_sqnr_db=10, max_bits=25), "max_bits <= 24"),
    (dict(costs=[1, 2], target_sqnr_db=10, max_bits=8.0), "max_bits must be an integer"),
    (dict(costs=[1, 2], target_sqnr_db=10, names=["a"]), "names must be 2 strings"),
    (dict(costs=[1, 2], target_sqnr_db=10, names=["a", "a"]), "unique"),
    (dict(costs=[1, 2], target_sqnr_db=10, method="ilp"), "method"),
    (dict(costs=[1, 2], model=SQNRModel.from_table([[1, 2], [3, 4]], 2), target_sqnr_db=1),
     "covers bits 2..3"),
])
def test_bad_input_is_one_line(kwargs, match):
    kwargs = dict(kwargs)
    model, costs = kwargs.pop("model", LIN2), kwargs.pop("costs")
    for fn in (allocate_bits, equal_bit_allocation, relaxed_allocation):
        if (fn is not allocate_bits and "method" in kwargs) or \
                (fn is relaxed_allocation and "names" in kwargs):
            continue
        with pytest.raises(ValueError, match=match) as info:
            fn(costs, model, **kwargs)
        assert "\n" not in str(info.value), fn


@pytest.mark.parametrize("build, match", [
    (lambda: SQNRModel.linear([]), "no layers"),
    (lambda: SQNRModel.linear([0.0], -1.0), "positive"),
    (lambda: SQNRModel.linear([0.0, 1.0], [6.0]), "1 slopes for 2 layers"),
    (lambda: SQNRModel.from_table([1.0, 2.0], 2), "table"),
    (lambda: SQNRModel.from_table([[1.0, math.nan]], 2), "NaN"),
    (lambda: relaxed_allocation([1, 1], SQNRModel.from_table([[5, 4, 3], [1, 2, 3]], 2),
                                budget=5, min_bits=2, max_bits=4), "does not grow"),
])
def test_bad_models(build, match):
    with pytest.raises(ValueError, match=match):
        build()


# -- LeNet-5: costs, policy, measured tables, the noise model ------------------------------

@functools.lru_cache(maxsize=None)
def lenet():
    from symog_jax.data import load_bundled_mnist5k, normalize
    from symog_jax.models import LeNet5, init_variables

    model = LeNet5()
    variables = init_variables(model, jax.random.key(0), (1, 28, 28, 1))
    images = load_bundled_mnist5k(test_size=1000, seed=0).test_images[:128]
    x = normalize(images, (0.1307,), (0.3081,))
    return model, variables["params"], x


def test_layer_costs_and_bits_policy():
    _, params, _ = lenet()
    costs = layer_costs(params)
    assert costs == {"conv1/kernel": 800, "conv2/kernel": 51200, "fc1/kernel": 524288,
                     "fc2/kernel": 5120}
    r = allocate_bits(list(costs.values()), SQNRModel.linear([0.0] * 4), names=list(costs),
                      budget=6 * sum(costs.values()))
    assert isinstance(r, Allocation) and r.cost <= 6 * sum(costs.values())
    formats = FormatPolicy(bits_policy(r, params)).init(params)
    assert {k: formats[k.split("/")[0]]["kernel"].bits for k in costs} == r.as_dict()
    # a layer name covers its leaves; the longest key wins; default for the rest
    policy = bits_policy({"conv1": 3, "conv1/kernel": 5, "fc1": 4}, params, default=8)
    assert [policy(p, None) for p in ("conv1/kernel", "conv1/bias", "fc1/kernel", "fc2/kernel")] \
        == [5, 3, 4, 8]
    strict = bits_policy({"conv1": 3}, params)
    with pytest.raises(ValueError, match="no bit-width for leaf 'conv2/kernel'"):
        FormatPolicy(strict).init(params)
    for bad, match in [({"conv9": 3}, "'conv9' matches no parameter leaf"),
                       ({"conv1": 0}, "integer >= 1"), ({"conv1": 2.5}, "integer >= 1"),
                       ({}, "non-empty"), ({"": 4}, "non-empty")]:
        with pytest.raises(ValueError, match=match):
            bits_policy(bad, params)
    with pytest.raises(ValueError, match="no layer names"):
        allocate_bits([1, 2], LIN2, budget=10).as_dict()


def test_macs_as_costs():
    model, params, x = lenet()
    macs = layer_macs(lambda: model.apply({"params": params}, x[:1], train=False))
    # conv: kernel size times output positions (24x24, then 8x8); dense: kernel size
    assert macs == {"conv1/kernel": 800 * 576, "conv2/kernel": 51200 * 64,
                    "fc1/kernel": 524288, "fc2/kernel": 5120}
    r = allocate_bits(list(macs.values()), SQNRModel.linear([0.0] * 4), names=list(macs),
                      target_sqnr_db=30.0)
    assert r.as_dict()["conv2/kernel"] <= r.as_dict()["fc2/kernel"]   # the costliest: fewest


def test_allocation_from_measured_sqnr_tables():
    """The pipeline's future core: measured per-layer SQNR tables -> allocation -> formats."""
    _, params, _ = lenet()
    costs = layer_costs(params)
    leaves = {"conv1/kernel": params["conv1"]["kernel"], "conv2/kernel": params["conv2"]["kernel"],
              "fc1/kernel": params["fc1"]["kernel"], "fc2/kernel": params["fc2"]["kernel"]}
    table = np.stack([measured_sqnr_db(leaves[k], range(2, 9)) for k in costs])
    # about 6 dB per bit on average; a step can be flat where two bit-widths round to the same
    # power-of-two step and the extra bit only adds unused range (conv2 at 6 -> 7 bits)
    assert np.all(np.diff(table, axis=1) > -1e-6)
    assert np.all(np.abs((table[:, -1] - table[:, 0]) / 6 - DB_PER_BIT) < 1.0)
    model = SQNRModel.from_table(table, 2)
    equal = equal_bit_allocation(list(costs.values()), model, target_sqnr_db=25.0)
    best = allocate_bits(list(costs.values()), model, target_sqnr_db=25.0, names=list(costs))
    print(f"LeNet-5 weights at 25 dB: equal {equal.bits[0]} bits = {equal.cost / 8e3:.1f} kB, "
          f"allocated {best.as_dict()} = {best.cost / 8e3:.1f} kB "
          f"({1 - best.cost / equal.cost:.0%} smaller)")
    assert best.cost <= equal.cost and best.sqnr_db >= 25.0


@pytest.mark.e2e
def test_noise_model_on_lenet():
    """Quantize each tensor alone and all together: the additive model predicts the output SQNR
    (float vs quantized logits on 128 MNIST digits, untrained LeNet-5, Gaussian-model formats)."""
    model, params, x = lenet()

    def apply(p, images):
        return model.apply({"params": p}, images, train=False)

    from symog_jax.quantizers.activations import record_layer_inputs
    _, records = record_layer_inputs(lambda: apply(params, x))
    for bits in (4, 8):
        r = measure_noise_model(apply, params, x,
                                weight_formats=weight_formats_for(params, bits),
                                activation_formats=activation_formats_for(records, bits))
        print(f"\n{bits} bits\n{r.table()}")
        assert len(r.tensors) == 7
        assert abs(r.prediction_error_db) < 3.0        # measured: 0.2 .. 1.3 dB
        assert abs(r.additive_sqnr_db - r.output_sqnr_db) < 1.5    # measured: < 0.2 dB
        for t in r.tensors:                            # each noise reaches the output ~unchanged
            assert abs(t.output_sqnr_db - t.tensor_sqnr_db) < 5.0, t   # measured: < 3.2 dB


@pytest.mark.e2e
def test_sqnr_helpers_bad_input():
    model, params, x = lenet()

    def apply(p, images):
        return model.apply({"params": p}, images, train=False)

    with pytest.raises(ValueError, match="'conv1/w', which is not a parameter leaf"):
        quantize_params(params, {"conv1/w": symmetric_format(4, 3)})
    with pytest.raises(ValueError, match="no weight or activation formats"):
        measure_noise_model(apply, params, x)
    with pytest.raises(ValueError, match="batch is empty"):
        measure_noise_model(apply, params, x[:0], weight_formats={
            "fc2/kernel": symmetric_format(4, 3)})
    with pytest.raises(ValueError, match="'fc9', which the model does not call"):
        measure_noise_model(apply, params, x[:2],
                            activation_formats={"fc9": unsigned_format(4, 3)})
    with pytest.raises(ValueError, match="empty calibration set"):
        activation_formats_for([], 4)
    with pytest.raises(ValueError, match="layer 'fc1'"):
        activation_formats_for([("conv1", x), ("fc1", jnp.zeros((2, 3)))], 4)
    with pytest.raises(ValueError, match="no bit-width for 'conv2/kernel'"):
        weight_formats_for(params, {"conv1/kernel": 4})
    assert weight_formats_for(params, lambda p, leaf: 3 if "fc" in p else 5)["fc1/kernel"].bits == 3
    formats = weight_formats_for(params, 6)
    together = quantized_output_sqnr_db(apply, params, x[:16], weight_formats=formats)
    assert 20.0 < together < 45.0
    assert quantized_output_sqnr_db(apply, params, x[:4]) == math.inf
    with pytest.raises(ValueError, match="batch is empty"):
        quantized_output_sqnr_db(apply, params, x[:0], weight_formats=formats)
