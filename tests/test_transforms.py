"""optax transforms: prior gradient, clipping, symog, masks, policies, checkpointing."""

from __future__ import annotations

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

import symog_jax as sj
from symog_jax import FixedPointFormat, FormatPolicy

# --------------------------------------------------------------------------------------------
# Models and parameter trees
# --------------------------------------------------------------------------------------------


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = nn.relu(x).mean(axis=(1, 2))
        return nn.Dense(3)(x)


class NnxNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(2, 4, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(4, use_running_average=True, rngs=rngs)
        self.linear = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn(self.conv(x))).mean(axis=(1, 2))
        return self.linear(x)


@pytest.fixture(scope="module")
def linen_variables():
    return jax.jit(LinenNet().init)(jax.random.PRNGKey(0), jnp.ones((1, 6, 6, 2)))


def plain_params(rng):
    return {"dense": {"kernel": jnp.asarray(rng.standard_normal((5, 3)), jnp.float32),
                      "bias": jnp.asarray(rng.standard_normal(3), jnp.float32)},
            "conv": {"kernel": jnp.asarray(rng.standard_normal((3, 3, 2, 4)) * 0.2, jnp.float32),
                     "bias": jnp.zeros(4, jnp.float32)},
            "scale": jnp.ones((), jnp.float32)}


