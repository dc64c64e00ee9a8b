"""The transforms where users put them (issue 14, points 1-3).

* Point 1: every transform x {Flax linen params, ``nnx.Optimizer``, plain dict} x {eager, jit},
  20 steps, then ``hard_quantize`` gives codes in range.
* Point 2: ``optax.inject_hyperparams``, ``optax.MultiSteps``, ``optax.multi_transform`` /
  ``optax.partition`` and ``optax.apply_if_finite`` around them.
* Point 3: defaults that end on the levels; the exact form with merged modes is refused;
  ``strength`` and ``pull`` each mean one thing; schedules as fractions of a run.

Each failure reported in the issue has a ``test_regression_*`` test.
"""

from __future__ import annotations

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import symog_jax as sj
from symog_jax.transforms import annealing_schedule_for_run, default_pull, pull_to_levels

STEPS = 20
IN, HIDDEN, OUT = 6, 8, 3


# --------------------------------------------------------------------------------------------
# Three ways to hold the same two-layer MLP
# --------------------------------------------------------------------------------------------

class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(OUT, name="l2")(nn.relu(nn.Dense(HIDDEN, name="l1")(x)))


class NnxMLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(IN, HIDDEN, rngs=rngs)
        self.l2 = nnx.Linear(HIDDEN, OUT, rngs=rngs)

    def __call__(self, x):
        return self.l2(nnx.relu(self.l1(x)))


def dict_mlp(params, x):
    h = jax.nn.relu(x @ params["l1"]["w"] + params["l1"]["b"])
    return h @ params["l2"]["w"] + params["l2"]["b"]


def data():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((32, IN)), jnp.float32)
    y = jnp.asarray(rng.standard_normal((32, OUT)), jnp.float32)
    return x, y


def dict_params():
    rng = np.random.default_rng(1)
    return {"l1": {"w": jnp.asarray(rng.standard_normal((IN, HIDDEN)) * 0.5, jnp.float32),
                   "b": jnp.zeros(HIDDEN)},
            "l2": {"w": jnp.asarray(rng.standard_normal((HIDDEN, OUT)) * 0.5, jnp.float32),
                   "b": jnp.zeros(OUT)}}


# --------------------------------------------------------------------------------------------
# The transforms of point 1 (each built fresh; ``ste`` marks forward-pass quantization)
# --------------------------------------------------------------------------------------------

def transforms():
    return {
        # SYMOG around an optimizer (default pull, sized to the 20-step run).
        "symog(sgd)": (sj.symog(2, optax.sgd(0.05), total_steps=STEPS), False, True),
        # SYMOG as a loss term (coupled strength) around an optimizer.
        "symog(adam, strength)": (sj.symog(2, optax.adam(1e-2), strength=1e-2), False, False),
        # Decoupled: after the user's optimizer.
        "chain(adam, symog)": (optax.chain(optax.adam(1e-2), sj.symog(2, total_steps=STEPS)),
                               False, True),
        "chain(prior, sgd, clip)": (optax.chain(sj.add_mixture_prior_gradient(2, 1e-2),
                                                optax.sgd(0.1),
                                                sj.clip_to_representable_range(2)), False, False),
        "chain(sgd, pull, clip)": (optax.chain(optax.sgd(0.1), pull_to_levels(2, total_steps=STEPS),
                                               sj.clip_to_representable_range(2)), False, True),
        "share_formats(reestimate)": (sj.share_formats(
            sj.FormatPolicy(2, reestimate_every=5, reestimate_until=10),
            optax.chain(sj.add_mixture_prior_gradient(None, 1e-2), optax.sgd(0.1),
                        pull_to_levels(None, total_steps=STEPS),
                        sj.clip_to_representable_range(None))), False, True),
        # Straight-through: formats tracked (re-estimated), quantized in the forward pass.
        "track_formats+fake_quantize": (optax.chain(optax.adam(1e-2),
                                                    sj.track_formats(2, reestimate_every=5)),
                                        True, False),
    }


TRANSFORMS = list(transforms())


