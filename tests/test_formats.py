"""FixedPointFormat: levels, derived quantities, identity, pytree/jit behaviour, bad input."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symog_jax import (
    MAX_BITS,
    FixedPointFormat,
    code_range,
    quantize,
    symmetric_format,
    twos_complement_format,
    unsigned_format,
)

MAKERS = {"symmetric": symmetric_format, "twos": twos_complement_format,
          "unsigned": unsigned_format}


# --------------------------------------------------------------------------------------------
# Levels and derived quantities, against hand-computed values
# --------------------------------------------------------------------------------------------

def test_two_bit_symmetric_is_minus_step_zero_step():
    for fb, step in [(0, 1.0), (1, 0.5), (3, 0.125), (-2, 4.0)]:
        fmt = FixedPointFormat(bits=2, frac_bits=fb)
        assert fmt.levels.tolist() == [-step, 0.0, step]
        assert fmt.step == step
        assert fmt.num_levels == 3
        assert (fmt.code_min, fmt.code_max) == (-1, 1)
        assert fmt.range == (-step, step)


@pytest.mark.parametrize("bits,fb,levels", [
    (3, 2, [-0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75]),
    (3, 0, [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0]),
    (3, -1, [-6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0]),
])
def test_symmetric_levels_by_hand(bits, fb, levels):
    fmt = symmetric_format(bits, fb)
    assert fmt.levels.tolist() == levels
    assert fmt.levels.dtype == np.float32


def test_twos_complement_and_unsigned_levels_by_hand():
    assert twos_complement_format(2, 0).levels.tolist() == [-2.0, -1.0, 0.0, 1.0]
    assert twos_complement_format(3, 1).levels.tolist() == [
        -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5]
    assert unsigned_format(2, 1).levels.tolist() == [0.0, 0.5, 1.0, 1.5]
    assert unsigned_format(1, -3).levels.tolist() == [0.0, 8.0]
    assert twos_complement_format(1, 0).levels.tolist() == [-1.0, 0.0]


@pytest.mark.parametrize("kind,bits", [(k, b) for k in ("symmetric", "twos", "unsigned")
                                       for b in (1, 2, 3, 5, 8, 12, 16)
                                       if (k, b) != ("symmetric", 1)])   # invalid, tested below
@pytest.mark.parametrize("fb", [-7, -1, 0, 1, 4, 13])
def test_derived_quantities(kind, bits, fb, code_range_np):
    fmt = MAKERS[kind](bits, fb)
    lo, hi = code_range_np(bits, kind)
    step = 2.0 ** -fb
    assert (fmt.code_min, fmt.code_max) == (lo, hi)
    assert code_range(bits, signed=kind != "unsigned", symmetric=kind == "symmetric") == (lo, hi)
    assert fmt.num_levels == {"symmetric": 2**bits - 1, "twos": 2**bits, "unsigned": 2**bits}[kind]
    assert fmt.step == step and isinstance(fmt.step, float)
    assert fmt.min_value == lo * step and fmt.max_value == hi * step
    assert fmt.bits_used == bits
    # int_bits: bits left of the binary point (no sign); max_value + step == 2**int_bits.
    assert fmt.int_bits == bits - (kind != "unsigned") - fb
    assert fmt.max_value + step == 2.0**fmt.int_bits
    np.testing.assert_array_equal(fmt.codes(), np.arange(lo, hi + 1))
    assert fmt.codes().dtype == np.int32
    if bits <= 12:
        levels = fmt.levels
        assert levels.shape == (fmt.num_levels,)
        np.testing.assert_array_equal(levels, np.arange(lo, hi + 1, dtype=np.float64) * step)
        assert np.all(np.diff(levels) == step)
        if kind == "symmetric":
            np.testing.assert_array_equal(levels, -levels[::-1])


def test_negative_frac_bits_gives_step_above_one():
    fmt = FixedPointFormat(bits=4, frac_bits=-3)
    assert fmt.step == 8.0
    assert fmt.max_value == 56.0 and fmt.min_value == -56.0
    assert fmt.int_bits == 6                          # 56 < 2**6
    np.testing.assert_array_equal(quantize(jnp.array([13.0, -21.0, 100.0]), fmt),
                                  [16.0, -24.0, 56.0])


def test_max_bits_is_exact_in_float32():
    fmt = FixedPointFormat(MAX_BITS, 0)
    assert fmt.code_max == 2 ** (MAX_BITS - 1) - 1
    assert float(np.float32(fmt.code_max)) == fmt.code_max
    # float32 spacing is 0.5 just below 2**23: code_max - 0.5 is a tie, rounded to even.
    x = jnp.array([fmt.code_max, fmt.code_max - 0.5, 2.0**23, -(2.0**24)], jnp.float32)
    np.testing.assert_array_equal(quantize(x, fmt), [fmt.code_max, fmt.code_max - 1,
                                                     fmt.code_max, -fmt.code_max])


def test_per_channel_tuple_frac_bits():
    fmt = FixedPointFormat(bits=2, frac_bits=(0, 1, -1))
    assert fmt.per_channel
    assert fmt.frac_bits == (0, 1, -1)
    np.testing.assert_array_equal(fmt.step, [1.0, 0.5, 2.0])
    assert fmt.step.dtype == np.float32
    np.testing.assert_array_equal(fmt.levels, [[-1.0, -0.5, -2.0], [0, 0, 0], [1.0, 0.5, 2.0]])
    np.testing.assert_array_equal(fmt.max_value, [1.0, 0.5, 2.0])
    np.testing.assert_array_equal(fmt.int_bits, [1, 0, 2])
    assert fmt.step_for(3).shape == (1, 1, 3)
    fmt0 = FixedPointFormat(bits=2, frac_bits=[0, 1, -1], channel_axis=0)
    assert fmt0.step_for(3).shape == (3, 1, 1)
    # Arrays are normalized to tuples, so the format stays hashable.
    assert FixedPointFormat(2, np.array([0, 1, -1])) == fmt
    assert hash(FixedPointFormat(2, jnp.array([0, 1, -1]))) == hash(fmt)
    assert not FixedPointFormat(2, 3).per_channel


# --------------------------------------------------------------------------------------------
# Identity: equality, hashing, jit static argument
# --------------------------------------------------------------------------------------------

def test_equality_and_hash():
    a = FixedPointFormat(3, 1)
    same = [FixedPointFormat(3, np.int64(1)), FixedPointFormat(np.int32(3), jnp.array(1)),
            FixedPointFormat(3, 1.0), symmetric_format(3, 1)]
    for b in same:
        assert a == b and hash(a) == hash(b)
    different = [FixedPointFormat(4, 1), FixedPointFormat(3, 2), twos_complement_format(3, 1),
                 unsigned_format(3, 1), FixedPointFormat(3, (1, 1)),
                 FixedPointFormat(3, (1, 1), channel_axis=0)]
    for b in different:
        assert a != b
    assert FixedPointFormat(3, (1, 1)) != FixedPointFormat(3, (1, 1), channel_axis=0)
    assert len({a, *same, *different}) == 1 + len(different)
    assert a != "FixedPointFormat(bits=3, frac_bits=1, symmetric)"
    assert "bits=3" in repr(a) and "symmetric" in repr(a)


def test_frozen():
    fmt = FixedPointFormat(3, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fmt.bits = 4


def test_replace():
    fmt = FixedPointFormat(3, 1)
    assert fmt.replace(frac_bits=2) == FixedPointFormat(3, 2)
    assert fmt.replace(bits=5).num_levels == 31
    with pytest.raises(ValueError, match="too large"):
        fmt.replace(bits=MAX_BITS + 1)


def test_static_argument_of_jit():
    traces = []

    def f(x, fmt):
        traces.append(fmt)
        assert isinstance(fmt.frac_bits, int)        # static: concrete inside the trace
        return quantize(x, fmt)

    jf = jax.jit(f, static_argnames="fmt")
    x = jnp.array([0.3, -0.8, 2.6], jnp.float32)
    np.testing.assert_array_equal(jf(x, fmt=FixedPointFormat(2, 1)), [0.5, -0.5, 0.5])
    # An equal but distinct object reuses the compiled function.
    np.testing.assert_array_equal(jf(x, fmt=FixedPointFormat(2, np.int64(1))), [0.5, -0.5, 0.5])
    assert len(traces) == 1
    np.testing.assert_array_equal(jf(x, fmt=FixedPointFormat(2, 0)), [0.0, -1.0, 1.0])
    np.testing.assert_array_equal(jf(x, fmt=FixedPointFormat(3, 0)), [0.0, -1.0, 3.0])
    assert len(traces) == 3


# --------------------------------------------------------------------------------------------
# Pytree: frac_bits is the only leaf (traced under jit), the rest is static
# --------------------------------------------------------------------------------------------

def test_pytree_structure():
    a, b = FixedPointFormat(3, 1), FixedPointFormat(3, -4)
    leaves = jax.tree_util.tree_leaves(a)
    assert len(leaves) == 1 and np.asarray(leaves[0]).dtype == np.int32 and leaves[0] == 1
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    assert jax.tree_util.tree_structure(a) != jax.tree_util.tree_structure(FixedPointFormat(4, 1))
    assert jax.tree_util.tree_structure(a) != jax.tree_util.tree_structure(unsigned_format(3, 1))
    # Per-channel frac_bits: one int32 vector leaf, not one leaf per channel.
    pc = FixedPointFormat(3, (1, 2, 3))
    (leaf,) = jax.tree_util.tree_leaves(pc)
    np.testing.assert_array_equal(leaf, [1, 2, 3])
    assert np.asarray(leaf).dtype == np.int32
    # Round trip through tree_map keeps the format equal.
    for fmt in (a, pc):
        assert jax.tree_util.tree_map(lambda v: v, fmt) == fmt
        assert jax.tree_util.tree_map(jnp.asarray, fmt) == fmt


def test_pytree_argument_of_jit_traces_frac_bits_only():
    traces = []

    @jax.jit
    def f(fmt, x):
        traces.append(fmt.bits)
        assert isinstance(fmt.frac_bits, jax.core.Tracer)
        assert isinstance(fmt.bits, int) and isinstance(fmt.signed, bool)
        return quantize(x, fmt), fmt.step, fmt.max_value, fmt

    x = jnp.array([0.3, -0.8, 2.6, 7.0], jnp.float32)
    for fb, expected in [(1, [0.5, -1.0, 1.5, 1.5]), (0, [0.0, -1.0, 3.0, 3.0]),
                         (-1, [0.0, 0.0, 2.0, 6.0])]:
        q, step, top, out_fmt = f(FixedPointFormat(3, fb), x)
        np.testing.assert_array_equal(q, expected)
        assert float(step) == 2.0**-fb and float(top) == 3 * 2.0**-fb
        assert out_fmt == FixedPointFormat(3, fb)           # returned from jit, still equal
    assert len(traces) == 1                                   # frac_bits changes: no retrace
    f(FixedPointFormat(4, 0), x)
    f(twos_complement_format(3, 0), x)
    assert len(traces) == 3                                   # static parts: retrace


def test_per_channel_format_as_jit_pytree_argument():
    traces = []

    @jax.jit
    def f(fmt, x):
        traces.append(1)
        return quantize(x, fmt)

    x = jnp.array([[0.3, 0.3, 0.3], [-0.8, -0.8, -0.8]], jnp.float32)
    np.testing.assert_array_equal(f(FixedPointFormat(2, (0, 1, 2)), x),
                                  [[0.0, 0.5, 0.25], [-1.0, -0.5, -0.25]])
    np.testing.assert_array_equal(f(FixedPointFormat(2, (1, 1, -1)), x),
                                  [[0.5, 0.5, 0.0], [-0.5, -0.5, 0.0]])
    assert len(traces) == 1


def test_vmap_over_frac_bits():
    fmt = FixedPointFormat(2, 0).replace_frac_bits(jnp.array([0, 1, 2], jnp.int32))
    x = jnp.array([0.3, 0.3, 0.3])
    q = jax.vmap(lambda f, v: quantize(v, f))(fmt, x)
    np.testing.assert_array_equal(q, [0.0, 0.5, 0.25])


# --------------------------------------------------------------------------------------------
# Bad input: clear errors
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [2.5, "2", True, False, 2.0, None, np.float32(3)])
def test_non_integer_bits_is_type_error(bits):
    with pytest.raises(TypeError, match="bits must be an integer"):
        FixedPointFormat(bits, 0)
    with pytest.raises(TypeError, match="bits must be an integer"):
        code_range(bits)


@pytest.mark.parametrize("bits", [0, -1, -8])
@pytest.mark.parametrize("kind", ["symmetric", "twos", "unsigned"])
def test_bits_below_one(bits, kind):
    with pytest.raises(ValueError, match=f"bits={bits} is too small"):
        MAKERS[kind](bits, 0)


def test_one_bit_symmetric_is_rejected():
    with pytest.raises(ValueError, match=r"bits=1 is too small.*symmetric"):
        FixedPointFormat(1, 0)
    with pytest.raises(ValueError, match="only the level 0"):
        code_range(1)


@pytest.mark.parametrize("kind", ["symmetric", "twos", "unsigned"])
def test_bits_too_large(kind):
    with pytest.raises(ValueError, match=f"bits={MAX_BITS + 1} is too large"):
        MAKERS[kind](MAX_BITS + 1, 0)
    with pytest.raises(ValueError, match="too large"):
        MAKERS[kind](64, 0)


@pytest.mark.parametrize("frac_bits", [0.5, 2.5, [1, 1.5], float("nan"), float("inf")])
def test_non_integer_frac_bits(frac_bits):
    with pytest.raises(TypeError, match="frac_bits must hold integers"):
        FixedPointFormat(3, frac_bits)


@pytest.mark.parametrize("frac_bits", ["2", True, None, object()])
def test_frac_bits_of_wrong_type(frac_bits):
    with pytest.raises(TypeError, match="frac_bits must be an integer"):
        FixedPointFormat(3, frac_bits)


def test_frac_bits_bad_shape_or_magnitude():
    with pytest.raises(ValueError, match=r"1-D per-channel.*shape \(2, 2\)"):
        FixedPointFormat(3, [[1, 2], [3, 4]])
    with pytest.raises(ValueError, match=r"\|frac_bits\| must be <= 100"):
        FixedPointFormat(3, 101)
    with pytest.raises(ValueError, match=r"\|frac_bits\| must be <= 100"):
        FixedPointFormat(3, (0, -200))
    FixedPointFormat(3, -100)  # the limit itself is fine


def test_per_channel_mismatch_is_clear():
    fmt = FixedPointFormat(2, (0, 1, 2))
    with pytest.raises(ValueError, match=r"3 channels but the array has shape \(2, 4\)"):
        quantize(jnp.zeros((2, 4)), fmt)
    with pytest.raises(ValueError, match="scalar"):
        quantize(jnp.float32(1.0), fmt)
    with pytest.raises(TypeError, match="fmt must be a FixedPointFormat"):
        quantize(jnp.zeros(3), 3)