def leaves_by_path(tree):
    return {sj.quantizers.masks.path_str(p): v
            for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def formats_by_path(formats):
    flat = jax.tree_util.tree_flatten_with_path(
        formats, is_leaf=sj.quantizers.policy.is_format_node)[0]
    return {sj.quantizers.masks.path_str(p): f for p, f in flat}


def random_like(tree, rng, scale=1.0):
    return jax.tree_util.tree_map(
        lambda x: jnp.asarray(rng.standard_normal(np.shape(x)) * scale, jnp.float32), tree)


def tree_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --------------------------------------------------------------------------------------------
# Which leaves are quantized
# --------------------------------------------------------------------------------------------

def test_linen_kernels_quantized_biases_and_batchnorm_not(linen_variables):
    formats = formats_by_path(sj.init_formats(linen_variables, 2))
    quantized = sorted(p for p, f in formats.items() if f is not None)
    assert quantized == ["params/Conv_0/kernel", "params/Dense_0/kernel"]
    assert set(formats) == {"params/Conv_0/kernel", "params/Conv_0/bias",
                            "params/BatchNorm_0/scale", "params/BatchNorm_0/bias",
                            "params/Dense_0/kernel", "params/Dense_0/bias",
                            "batch_stats/BatchNorm_0/mean", "batch_stats/BatchNorm_0/var"}
    for path in quantized:
        assert formats[path].bits == 2 and formats[path].symmetric


def test_nnx_state_kernels_quantized():
    _, params, _ = nnx.split(NnxNet(nnx.Rngs(0)), nnx.Param, ...)
    assert sj.selected_paths(None, params) == ["conv/kernel", "linear/kernel"]
    formats = formats_by_path(sj.init_formats(params, 3))
    assert sorted(p for p, f in formats.items() if f is not None) == ["conv/kernel",
                                                                      "linear/kernel"]


def test_mask_variants(rng):
    params = plain_params(rng)

    def quantized(formats):
        return sorted(p for p, f in formats_by_path(formats).items() if f is not None)

    assert quantized(sj.init_formats(params, 2)) == ["conv/kernel", "dense/kernel"]
    assert quantized(sj.init_formats(params, 2, mask=r"^dense/")) == ["dense/bias",
                                                                      "dense/kernel"]
    assert quantized(sj.init_formats(params, 2, mask=lambda p, x: np.size(x) == 3)) == [
        "dense/bias"]
    bool_mask = {"dense": {"kernel": False, "bias": True}, "conv": {"kernel": True, "bias": False},
                 "scale": True}
    assert quantized(sj.init_formats(params, 2, mask=bool_mask)) == ["conv/kernel", "dense/bias",
                                                                     "scale"]


def test_default_mask_rule():
    # Weight-like names and at least 2-D; never 1-D "kernels", biases or other names.
    m = jnp.ones((2, 2))
    params = {"a": {"kernel": jnp.ones(3)}, "b": {"kernel": m}, "c": {"w": m}, "d": {"weight": m},
              "e": {"weights": m}, "f": {"embedding": m}, "g": {"bias": m}, "h": {"kernel2": m}}
    assert sj.selected_paths(None, params) == ["b/kernel", "c/w", "d/weight", "e/weights"]


@pytest.mark.parametrize("mask", ["no_such_layer", lambda p, x: False])
def test_mask_selecting_nothing_is_an_error(mask, rng):
    params = plain_params(rng)
    with pytest.raises(ValueError, match=r"selects no parameter.*dense/kernel"):
        sj.symog(2, optax.sgd(0.1), strength=1e-3, mask=mask).init(params)
    if isinstance(mask, str):
        with pytest.raises(ValueError, match="no_such_layer"):
            sj.clip_to_representable_range(2, mask=mask).init(params)


def test_bool_mask_of_wrong_structure(rng):
    params = plain_params(rng)
    with pytest.raises(ValueError, match="mask pytree has 2 leaves but the parameters have 5"):
        sj.init_formats(params, 2, mask={"a": True, "b": False})
    # Right number of bools under other names: refused rather than silently reassigned.
    renamed = {"dense": {"w": True, "b": False}, "conv": {"kernel": True, "bias": False},
               "scale": False}
    with pytest.raises(ValueError, match="its leaf 'dense/b' is where the parameters have"):
        sj.init_formats(params, 2, mask=renamed)


def test_plain_dict_mask_on_nnx_state():
    _, params, _ = nnx.split(NnxNet(nnx.Rngs(0)), nnx.Param, ...)
    mask = {"bn": {"bias": False, "scale": False}, "conv": {"bias": False, "kernel": False},
            "linear": {"bias": False, "kernel": True}}
    assert sj.selected_paths(mask, params) == ["linear/kernel"]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_params_at_init(bad, rng):
    params = plain_params(rng)
    params["conv"]["kernel"] = params["conv"]["kernel"].at[0, 0, 0, 1].set(bad)
    for tx in (sj.symog(2, optax.adam(1e-3), strength=1e-3), sj.add_mixture_prior_gradient(2, 0.1),
               sj.clip_to_representable_range(2)):
        with pytest.raises(ValueError, match="'conv/kernel' contains NaN or inf"):
            tx.init(params)


def test_update_without_params_is_an_error(rng):
    params = plain_params(rng)
    grads = random_like(params, rng)
    for name, tx in [("symog", sj.symog(2, optax.sgd(0.1), strength=1e-3)),
                     ("add_mixture_prior_gradient", sj.add_mixture_prior_gradient(2, 0.1)),
                     ("clip_to_representable_range", sj.clip_to_representable_range(2))]:
        state = tx.init(params)
        with pytest.raises(ValueError, match="needs the current parameters"):
            tx.update(grads, state)


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="strength must be >= 0"):
        sj.symog(2, strength=-1.0)
    with pytest.raises(ValueError, match="strength must be >= 0"):
        sj.add_mixture_prior_gradient(2, strength=float("nan"))
    with pytest.raises(ValueError, match="sigma must be finite and > 0"):
        sj.symog(2, strength=1e-3, sigma=0.0)
    with pytest.raises(ValueError, match="sigma must be finite and > 0"):
        sj.add_mixture_prior_gradient(2, 0.1, sigma=float("nan"))
    with pytest.raises(ValueError, match="bits=1 is too small"):
        sj.symog(1, strength=1e-3)
    with pytest.raises(TypeError, match="bits must be an integer"):
        sj.clip_to_representable_range(2.5)
    with pytest.raises(ValueError, match="reestimate_every must be a positive int"):
        sj.symog(2, strength=1e-3, reestimate_every=0)
    with pytest.raises(ValueError, match="Formats that change need one owner"):
        sj.clip_to_representable_range(2, reestimate_every=10)
    with pytest.raises(ValueError, match="Formats that change need one owner"):
        sj.add_mixture_prior_gradient(2, 0.1, reestimate_every=10)
    with pytest.raises(ValueError, match="start and end must be > 0"):
        sj.annealing_schedule(0.0, 1.0, 10)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        sj.annealing_schedule(1e-3, 1.0, 0)


# --------------------------------------------------------------------------------------------
# FormatPolicy
# --------------------------------------------------------------------------------------------

def test_policy_formats_are_mse_optimal_per_leaf(rng, nearest_for_format):
    params = plain_params(rng)

    def bits(path, leaf):
        return 4 if path.startswith("conv") else 2

    for per_channel in (False, True):
        formats = formats_by_path(FormatPolicy(bits, per_channel=per_channel).init(params))
        leaves = leaves_by_path(params)
        for path in ("conv/kernel", "dense/kernel"):
            fmt, w = formats[path], np.asarray(leaves[path])
            assert fmt.bits == bits(path, w)
            assert fmt.per_channel == per_channel
            err = ((w - nearest_for_format(w, fmt)[0]) ** 2)
            err = err.sum(axis=tuple(range(w.ndim - 1))) if per_channel else err.sum()
            # No other exponent (per channel) does better: brute force over a wide range.
            for f in range(-30, 31):
                other = FixedPointFormat(fmt.bits, f)
                e = (w - nearest_for_format(w, other)[0]) ** 2
                e = e.sum(axis=tuple(range(w.ndim - 1))) if per_channel else e.sum()
                np.testing.assert_array_less(err, e * (1 + 1e-5) + 1e-12)