def train_functional(tx, params, forward, ste, use_jit):
    """The linen / dict path: ``tx.update(grads, state, params)`` by hand."""
    x, y = data()

    def loss(p, state):
        if ste:
            p = sj.fake_quantize(p, sj.find_formats(state))
        return jnp.mean((forward(p, x) - y) ** 2)

    def step(p, state):
        value, grads = jax.value_and_grad(loss)(p, state)
        updates, state = tx.update(grads, state, p)
        return optax.apply_updates(p, updates), state, value

    step = jax.jit(step) if use_jit else step
    state = tx.init(params)
    losses = []
    for _ in range(STEPS):
        params, state, value = step(params, state)
        losses.append(float(value))
    return params, state, losses


def train_nnx(tx, ste, use_jit):
    """The NNX path: ``nnx.Optimizer(model, tx, wrt=nnx.Param)``, ``opt.update(model, grads)``."""
    x, y = data()
    model = NnxMLP(nnx.Rngs(0))
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

    def loss_fn(model, formats):
        if ste:   # the NNX spelling of the straight-through forward pass
            graphdef, params, rest = nnx.split(model, nnx.Param, ...)
            model = nnx.merge(graphdef, sj.fake_quantize(params, formats), rest)
        return jnp.mean((model(x) - y) ** 2)

    def step(model, opt):
        formats = sj.find_formats(opt.opt_state) if ste else None
        value, grads = nnx.value_and_grad(loss_fn)(model, formats)
        opt.update(model, grads)
        return value

    step = nnx.jit(step) if use_jit else step
    losses = [float(step(model, opt)) for _ in range(STEPS)]
    return model, opt, losses


@pytest.mark.parametrize("path", ["linen", "nnx.Optimizer", "dict"])
@pytest.mark.parametrize("name", TRANSFORMS)
def test_transform_on_every_path(name, path, use_jit):
    tx, ste, ends_on_levels = transforms()[name]
    if path == "nnx.Optimizer":
        model, opt, losses = train_nnx(tx, ste, use_jit)
        params, state = nnx.state(model, nnx.Param), opt.opt_state
        kernels = ["l1/kernel", "l2/kernel"]
    elif path == "linen":
        init = LinenMLP().init(jax.random.PRNGKey(0), data()[0])["params"]
        params, state, losses = train_functional(
            tx, init, lambda p, x: LinenMLP().apply({"params": p}, x), ste, use_jit)
        kernels = ["l1/kernel", "l2/kernel"]
    else:
        params, state, losses = train_functional(tx, dict_params(), dict_mlp, ste, use_jit)
        kernels = ["l1/w", "l2/w"]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    result = sj.hard_quantize(params, state)
    assert [r.path for r in result.report] == kernels
    codes = [c for c in jax.tree_util.tree_leaves(result.codes)]
    assert len(codes) == 2
    for c in codes:
        assert c.dtype == jnp.int32 and int(c.min()) >= -1 and int(c.max()) <= 1
        assert len(np.unique(np.asarray(c))) > 1           # not all pulled to one level
    if ends_on_levels:    # the pull reached 1 before step 20: every weight is on its level
        assert all(r.near_level_fraction == 1.0 and r.max_abs_error_in_steps < 1e-5
                   for r in result.report), result.summary()


# --------------------------------------------------------------------------------------------
# Regressions: the failures listed in the issue
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["symog", "chain"])
def test_regression_nnx_optimizer_second_step(which):
    # Used to raise "pytree structure error: different types at key path ['l1']['bias']" on
    # the second update: nnx.Optimizer stored each FixedPointFormat inside an OptVariable (the
    # formats copied the nnx.Param wrappers of the parameters) and wrote it back as a plain
    # State({0: frac_bits}), losing the format.
    tx = (sj.symog(2, optax.sgd(0.1), total_steps=100) if which == "symog" else
          optax.chain(sj.add_mixture_prior_gradient(2, 1e-3), optax.sgd(0.1),
                      sj.clip_to_representable_range(2)))
    model = NnxMLP(nnx.Rngs(0))
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x, y = data()

    def loss(model):
        return jnp.mean((model(x) - y) ** 2)

    for _ in range(3):
        opt.update(model, nnx.grad(loss)(model))
    fmt = sj.find_formats(opt.opt_state)["l1"]["kernel"]
    assert isinstance(fmt, nnx.Param) and isinstance(fmt.get_value(), sj.FixedPointFormat)
    assert sj.find_formats(opt.opt_state)["l1"]["bias"].get_value() is None


