"""hard_quantize: rounded params, codes, concrete formats and the report, against numpy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import symog_jax as sj
from symog_jax import FixedPointFormat


def make_params(rng):
    return {"conv": {"kernel": jnp.asarray(rng.standard_normal((3, 3, 2, 4)) * 0.3, jnp.float32),
                     "bias": jnp.asarray(rng.standard_normal(4), jnp.float32)},
            "dense": {"kernel": jnp.asarray(rng.standard_normal((6, 5)), jnp.float32),
                      "bias": jnp.asarray(rng.standard_normal(5), jnp.float32)}}


def flat(tree, formats=False):
    kw = {"is_leaf": sj.quantizers.policy.is_format_node} if formats else {}
    return {sj.quantizers.masks.path_str(p): v
            for p, v in jax.tree_util.tree_flatten_with_path(tree, **kw)[0]}


def near_level_params(rng, params, formats, fraction_near):
    """Moves a known fraction of each quantized leaf close to (within 0.1 step of) a level."""
    fmts = flat(formats, formats=True)

    def move(path, w):
        name = sj.quantizers.masks.path_str(path)
        fmt = fmts.get(name)
        if fmt is None:
            return w
        w = np.asarray(w, np.float64)
        step = np.broadcast_to(2.0 ** -np.asarray(fmt.frac_bits, np.float64), w.shape)
        codes = np.clip(np.round(w / step), fmt.code_min, fmt.code_max)
        near = rng.uniform(size=w.shape) < fraction_near
        w = np.where(near, (codes + rng.uniform(-0.1, 0.1, w.shape)) * step, w)
        return jnp.asarray(w, jnp.float32)

    return jax.tree_util.tree_map_with_path(move, params)


def check_result(result, params, formats_expected, nearest_for_format):
    """Every field of a HardQuantized against numpy."""
    w_leaves, q_leaves = flat(params), flat(result.params)
    c_leaves, f_leaves = flat(result.codes, True), flat(result.formats, True)
    expected_formats = flat(formats_expected, True)
    reports = {r.path: r for r in result.report}
    assert list(reports) == [p for p, f in expected_formats.items() if f is not None]
    for path, w in w_leaves.items():
        fmt = expected_formats[path]
        if fmt is None:
            assert c_leaves[path] is None and f_leaves[path] is None
            np.testing.assert_array_equal(q_leaves[path], w)
            continue
        out_fmt = f_leaves[path]
        assert out_fmt == fmt
        assert isinstance(out_fmt.frac_bits, (int, tuple))        # concrete
        w64 = np.asarray(w, np.float64)
        q_np, code_np = nearest_for_format(w64.astype(np.float32), fmt)
        q = q_leaves[path]
        assert q.dtype == w.dtype and q.shape == w.shape
        np.testing.assert_array_equal(np.asarray(q, np.float64), q_np)
        codes = c_leaves[path]
        assert codes.dtype == jnp.int32
        np.testing.assert_array_equal(codes, code_np)
        assert np.all((np.asarray(codes) >= fmt.code_min) & (np.asarray(codes) <= fmt.code_max))
        step = np.broadcast_to(2.0 ** -np.asarray(fmt.frac_bits, np.float64)
                               .reshape((-1,) if fmt.per_channel else ()), w.shape)
        np.testing.assert_array_equal(np.asarray(codes) * step, np.asarray(q, np.float64))
        # Report, computed independently.
        r = reports[path]
        err_steps = np.abs(w64 - q_np) / step
        assert r.shape == w.shape and r.num_params == w.size and r.format == fmt
        assert r.near_level_fraction == pytest.approx(np.count_nonzero(err_steps <= 0.25)
                                                      / w.size, abs=1e-12)
        np.testing.assert_allclose(r.max_abs_error_in_steps, err_steps.max(), rtol=1e-5)
        noise = ((w64 - q_np) ** 2).sum()
        if noise == 0:
            assert r.sqnr_db == np.inf
        else:
            np.testing.assert_allclose(r.sqnr_db, 10 * np.log10((w64**2).sum() / noise),
                                       rtol=1e-5)
        d = r.as_dict()
        assert d["path"] == path and d["bits"] == fmt.bits and d["shape"] == list(w.shape)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("transform", ["symog", "symog_decoupled", "prior", "clip", "chain",
                                       "formats", "quantization_state"])
def test_hard_quantize_with_each_state(transform, per_channel, rng, nearest_for_format):
    params = make_params(rng)
    kw = dict(per_channel=per_channel)
    txs = {
        "symog": lambda: sj.symog(3, optax.adam(1e-3), strength=1e-3, **kw),
        "symog_decoupled": lambda: sj.symog(3, strength=1e-3, **kw),
        "prior": lambda: sj.add_mixture_prior_gradient(3, 0.1, **kw),
        "clip": lambda: sj.clip_to_representable_range(3, **kw),
        "chain": lambda: optax.chain(optax.adam(1e-3), sj.add_mixture_prior_gradient(3, 0.1, **kw),
                                     sj.clip_to_representable_range(3, **kw)),
    }
    formats = sj.init_formats(params, 3, **kw)
    if transform == "formats":
        state = formats
    elif transform == "quantization_state":
        state = sj.QuantizationState(formats)
    else:
        tx = txs[transform]()
        state = tx.init(params)
        _, state = jax.jit(tx.update)(jax.tree_util.tree_map(jnp.zeros_like, params), state,
                                      params)               # frac_bits are now jax arrays
        assert sj.find_formats(state) == formats
    params = near_level_params(rng, params, formats, 0.6)
    result = sj.hard_quantize(params, state)
    check_result(result, params, formats, nearest_for_format)
    fractions = [r.near_level_fraction for r in result.report]
    assert all(0.5 < f < 1.0 for f in fractions), fractions


def test_on_level_params_round_trip(rng, nearest_for_format):
    params = make_params(rng)
    formats = sj.init_formats(params, 2)
    first = sj.hard_quantize(params, formats)
    again = sj.hard_quantize(first.params, formats)
    check_result(again, first.params, formats, nearest_for_format)
    for r in again.report:
        assert r.near_level_fraction == 1.0 and r.max_abs_error_in_steps == 0.0
        assert r.sqnr_db == np.inf
    for path, c in flat(again.codes, True).items():
        if c is not None:
            np.testing.assert_array_equal(c, flat(first.codes, True)[path])


def test_hand_case():
    params = {"dense": {"kernel": jnp.array([[0.1, -0.26], [0.24, 0.0]]),
                        "bias": jnp.array([0.33, -7.0])}}
    result = sj.hard_quantize(params, sj.init_formats(params, 2))   # step 0.25 (by hand)
    assert result.formats["dense"]["kernel"] == FixedPointFormat(2, 2)
    np.testing.assert_array_equal(result.params["dense"]["kernel"], [[0.0, -0.25], [0.25, 0.0]])
    np.testing.assert_array_equal(result.codes["dense"]["kernel"], [[0, -1], [1, 0]])
    np.testing.assert_array_equal(result.params["dense"]["bias"], params["dense"]["bias"])
    (r,) = result.report
    # Errors in steps: 0.4, 0.04, 0.04, 0 -> three of four within a quarter step.
    assert r.near_level_fraction == 0.75
    np.testing.assert_allclose(r.max_abs_error_in_steps, 0.4, rtol=1e-6)
    np.testing.assert_allclose(r.sqnr_db, 10 * np.log10(0.1352 / 0.0102), rtol=1e-5)
    assert "dense/kernel" in result.summary()


def test_weight_bits_hand_count(rng):
    params = make_params(rng)          # conv kernel 72, conv bias 4, dense kernel 30, bias 5
    result = sj.hard_quantize(params, sj.init_formats(params, lambda p, w: 4 if "conv" in p
                                                      else 2))
    assert result.weight_bits() == (72 * 4 + 30 * 2 + (4 + 5) * 32, (72 + 4 + 30 + 5) * 32)
    summary = result.summary()
    assert "conv/kernel" in summary and "dense/kernel" in summary and "KiB" in summary


def test_bfloat16_params(rng, nearest_for_format):
    params = {"w": {"kernel": jnp.asarray(rng.standard_normal((8, 4)), jnp.bfloat16)}}
    formats = sj.init_formats(params, 4)
    result = sj.hard_quantize(params, formats)
    q = result.params["w"]["kernel"]
    assert q.dtype == jnp.bfloat16
    w32 = np.asarray(params["w"]["kernel"].astype(jnp.float32))
    q_np, codes_np = nearest_for_format(w32, formats["w"]["kernel"])
    np.testing.assert_array_equal(np.asarray(q.astype(jnp.float32)), q_np)
    np.testing.assert_array_equal(result.codes["w"]["kernel"], codes_np)


def test_linen_variables_export(rng, nearest_for_format):
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.BatchNorm(use_running_average=True)(nn.Conv(3, (3, 3))(x))
            return nn.Dense(2)(x.mean((1, 2)))

    # Shapes from the model (eval_shape: no compilation), values random.
    shapes = jax.eval_shape(Net().init, jax.random.PRNGKey(0), jnp.ones((1, 5, 5, 2)))
    variables = jax.tree_util.tree_map(
        lambda s: jnp.asarray(rng.standard_normal(s.shape), jnp.float32), shapes)
    formats = sj.init_formats(variables, 2)
    result = sj.hard_quantize(variables, formats)
    assert [r.path for r in result.report] == ["params/Conv_0/kernel", "params/Dense_0/kernel"]
    check_result(result, variables, formats, nearest_for_format)
    assert result.weight_bits() == ((54 + 6) * 2 + (3 + 3 + 3 + 2 + 3 + 3) * 32,
                                    (54 + 6 + 3 + 3 + 3 + 2 + 3 + 3) * 32)


def test_errors(rng):
    params = make_params(rng)
    with pytest.raises(ValueError, match="no fixed-point formats found"):
        sj.hard_quantize(params, optax.adam(1e-3).init(params))
    with pytest.raises(ValueError, match="no fixed-point formats found"):
        sj.hard_quantize(params, {"a": None})
    formats = sj.init_formats(params, 2)
    bad = jax.tree_util.tree_map(lambda x: x, params)
    bad["dense"]["bias"] = bad["dense"]["bias"].at[1].set(jnp.nan)
    with pytest.raises(ValueError, match="'dense/bias' contains NaN or inf"):
        sj.hard_quantize(bad, formats)
    with pytest.raises(ValueError, match="do not match the parameters' structure"):
        sj.hard_quantize({"dense": params["dense"]}, formats)