def test_policy_bad_per_leaf_bits_names_the_leaf(rng):
    with pytest.raises(ValueError, match="leaf 'conv/kernel': bits=40 is too large"):
        sj.init_formats(plain_params(rng), lambda p, x: 40)
    with pytest.raises(ValueError, match="leaf 'scale' is a scalar"):
        sj.init_formats(plain_params(rng), 2, mask="scale", per_channel=True)


def test_annealing_schedule_closed_form():
    s = sj.annealing_schedule(1e-4, 1e-1, 1000, warmup_steps=100)
    for t in (0, 50, 99):
        assert float(s(t)) == 0.0
    for t in (100, 350, 600, 1100):
        np.testing.assert_allclose(float(s(t)), 1e-4 * 1000 ** ((t - 100) / 1000), rtol=1e-5)
    np.testing.assert_allclose(float(s(5000)), 1e-1, rtol=1e-6)
    np.testing.assert_allclose(float(jax.jit(s)(jnp.int32(600))), 1e-4 * 1000**0.5, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# The added prior gradient, against numpy
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("per_channel", [False, True])
def test_prior_gradient_nearest_form_on_linen(per_channel, linen_variables, use_jit, rng,
                                              nearest_for_format):
    params = linen_variables["params"]
    strength, sigma = 0.3, 0.5
    tx = sj.add_mixture_prior_gradient(2, strength, sigma=sigma, per_channel=per_channel)
    state = tx.init(params)
    grads = random_like(params, rng)
    update = jax.jit(tx.update) if use_jit else tx.update
    updates, new_state = update(grads, state, params)
    formats = formats_by_path(sj.find_formats(state))
    g, u, w = leaves_by_path(grads), leaves_by_path(updates), leaves_by_path(params)
    for path, fmt in formats.items():
        if fmt is None:                               # biases, BatchNorm: untouched
            np.testing.assert_array_equal(u[path], g[path])
            continue
        wp = np.asarray(w[path], np.float64)
        step = 2.0 ** -np.asarray(fmt.frac_bits, np.float64)      # per channel: last axis
        expected = g[path] + strength * (wp - nearest_for_format(wp, fmt)[0]) / (sigma * step) ** 2
        np.testing.assert_allclose(u[path], expected, rtol=1e-5, atol=1e-5)
    assert int(new_state.count) == 1


def test_prior_gradient_exact_form_and_mixing(rng):
    params = {"w": jnp.asarray(rng.uniform(-1.2, 1.2, (4, 6)), jnp.float32)}
    pi = np.array([0.2, 0.5, 0.3])
    tx = sj.add_mixture_prior_gradient(2, 0.7, sigma=0.4, form="exact", mixing=pi,
                                       mask=lambda p, x: True)
    state = tx.init(params)
    fmt = sj.find_formats(state)["w"]
    updates, _ = tx.update({"w": jnp.zeros((4, 6))}, state, params)
    step = fmt.step
    mu = np.array([-step, 0.0, step])
    s = 0.4 * step
    w = np.asarray(params["w"], np.float64)[..., None]
    resp = pi * np.exp(-((w - mu) ** 2) / (2 * s**2))
    resp /= resp.sum(-1, keepdims=True)
    expected = 0.7 * (resp * (w - mu)).sum(-1) / s**2
    np.testing.assert_allclose(updates["w"], expected, rtol=1e-4, atol=1e-4)


def test_sigma_in_absolute_units(rng):
    params = {"kernel": jnp.asarray(rng.uniform(-3, 3, (3, 3)), jnp.float32)}
    tx = sj.add_mixture_prior_gradient(3, 2.0, sigma=0.1, sigma_in_steps=False)
    state = tx.init(params)
    fmt = sj.find_formats(state)["kernel"]
    updates, _ = tx.update({"kernel": jnp.zeros((3, 3))}, state, params)
    w = np.asarray(params["kernel"], np.float64)
    q = np.clip(np.round(w / fmt.step), -3, 3) * fmt.step
    np.testing.assert_allclose(updates["kernel"], 2.0 * (w - q) / 0.01, rtol=1e-5, atol=1e-4)


def test_schedules_are_evaluated_at_the_step_count(rng, use_jit):
    params = {"kernel": jnp.asarray(rng.uniform(-1, 1, (4, 4)), jnp.float32)}
    strength = optax.linear_schedule(0.0, 1.0, 10)          # 0, 0.1, 0.2, ...
    sigma = optax.linear_schedule(1.0, 0.5, 4)               # 1, 0.875, 0.75, ...
    tx = sj.add_mixture_prior_gradient(2, strength, sigma=sigma)
    state = tx.init(params)
    fmt = sj.find_formats(state)["kernel"]
    w = np.asarray(params["kernel"], np.float64)
    pull = (w - np.clip(np.round(w / fmt.step), -1, 1) * fmt.step) / fmt.step**2
    zeros = {"kernel": jnp.zeros((4, 4))}
    update = jax.jit(tx.update) if use_jit else tx.update
    for t in range(4):
        updates, state = update(zeros, state, params)
        expected = 0.1 * t * pull / (1.0 - 0.125 * t) ** 2
        np.testing.assert_allclose(updates["kernel"], expected, rtol=1e-5, atol=1e-6)
        assert int(state.count) == t + 1


def test_decoupled_sign(rng):
    params = {"kernel": jnp.asarray(rng.uniform(-1, 1, (4, 4)), jnp.float32)}
    zeros = {"kernel": jnp.zeros((4, 4))}
    coupled = sj.add_mixture_prior_gradient(2, 0.2)
    decoupled = sj.add_mixture_prior_gradient(2, 0.2, decoupled=True)
    u1, _ = coupled.update(zeros, coupled.init(params), params)
    u2, _ = decoupled.update(zeros, decoupled.init(params), params)
    np.testing.assert_array_equal(u2["kernel"], -u1["kernel"])
    assert np.any(np.asarray(u1["kernel"]) != 0)


# --------------------------------------------------------------------------------------------
# Clipping projection
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", [{}, {"symmetric": False}, {"signed": False}])
def test_clipping_keeps_params_in_range_and_is_identity_inside(kind, use_jit, rng):
    params = {"k": jnp.asarray(rng.uniform(-1, 1, (64, 8)) * rng.choice([1, 1e-3, 1e-6], (64, 8)),
                               jnp.float32),
              "b": jnp.asarray(rng.standard_normal(8), jnp.float32)}
    if kind.get("signed") is False:
        params["k"] = jnp.abs(params["k"])
    tx = sj.clip_to_representable_range(5, mask="k", per_channel=True, **kind)
    state = tx.init(params)
    fmt = sj.find_formats(state)["k"]
    lo, hi = np.asarray(fmt.min_value), np.asarray(fmt.max_value)
    update = jax.jit(tx.update) if use_jit else tx.update
    for scale in (0.01, 0.3, 3.0):
        u = random_like(params, rng, scale * float(np.max(hi)))
        new_u, _ = update(u, state, params)
        new = optax.apply_updates(params, new_u)
        raw = np.asarray(params["k"]) + np.asarray(u["k"])          # float32, as optax does
        inside = (raw >= lo) & (raw <= hi)
        assert np.all((np.asarray(new["k"]) >= lo) & (np.asarray(new["k"]) <= hi))
        np.testing.assert_array_equal(np.asarray(new_u["k"])[inside], np.asarray(u["k"])[inside])
        clipped = np.clip(raw.astype(np.float64), lo, hi)
        np.testing.assert_allclose(np.asarray(new["k"])[~inside], clipped[~inside], rtol=1e-6)
        np.testing.assert_array_equal(new_u["b"], u["b"])         # unquantized leaf untouched
    assert 0 < inside.mean() < 1


# --------------------------------------------------------------------------------------------
# symog end to end on a toy regression whose float optimum is off the grid
# --------------------------------------------------------------------------------------------

N_DATA, DIM, STEPS = 256, 8, 2000


@pytest.fixture(scope="module")
def regression():
    rng = np.random.default_rng(1234)
    x = rng.standard_normal((N_DATA, DIM)).astype(np.float32)
    w_true = rng.uniform(-1.0, 1.0, (DIM, 1)).astype(np.float32)
    y = x @ w_true + np.float32(0.3)
    params = {"dense": {"kernel": jnp.asarray(w_true), "bias": jnp.asarray([0.3], jnp.float32)}}

    def loss(p):
        return 0.5 * jnp.mean((x @ p["dense"]["kernel"] + p["dense"]["bias"] - y) ** 2)

    step = sj.init_formats(params, 2)["dense"]["kernel"].step
    return params, loss, step, x, y


def train(tx, params, loss, steps=STEPS):
    def body(carry, _):
        p, s = carry
        updates, s = tx.update(jax.grad(loss)(p), s, p)
        return (optax.apply_updates(p, updates), s), None

    run = jax.jit(lambda p, s: jax.lax.scan(body, (p, s), None, length=steps)[0])
    return run(params, tx.init(params))


def best_quantized_loss(x, y, step):
    """Brute force over all 3**DIM kernels on the 2-bit grid, with the optimal float bias."""
    x = x.astype(np.float64)
    best = np.inf
    for combo in itertools.product((-step, 0.0, step), repeat=DIM):
        r = y[:, 0] - x @ np.array(combo)
        best = min(best, 0.5 * np.var(r))
    return best


def optimizers(step):
    coupled_end = 1000 * step**2                 # prior curvature 1000 at the end (sigma = 1 step)
    decoupled_end = 0.5 * step**2                # moves half the distance to the level per step
    anneal = sj.annealing_schedule(1e-3 * coupled_end, coupled_end, STEPS // 2)
    anneal_decoupled = sj.annealing_schedule(1e-3 * decoupled_end, decoupled_end, STEPS // 2)
    adam_lr = optax.cosine_decay_schedule(1e-2, STEPS, alpha=1e-4)
    sgd = optax.sgd(1e-3, momentum=0.9)
    return {
        "symog(sgd)": sj.symog(2, sgd, strength=anneal),
        "symog(adam)": sj.symog(2, optax.adam(adam_lr), strength=anneal),
        "chain(adam, symog)": optax.chain(optax.adam(adam_lr),
                                          sj.symog(2, strength=anneal_decoupled)),
        "chain(prior, sgd, clip)": optax.chain(sj.add_mixture_prior_gradient(2, anneal), sgd,
                                               sj.clip_to_representable_range(2)),
        "chain(prior, adam, clip)": optax.chain(sj.add_mixture_prior_gradient(2, anneal),
                                                optax.adam(adam_lr),
                                                sj.clip_to_representable_range(2)),
    }


@pytest.mark.parametrize("name", ["symog(sgd)", "symog(adam)", "chain(adam, symog)",
                                  "chain(prior, sgd, clip)", "chain(prior, adam, clip)"])
def test_training_ends_on_the_levels(name, regression):
    params, loss, step, x, y = regression
    tx = optimizers(step)[name]
    trained, state = train(tx, params, loss)
    result = sj.hard_quantize(trained, state)
    w = np.asarray(trained["dense"]["kernel"], np.float64)
    # Distance to the nearest 2-bit level, by brute force over the three levels.
    levels = np.array([-step, 0.0, step])
    dist = np.abs(w[..., None] - levels).min(-1)
    assert dist.max() < 1e-3 * step, dist.max() / step
    assert result.report[0].near_level_fraction == 1.0
    # The float optimum is off the grid: training moved the weights.
    assert np.abs(w - np.asarray(params["dense"]["kernel"])).max() > 0.1 * step
    trained_loss, hard_loss = float(loss(trained)), float(loss(result.params))
    np.testing.assert_allclose(hard_loss, trained_loss, rtol=5e-3)
    # At least as good as rounding the float optimum, and near the best 2-bit kernel.
    naive = sj.quantize(params["dense"]["kernel"], FixedPointFormat(2, -int(np.log2(step))))
    naive_loss = float(loss({"dense": {"kernel": naive, "bias": params["dense"]["bias"]}}))
    best = best_quantized_loss(x, y, step)
    assert best * (1 - 1e-4) <= hard_loss <= naive_loss * (1 + 1e-3)
    assert hard_loss <= 1.05 * best


def test_symog_without_clip_still_converges_inside(regression):
    params, loss, step, _, _ = regression
    tx = sj.symog(2, optax.sgd(1e-3, momentum=0.9), clip=False,
                  strength=sj.annealing_schedule(1e-3 * step**2, 1000 * step**2, STEPS // 2))
    trained, state = train(tx, params, loss)
    assert isinstance(state, sj.SymogState)
    w = np.asarray(trained["dense"]["kernel"])
    assert np.abs(np.abs(w) - step).min() < 1e-2 * step      # some weights sit on +-step


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_jit_and_eager_updates_agree(optimizer, rng):
    params = plain_params(rng)
    inner = optax.sgd(0.05, momentum=0.9) if optimizer == "sgd" else optax.adam(1e-2)
    tx = sj.symog(3, inner, strength=optax.linear_schedule(1e-3, 1e-1, 5), per_channel=True,
                  reestimate_every=2)
    s_eager = s_jit = tx.init(params)
    p_eager = p_jit = params
    update = jax.jit(tx.update)
    for _ in range(5):
        g = random_like(params, rng)
        u_e, s_eager = tx.update(g, s_eager, p_eager)
        u_j, s_jit = update(g, s_jit, p_jit)
        p_eager, p_jit = optax.apply_updates(p_eager, u_e), optax.apply_updates(p_jit, u_j)
    # Same values up to float32 rounding: XLA fuses and reorders arithmetic under jit (1 ulp).
    for a, b in zip(jax.tree_util.tree_leaves(p_eager), jax.tree_util.tree_leaves(p_jit)):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-8)
    assert sj.find_formats(s_eager) == sj.find_formats(s_jit)
    assert int(s_eager.count) == int(s_jit.count) == 5


# --------------------------------------------------------------------------------------------
# Re-estimation
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["symog", "share_formats"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_reestimate_follows_rescaled_weights(which, per_channel, use_jit, rng):
    params = plain_params(rng)
    if which == "symog":
        tx = sj.symog(3, optax.sgd(0.0), strength=0.0, reestimate_every=2,
                      per_channel=per_channel)
    else:
        tx = sj.share_formats(sj.FormatPolicy(3, reestimate_every=2, per_channel=per_channel),
                              sj.add_mixture_prior_gradient(None, 0.0))
    state = tx.init(params)
    before = formats_by_path(sj.find_formats(state))
    scaled = jax.tree_util.tree_map(lambda w: w * 8.0, params)       # exact: 2**3
    grads = jax.tree_util.tree_map(jnp.zeros_like, params)
    update = jax.jit(tx.update) if use_jit else tx.update
    _, state = update(grads, state, scaled)                            # count 0: no change
    _, state = update(grads, state, scaled)                            # count 1: no change
    assert formats_by_path(sj.find_formats(state)) == before
    _, state = update(grads, state, scaled)                            # count 2: re-estimated
    after = formats_by_path(sj.find_formats(state))
    for path, fmt in before.items():
        if fmt is None:
            assert after[path] is None
            continue
        # Scaling by 8 shifts the MSE-optimal exponent by exactly -3 (ties included).
        np.testing.assert_array_equal(np.asarray(after[path].frac_bits),
                                      np.asarray(fmt.frac_bits) - 3)
        assert after[path].bits == fmt.bits


def test_track_formats_with_reestimate_until(rng, use_jit):
    params = plain_params(rng)
    tx = sj.track_formats(3, reestimate_every=2, reestimate_until=2)
    state = tx.init(params)
    before = formats_by_path(sj.find_formats(state))
    grads = random_like(params, rng)
    update = jax.jit(tx.update) if use_jit else tx.update

    def frac_bits(state):
        return {p: np.asarray(f.frac_bits) for p, f in
                formats_by_path(sj.find_formats(state)).items() if f is not None}

    x8 = jax.tree_util.tree_map(lambda w: w * 8.0, params)
    x64 = jax.tree_util.tree_map(lambda w: w * 64.0, params)
    for t, p in enumerate([x8, x8, x8, x64, x64, x64]):         # counts 0..5
        updates, state = update(grads, state, p)
        tree_equal(updates, grads)                                # updates pass unchanged
        if t == 1:
            assert formats_by_path(sj.find_formats(state)) == before
    # Re-estimated once, at count 2 (8x weights: -3); not at count 4 (after reestimate_until).
    for path, fb in frac_bits(state).items():
        np.testing.assert_array_equal(fb, np.asarray(before[path].frac_bits) - 3)


def test_without_reestimation_formats_stay(rng):
    params = plain_params(rng)
    tx = sj.symog(2, optax.sgd(0.0), strength=0.0)
    state = tx.init(params)
    before = sj.find_formats(state)
    scaled = jax.tree_util.tree_map(lambda w: w * 8.0, params)
    for _ in range(3):
        _, state = tx.update(jax.tree_util.tree_map(jnp.zeros_like, params), state, scaled)
    assert sj.find_formats(state) == before


# --------------------------------------------------------------------------------------------
# fake_quantize
# --------------------------------------------------------------------------------------------

def test_fake_quantize_on_linen(linen_variables, nearest_for_format):
    params = linen_variables["params"]
    formats = sj.init_formats(params, 2)
    fq = sj.fake_quantize(params, formats)
    hard = sj.fake_quantize(params, formats, straight_through=False)
    fmts, w = formats_by_path(formats), leaves_by_path(params)
    for path, v in leaves_by_path(fq).items():
        if fmts[path] is None:
            np.testing.assert_array_equal(v, w[path])
        else:
            np.testing.assert_array_equal(np.asarray(v, np.float64),
                                          nearest_for_format(np.asarray(w[path]), fmts[path])[0])
        np.testing.assert_array_equal(leaves_by_path(hard)[path], v)
    # Straight-through: d sum(fake_quantize(w)) / dw is 1 inside the range (all of it here,
    # a range chosen for w contains most of w) and 0 where saturated; 1 for other leaves.
    grads = leaves_by_path(jax.grad(lambda p: sum(
        jnp.sum(v) for v in jax.tree_util.tree_leaves(sj.fake_quantize(p, formats))))(params))
    for path, g in grads.items():
        if fmts[path] is None:
            np.testing.assert_array_equal(g, np.ones_like(g))
        else:
            inside = np.abs(np.asarray(w[path])) <= fmts[path].max_value
            np.testing.assert_array_equal(g, inside.astype(np.float32))
    # Logits through the model with quantized kernels equal applying the hard-quantized ones.
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 6, 6, 2)), jnp.float32)
    out = LinenNet().apply({**linen_variables, "params": fq}, x)
    ref = LinenNet().apply({**linen_variables, "params": hard}, x)
    np.testing.assert_array_equal(out, ref)


# --------------------------------------------------------------------------------------------
# Flax NNX end to end
# --------------------------------------------------------------------------------------------

def test_nnx_training_and_export():
    model = NnxNet(nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 6, 6, 2)), jnp.float32)
    target = jnp.asarray(np.random.default_rng(1).standard_normal((8, 3)), jnp.float32)

    def loss(p):
        return jnp.mean((nnx.merge(graphdef, p, rest)(x) - target) ** 2)

    tx = sj.symog(2, optax.adam(optax.cosine_decay_schedule(1e-2, 400, alpha=1e-4)),
                  strength=sj.annealing_schedule(1e-2, 1e2, 200))
    trained, state = train(tx, params, loss, steps=400)
    result = sj.hard_quantize(trained, state)
    assert [r.path for r in result.report] == ["conv/kernel", "linear/kernel"]
    for path in ("conv/kernel", "linear/kernel"):
        w = np.asarray(leaves_by_path(trained)[path], np.float64)
        fmt = formats_by_path(result.formats)[path]
        levels = np.arange(-1, 2) * fmt.step
        assert np.abs(w[..., None] - levels).min(-1).max() < 1e-2 * fmt.step
        assert np.all(np.isin(np.asarray(leaves_by_path(result.params)[path]), levels))
    # BatchNorm and biases were trained but not quantized.
    assert not np.all(np.isin(np.asarray(leaves_by_path(result.params)["bn/scale"]),
                              [-1.0, 0.0, 1.0]))
    model = nnx.merge(graphdef, result.params, rest)
    np.testing.assert_allclose(float(loss(result.params)), float(loss(trained)), rtol=0.05)
    assert np.all(np.isfinite(np.asarray(model(x))))