def test_nnx_optimizer_state_keeps_formats_and_matches_pure_route():
    # The same transform, the same gradients: nnx.Optimizer and the pure nnx.state route give
    # the same parameters and formats.
    x, y = data()
    tx = sj.symog(2, optax.sgd(0.05), reestimate_every=3, total_steps=100)
    model = NnxMLP(nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    state = tx.init(params)

    def loss(p):
        return jnp.mean((nnx.merge(graphdef, p, rest)(x) - y) ** 2)

    for _ in range(7):
        grads = jax.grad(loss)(params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        opt.update(model, nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model))
    for a, b in zip(jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)),
                    jax.tree_util.tree_leaves(params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    ours = sj.hard_quantize(nnx.state(model, nnx.Param), opt.opt_state)
    theirs = sj.hard_quantize(params, state)
    assert [r.format for r in ours.report] == [r.format for r in theirs.report]


def test_regression_inject_hyperparams_over_symog():
    # Used to raise "FormatPolicy.__init__() got an unexpected keyword argument
    # 'policy_kwargs'" (inject_hyperparams binds the factory's signature).
    tx = optax.inject_hyperparams(sj.symog, static_args=("bits",))(bits=2, total_steps=100)
    params = dict_params()
    state = tx.init(params)
    updates, state = tx.update(jax.tree_util.tree_map(jnp.zeros_like, params), state, params)
    assert sj.hard_quantize(optax.apply_updates(params, updates), state).report


def test_regression_exact_form_with_merged_modes_is_refused():
    # Used to pull every weight to zero silently (LeNet5: 88.7 % error, "100 % near a level").
    with pytest.raises(ValueError, match=r"form='exact' with sigma=1 steps.*sigma < 0.5"):
        sj.symog(2, optax.adam(1e-3), form="exact")
    with pytest.raises(ValueError, match="modes .* merge"):
        sj.add_mixture_prior_gradient(2, 1e-2, form="exact", sigma=0.5)
    with pytest.raises(ValueError, match="modes .* merge"):
        pull_to_levels(2, form="exact")
    sj.symog(2, optax.adam(1e-3), form="exact", sigma=0.25, total_steps=100)   # accepted
    # An absolute sigma can only be compared with the step when the formats are known.
    params = {"w": jnp.array([[0.2, 0.9], [-0.6, -1.1]])}            # step 1
    tx = sj.add_mixture_prior_gradient(2, 1e-2, form="exact", sigma=0.7, sigma_in_steps=False)
    with pytest.warns(UserWarning, match="modes merge"):
        tx.update(params, tx.init(params), params)


# --------------------------------------------------------------------------------------------
# Point 2: optax's wrappers
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_inject_hyperparams_strength_sigma_and_learning_rate(jit):
    params = {"dense": {"kernel": jnp.array([[0.3, -0.1], [0.05, 0.4], [-0.45, 0.2]]),
                        "bias": jnp.zeros(2)}}
    fmt = sj.init_formats(params, 2)["dense"]["kernel"]
    grads = jax.tree_util.tree_map(jnp.zeros_like, params)
    tx = optax.inject_hyperparams(sj.symog, static_args=("bits",))(
        bits=2, optimizer=optax.inject_hyperparams(optax.sgd)(learning_rate=0.1),
        strength=0.0, sigma=1.0, clip=False)
    state = tx.init(params)
    assert {"strength", "sigma"} <= set(state.hyperparams)
    inner_sgd = state.inner_state.inner[1]
    assert float(inner_sgd.hyperparams["learning_rate"]) == pytest.approx(0.1)
    update = jax.jit(tx.update) if jit else tx.update
    u0, state = update(grads, state, params)
    np.testing.assert_array_equal(u0["dense"]["kernel"], 0.0)          # strength 0: no pull
    # Change strength, sigma and the learning rate in the state: the next update uses them.
    state.hyperparams["strength"] = jnp.asarray(0.5)
    state.hyperparams["sigma"] = jnp.asarray(2.0)
    state.inner_state.inner[1].hyperparams["learning_rate"] = jnp.asarray(0.2)
    u1, state = update(grads, state, params)
    w = np.asarray(params["dense"]["kernel"], np.float64)
    step = float(fmt.step)
    level = np.clip(np.round(w / step), -1, 1) * step           # nearest 2-bit level
    # u = -lr * strength * (w - level) / (sigma * step)**2
    np.testing.assert_allclose(u1["dense"]["kernel"],
                               -0.2 * 0.5 * (w - level) / (2.0 * step) ** 2, rtol=1e-5)
    assert float(state.hyperparams["strength"]) == 0.5


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_inject_hyperparams_over_each_block(jit):
    params = {"w": jnp.array([[0.2, 0.9], [-0.6, -0.95]])}       # step 1: levels -1, 0, 1
    zeros = {"w": jnp.zeros((2, 2))}
    cases = {
        "add_mixture_prior_gradient": (optax.inject_hyperparams(sj.add_mixture_prior_gradient)(
            bits=2, strength=0.5, sigma=1.0), ["strength", "sigma"]),
        "pull_to_levels": (optax.inject_hyperparams(pull_to_levels)(bits=2, pull=0.5),
                           ["pull"]),
        "clip_to_representable_range": (
            optax.inject_hyperparams(sj.clip_to_representable_range)(bits=2), []),
        "track_formats": (optax.inject_hyperparams(sj.track_formats)(bits=2), []),
        "symog(pull)": (optax.inject_hyperparams(sj.symog, static_args=("bits",))(
            bits=2, optimizer=optax.sgd(0.0), pull=0.5), ["pull"]),
    }
    for name, (tx, names) in cases.items():
        state = tx.init(params)
        assert set(names) <= set(state.hyperparams), name
        update = jax.jit(tx.update) if jit else tx.update
        u, state = update(zeros, state, params)
        if names:                         # halve the injected strength / pull: the effect halves
            state.hyperparams[names[0]] = state.hyperparams[names[0]] * 0.5
        u2, state = update(zeros, state, params)
        if names:
            np.testing.assert_allclose(np.asarray(u2["w"]), 0.5 * np.asarray(u["w"]),
                                       rtol=1e-5, atol=1e-7, err_msg=name)
        assert sj.find_formats(state)["w"].bits == 2, name


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_inject_hyperparams_with_total_steps_keeps_the_default_schedule(jit):
    # total_steps becomes a (traced) hyperparameter: the float half, the re-estimation at its
    # end and the pull must be the same as without inject_hyperparams.
    params = dict_params()
    wide = jax.tree_util.tree_map(lambda p: p * 8.0, params)   # formats at init: 3 bits coarser
    grads = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 0.01), params)
    plain = sj.symog(2, optax.sgd(0.1), total_steps=6)
    injected = optax.inject_hyperparams(sj.symog, static_args=("bits",))(
        bits=2, optimizer=optax.sgd(0.1), total_steps=6)
    s_plain, s_inj = plain.init(wide), injected.init(wide)
    assert "total_steps" in s_inj.hyperparams
    update = jax.jit(injected.update) if jit else injected.update
    p_plain = p_inj = params
    for _ in range(6):
        u, s_plain = plain.update(grads, s_plain, p_plain)
        p_plain = optax.apply_updates(p_plain, u)
        u, s_inj = update(grads, s_inj, p_inj)
        p_inj = optax.apply_updates(p_inj, u)
    assert sj.find_formats(s_inj) == sj.find_formats(s_plain)
    for a, b in zip(jax.tree_util.tree_leaves(p_inj), jax.tree_util.tree_leaves(p_plain)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert all(r.near_level_fraction == 1.0 for r in sj.hard_quantize(p_inj, s_inj).report)


def test_inject_hyperparams_unknown_name_is_one_line():
    with pytest.raises(TypeError, match="unexpected keyword argument 'stregth'"):
        optax.inject_hyperparams(sj.symog)(bits=2, stregth=1e-2)


@pytest.mark.e2e
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_multisteps_accumulates_then_applies_symog(jit):
    k = 4
    params = dict_params()
    rng = np.random.default_rng(3)
    micro = [jax.tree_util.tree_map(
        lambda p: jnp.asarray(rng.standard_normal(p.shape), jnp.float32) * 0.1, params)
        for _ in range(2 * k)]
    make = lambda: sj.symog(2, optax.sgd(0.1), pull=0.3)   # noqa: E731
    acc = optax.MultiSteps(make(), every_k_schedule=k)
    plain = make()
    s_acc, s_plain = acc.init(params), plain.init(params)
    update = jax.jit(acc.update) if jit else acc.update
    p_acc, p_plain = params, params
    for i, g in enumerate(micro):
        u, s_acc = update(g, s_acc, p_acc)
        p_acc = optax.apply_updates(p_acc, u)
        if (i + 1) % k == 0:             # one real step with the mean of the k gradients
            mean = jax.tree_util.tree_map(lambda *gs: sum(gs) / k, *micro[i + 1 - k:i + 1])
            u, s_plain = plain.update(mean, s_plain, p_plain)
            p_plain = optax.apply_updates(p_plain, u)
        else:
            assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree_util.tree_leaves(u))
    for a, b in zip(jax.tree_util.tree_leaves(p_acc), jax.tree_util.tree_leaves(p_plain)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert int(s_acc.inner_opt_state.count) == 2              # symog stepped twice
    assert sj.hard_quantize(p_acc, s_acc).report


@pytest.mark.parametrize("wrapper", ["multi_transform", "partition"])
def test_partition_gives_layers_different_bits(wrapper):
    params = dict_params()
    labels = {"l1": {"w": "two", "b": "float"}, "l2": {"w": "four", "b": "float"}}
    groups = {"two": sj.symog(2, optax.sgd(0.05), total_steps=STEPS),
              "four": sj.symog(4, optax.sgd(0.05), total_steps=STEPS),
              "float": optax.adam(1e-2)}
    tx = getattr(optax, wrapper)(groups, labels)
    p, state, losses = train_functional(tx, params, dict_mlp, False, True)
    result = sj.hard_quantize(p, state)
    assert [(r.path, r.format.bits) for r in result.report] == [("l1/w", 2), ("l2/w", 4)]
    assert int(jnp.abs(result.codes["l1"]["w"]).max()) <= 1
    assert int(jnp.abs(result.codes["l2"]["w"]).max()) <= 7
    assert int(jnp.abs(result.codes["l2"]["w"]).max()) > 1          # uses the 4-bit range
    assert result.codes["l1"]["b"] is None and result.codes["l2"]["b"] is None
    assert all(r.near_level_fraction == 1.0 for r in result.report)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_apply_if_finite_skips_a_nan_step(jit):
    params = dict_params()
    tx = optax.apply_if_finite(sj.symog(2, optax.sgd(0.05), pull=0.2), max_consecutive_errors=3)
    state = tx.init(params)
    update = jax.jit(tx.update) if jit else tx.update
    good = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 0.01), params)
    bad = jax.tree_util.tree_map(lambda p: jnp.full_like(p, jnp.nan), params)
    u, state = update(good, state, params)
    params = optax.apply_updates(params, u)
    before = params
    u, state = update(bad, state, params)
    params = optax.apply_updates(params, u)
    assert int(state.notfinite_count) == 1 and not bool(state.last_finite)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(before)):
        np.testing.assert_array_equal(a, b)                   # the NaN step was skipped
    u, state = update(good, state, params)
    params = optax.apply_updates(params, u)
    assert int(state.notfinite_count) == 0
    assert int(state.inner_state.count) == 2                 # symog counted the good steps only
    assert sj.hard_quantize(params, state).report