# --------------------------------------------------------------------------------------------
# Checkpointing with orbax
# --------------------------------------------------------------------------------------------

def test_orbax_round_trip_and_training_continues(tmp_path, rng):
    params = plain_params(rng)
    tx = sj.symog(3, optax.adam(1e-2), strength=optax.linear_schedule(1e-3, 1e-1, 10),
                  per_channel=True, reestimate_every=3)
    state = tx.init(params)
    update = jax.jit(tx.update)

    def steps(p, s, n, seed):
        r = np.random.default_rng(seed)
        for _ in range(n):
            u, s = update(random_like(p, r), s, p)
            p = optax.apply_updates(p, u)
        return p, s

    params, state = steps(params, state, 4, 0)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "ckpt", {"params": params, "opt_state": state})
    checkpointer.wait_until_finished()
    abstract = {"params": jax.eval_shape(lambda: params),
                "opt_state": jax.eval_shape(tx.init, params)}
    restored = checkpointer.restore(tmp_path / "ckpt", abstract)
    checkpointer.close()

    r_state = restored["opt_state"]
    assert isinstance(r_state, sj.SymogState)
    tree_equal(restored, {"params": params, "opt_state": state})
    formats, r_formats = sj.find_formats(state), sj.find_formats(r_state)
    for path, fmt in formats_by_path(formats).items():
        r_fmt = formats_by_path(r_formats)[path]
        assert r_fmt == fmt
        if fmt is not None:
            assert isinstance(r_fmt.bits, int) and r_fmt.bits == 3 and r_fmt.per_channel
    # Training continues identically from the original and from the restored state.
    p1, s1 = steps(params, state, 4, 1)
    p2, s2 = steps(restored["params"], r_state, 4, 1)
    tree_equal(p1, p2)
    tree_equal(s1, s2)


def test_orbax_fresh_init_state(tmp_path, linen_variables):
    # The state straight from init (frac_bits still concrete) must save and restore too.
    params = linen_variables["params"]
    tx = optax.chain(sj.add_mixture_prior_gradient(2, 0.1), optax.sgd(0.1),
                     sj.clip_to_representable_range(2))
    state = tx.init(params)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "init", state)
        checkpointer.wait_until_finished()
        restored = checkpointer.restore(tmp_path / "init", jax.eval_shape(tx.init, params))
    tree_equal(restored, state)
    assert sj.find_formats(restored) == sj.find_formats(state)


def test_reestimate_every_rejects_bool():
    with pytest.raises(ValueError, match="reestimate_every"):
        FormatPolicy(2, reestimate_every=True)


# --------------------------------------------------------------------------------------------
# One owner for the formats (regression: blocks used to keep diverging private copies)
# --------------------------------------------------------------------------------------------

def test_private_reestimation_in_a_chain_is_refused():
    # Used to run: the prior re-estimated to frac_bits=-3 on x8 kernels while the clip kept
    # frac_bits=0 and moved weights by 17.6 with learning rate and strength both 0.
    with pytest.raises(ValueError, match="one owner"):
        optax.chain(sj.add_mixture_prior_gradient(2, 0.0, reestimate_every=1), optax.sgd(0.0),
                    sj.clip_to_representable_range(2))