# --------------------------------------------------------------------------------------------
# Point 3: defaults that end on the levels, one meaning per name, fractions of the run
# --------------------------------------------------------------------------------------------

N_DATA, DIM, TOY_STEPS = 256, 8, 2000


@pytest.fixture(scope="module")
def toy():
    """Linear regression whose float optimum is off the 2-bit grid."""
    rng = np.random.default_rng(1234)
    x = rng.standard_normal((N_DATA, DIM)).astype(np.float32)
    w_true = rng.uniform(-1.0, 1.0, (DIM, 1)).astype(np.float32)
    y = x @ w_true + np.float32(0.3)
    params = {"dense": {"kernel": jnp.asarray(w_true), "bias": jnp.asarray([0.3], jnp.float32)}}

    def loss(p):
        return 0.5 * jnp.mean((x @ p["dense"]["kernel"] + p["dense"]["bias"] - y) ** 2)

    step = float(sj.init_formats(params, 2)["dense"]["kernel"].step)
    best = min(0.5 * np.var(y[:, 0] - x.astype(np.float64) @ np.array(c))
               for c in itertools.product((-step, 0.0, step), repeat=DIM))
    return params, loss, step, best


def train_scan(tx, params, loss, steps):
    def body(carry, _):
        p, s = carry
        updates, s = tx.update(jax.grad(loss)(p), s, p)
        return (optax.apply_updates(p, updates), s), None

    return jax.jit(lambda p, s: jax.lax.scan(body, (p, s), None, length=steps)[0])(
        params, tx.init(params))