@pytest.mark.parametrize("how", ["share_formats", "symog"])
def test_shared_formats_reestimated_once_for_every_block(how, use_jit, rng):
    params = {"dense": {"kernel": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32) * 8.0,
                        "bias": jnp.zeros(8)}}
    if how == "symog":
        tx = sj.symog(2, optax.sgd(0.0), strength=0.0, reestimate_every=1)
    else:
        tx = sj.share_formats(sj.FormatPolicy(2, reestimate_every=1), optax.chain(
            sj.add_mixture_prior_gradient(None, 0.0), optax.sgd(0.0),
            sj.clip_to_representable_range(None)))
    small = jax.tree_util.tree_map(lambda w: w / 8.0, params)
    state = tx.init(small)                        # formats for the small weights ...
    update = jax.jit(tx.update) if use_jit else tx.update
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    _, state = update(zeros, state, params)       # count 0: no re-estimation yet
    u, state = update(zeros, state, params)       # count 1: re-estimated for the x8 weights
    fmt = sj.find_formats(state)["dense"]["kernel"]
    w = np.asarray(params["dense"]["kernel"], np.float64)
    fb = int(sj.best_frac_bits(params["dense"]["kernel"], 2))
    stale_fb = int(sj.best_frac_bits(small["dense"]["kernel"], 2))
    assert int(fmt.frac_bits) == fb == stale_fb - 3
    # Learning rate and strength 0: the only change is the clip, and it must use the formats
    # the prior used (the re-estimated ones), not the ones chosen at init.
    step = 2.0 ** -fb
    clipped = np.asarray(params["dense"]["kernel"] + u["dense"]["kernel"], np.float64)
    np.testing.assert_array_equal(clipped, np.clip(w, -step, step))
    assert np.abs(clipped).max() > 2.0 ** -stale_fb
    # There is exactly one formats tree in the state: the owner's.
    found = [x for x in jax.tree_util.tree_leaves(
        state, is_leaf=lambda x: isinstance(x, sj.QuantizationState))
        if isinstance(x, sj.QuantizationState)]
    assert len(found) == 1


def test_blocks_without_bits_need_an_owner(rng):
    params = {"w": jnp.ones((3, 3))}
    for tx in (sj.add_mixture_prior_gradient(None, 0.1), sj.clip_to_representable_range(None)):
        with pytest.raises(ValueError, match="must run inside share_formats"):
            tx.update(params, tx.init(params), params)
    owned = sj.share_formats(sj.FormatPolicy(2), sj.clip_to_representable_range(2))
    with pytest.raises(ValueError, match="create it with bits=None"):
        owned.update(params, owned.init(params), params)
    with pytest.raises(TypeError, match="needs a FormatPolicy"):
        sj.share_formats(2, optax.identity())


def test_symog_without_strength_pulls_by_default():
    # Issue 14: symog(bits, optimizer) used to require a strength; it now defaults to the pull
    # of transforms.default_pull (the toy-regression check is in tests/test_user_paths.py).
    params = {"w": jnp.array([[0.2, 0.9], [-0.6, -1.1]])}
    tx = sj.symog(2, optax.sgd(0.0), pull=1.0)
    u, _ = tx.update({"w": jnp.zeros((2, 2))}, tx.init(params), params)
    np.testing.assert_array_equal(optax.apply_updates(params, u)["w"], [[0.0, 1.0], [-1.0, -1.0]])
    default = sj.symog(2, optax.sgd(0.1), total_steps=100)
    assert sj.find_formats(default.init(params))["w"].bits == 2