DEFAULTS = {
    "symog(bits, sgd)": lambda: sj.symog(2, optax.sgd(0.1), total_steps=TOY_STEPS),
    "symog(bits, adam)": lambda: sj.symog(2, optax.adam(1e-3), total_steps=TOY_STEPS),
    "chain(adam, symog(bits))": lambda: optax.chain(
        optax.adam(1e-3), sj.symog(2, total_steps=TOY_STEPS)),
    "chain(sgd, pull_to_levels(bits))": lambda: optax.chain(optax.sgd(0.1), pull_to_levels(2)),
    "share_formats(bits, chain(adam, pull, clip))": lambda: sj.share_formats(
        sj.FormatPolicy(2), optax.chain(optax.adam(1e-3), pull_to_levels(None),
                                        sj.clip_to_representable_range(None))),
    "symog(bits, adam, total_steps=300)": lambda: sj.symog(2, optax.adam(1e-2), total_steps=300),
}


@pytest.mark.parametrize("name", list(DEFAULTS))
def test_defaults_end_on_the_levels(name, toy):
    params, loss, step, best = toy
    steps = 300 if "total_steps=300" in name else TOY_STEPS
    trained, state = train_scan(DEFAULTS[name](), params, loss, steps)
    w = np.asarray(trained["dense"]["kernel"], np.float64)
    levels = np.array([-step, 0.0, step])
    assert np.abs(w[..., None] - levels).min(-1).max() < 1e-6 * step
    result = sj.hard_quantize(trained, state)
    assert result.report[0].near_level_fraction == 1.0
    hard = float(loss(result.params))
    assert hard == pytest.approx(float(loss(trained)), rel=1e-6)
    assert hard <= 1.01 * best                     # the best 2-bit kernel, by brute force


def test_symog_needs_no_strength_and_strength_is_a_gradient_weight():
    # strength: the weight of dNLL/dw, before the optimizer (coupled) or after it (decoupled).
    params = {"w": jnp.array([[0.3, -0.2], [0.1, 0.4]])}
    zeros = {"w": jnp.zeros((2, 2))}
    step = float(sj.init_formats(params, 2)["w"].step)
    w = np.asarray(params["w"], np.float64)
    level = np.clip(np.round(w / step), -1, 1) * step            # nearest 2-bit level
    dnll = (w - level) / (1.0 * step) ** 2                       # sigma = 1 step
    coupled = sj.symog(2, optax.sgd(0.1), strength=0.02, clip=False)
    u, _ = coupled.update(zeros, coupled.init(params), params)
    np.testing.assert_allclose(u["w"], -0.1 * 0.02 * dnll, rtol=1e-5)
    decoupled = sj.symog(2, strength=0.02, clip=False)
    u, _ = decoupled.update(zeros, decoupled.init(params), params)
    np.testing.assert_allclose(u["w"], -0.02 * dnll, rtol=1e-5)
    # pull: a fraction of the distance to the nearest level, whatever sigma and the step.
    for sigma in (1.0, 3.0):
        tx = sj.symog(2, pull=0.25, sigma=sigma, clip=False)
        u, _ = tx.update(zeros, tx.init(params), params)
        np.testing.assert_allclose(u["w"], -0.25 * (w - level), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="pull must be <= 1"):
        sj.symog(2, pull=1.5)


def test_schedules_as_fractions_of_the_run():
    for total in (100, 1000, 12345):
        s = annealing_schedule_for_run(1e-4, 1e-1, total, warmup_fraction=0.1,
                                       anneal_fraction=0.5)
        warmup = round(0.1 * total)
        ramp = round(0.5 * (total - warmup))
        assert float(s(warmup - 1)) == 0.0
        assert float(s(warmup)) == pytest.approx(1e-4, rel=1e-5)
        assert float(s(warmup + ramp / 2)) == pytest.approx(10 ** -2.5, rel=1e-3)
        assert float(s(warmup + ramp)) == pytest.approx(1e-1, rel=1e-5)
        assert float(s(total)) == pytest.approx(1e-1, rel=1e-5)
    # The default pull: float for half the run, then 1e-4 -> 1 over 90 % of the rest, then 1.
    s = default_pull(5000)
    assert float(s(0)) == float(s(2499)) == 0.0
    assert float(s(2500)) == pytest.approx(1e-4)
    assert float(s(4749)) < 1.0 and float(s(4750)) == 1.0 == float(s(4999))
    assert float(default_pull()(950)) == 1.0                    # total_steps defaults to 1000
    # ... and symog re-chooses the formats once, at the end of the float half.
    tx = sj.symog(2, optax.sgd(0.0), total_steps=4)              # float steps 0, 1; re-chosen at 2
    params = dict_params()
    state = tx.init(jax.tree_util.tree_map(lambda p: p * 8.0, params))
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    before = sj.find_formats(state)["l1"]["w"].frac_bits
    for _ in range(3):
        _, state = tx.update(zeros, state, params)
    assert int(sj.find_formats(state)["l1"]["w"].frac_bits) == int(before) + 3
    with pytest.raises(ValueError, match="total_steps must be >= 1"):
        annealing_schedule_for_run(1e-3, 1.0, 0)
    with pytest.raises(ValueError, match="warmup_fraction"):
        annealing_schedule_for_run(1e-3, 1.0, 100, warmup_fraction=1.0)


# --------------------------------------------------------------------------------------------
# The registered methods' transforms on the same paths
# --------------------------------------------------------------------------------------------

METHOD_CONFIGS = {"float": {"bits": 2}, "ste": {"bits": 2},
                  "symog": {"bits": 2, "warmup_epochs": 0.25, "strength_start": 1e-2,
                            "strength_end": 1.0, "anneal_fraction": 0.5}}


@pytest.mark.parametrize("path", ["linen", "nnx.Optimizer", "dict"])
@pytest.mark.parametrize("name", sorted(METHOD_CONFIGS))
def test_registered_method_transforms_on_every_path(name, path, use_jit):
    from symog_jax.methods import RunInfo, make_method, method_names

    # syq, gdrq (learned scales), lsq (learned steps) and hfp (gates) have trainable variables
    # of their own: the trainer's tree {"params", "method"}, not a plain parameter tree.
    assert set(METHOD_CONFIGS) | {"syq", "gdrq", "lsq", "hfp"} == set(method_names())
    method = make_method(name, METHOD_CONFIGS[name], RunInfo(steps_per_epoch=5, epochs=4))
    tx = method.transform(optax.sgd(0.05), method.run)
    ste = name == "ste"
    if path == "nnx.Optimizer":
        model, opt, losses = train_nnx(tx, ste, use_jit)
        params, state = nnx.state(model, nnx.Param), opt.opt_state
    elif path == "linen":
        init = LinenMLP().init(jax.random.PRNGKey(0), data()[0])["params"]
        params, state, losses = train_functional(
            tx, init, lambda p, x: LinenMLP().apply({"params": p}, x), ste, use_jit)
    else:
        params, state, losses = train_functional(tx, dict_params(), dict_mlp, ste, use_jit)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    formats = sj.init_formats(params, 2, mask=r"(kernel|w)$") if name == "float" else state
    result = sj.hard_quantize(params, formats)
    assert len(result.report) == 2
    for c in jax.tree_util.tree_leaves(result.codes):
        assert int(c.min()) >= -1 and int(c.max()) <= 1
    if name == "symog":   # strength reached 1 (a full pull) in the last half: on the levels
        assert all(r.near_level_fraction == 1.0 for r in result.report)
