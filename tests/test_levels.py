"""The levels interface (``symog_jax.numerics.levels``): a contract test over every registered
kind, hand-computed cases per kind, and the registry.

Ground truths: the contract's own statements checked by brute force (codes on a fine grid of
inputs, exact ``code * step`` products), codes computed by hand, and, for SYQ and GDRQ, the
training-time quantizers ``syq_codes`` / ``gdrq_codes`` (separate code paths).
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import symog_jax as sj
from symog_jax.numerics import levels
from symog_jax.numerics.formats import FixedPointFormat
from symog_jax.numerics.levels import Levels, RecordNeedsArrays, from_record, kinds
from symog_jax.quantizers.gdrq import GDRQFormat, gdrq_codes, group_assignment, group_clip
from symog_jax.quantizers.scaled import ScaledFormat
from symog_jax.quantizers.syq import SYQFormat, syq_codes, syq_threshold

EXAMPLES = [pytest.param(kind, i, id=f"{kind}-{i}")
            for kind, cls in kinds().items() for i in range(len(cls.examples()))]


def _example(kind, i):
    return kinds()[kind].examples()[i]


def _step(fmt, shape):
    return np.broadcast_to(np.asarray(fmt.step_for(len(shape)), np.float32), shape)


def _inputs(fmt, shape, seed=0):
    """Random values from beyond the most negative to beyond the largest level, per element."""
    top = max(abs(fmt.code_min), abs(fmt.code_max)) + 1.5
    u = np.random.default_rng(seed).uniform(-top, top, shape).astype(np.float32)
    return jnp.asarray(u * _step(fmt, shape))


def test_every_kind_is_registered_with_examples():
    assert set(kinds()) >= {"fixed_point", "syq", "gdrq", "scaled"}
    assert all(cls.kind == kind and cls.examples() for kind, cls in kinds().items())


@pytest.mark.parametrize("kind, i", EXAMPLES)
def test_contract_codes_values_record(kind, i):
    fmt, shape = _example(kind, i)
    assert isinstance(fmt, Levels) and fmt.kind == kind
    assert isinstance(fmt.bits, int) and int(fmt.code_min) <= int(fmt.code_max)
    assert isinstance(fmt.label(), str) and fmt.label()
    assert isinstance(fmt.overhead_bits, int) and fmt.overhead_bits >= 0
    x = _inputs(fmt, shape)
    codes = np.asarray(fmt.to_codes(x))
    assert codes.dtype == np.int32 and codes.shape == shape
    assert fmt.code_min <= codes.min() and codes.max() <= fmt.code_max
    assert set(np.unique(codes)) <= set(fmt.code_levels().tolist())
    q = np.asarray(fmt.quantize(x))
    assert q.dtype == np.float32
    np.testing.assert_array_equal(q, codes.astype(np.float32) * _step(fmt, shape))
    np.testing.assert_array_equal(np.asarray(fmt.quantize(jnp.asarray(q))), q)   # idempotent
    # the record survives JSON, and with the arrays gives an equal format with equal codes
    record = json.loads(json.dumps(fmt.to_record()))
    assert record["kind"] == kind
    again = from_record(record, fmt.to_arrays(len(shape)))
    assert type(again) is type(fmt) and again == fmt and hash(again) == hash(fmt)
    np.testing.assert_array_equal(np.asarray(again.to_codes(x)), codes)


@pytest.mark.parametrize("kind, i", EXAMPLES)
def test_contract_under_jit(kind, i):
    fmt, shape = _example(kind, i)
    x = _inputs(fmt, shape, seed=1)
    np.testing.assert_array_equal(np.asarray(jax.jit(fmt.to_codes)(x)),
                                  np.asarray(fmt.to_codes(x)))
    np.testing.assert_array_equal(np.asarray(jax.jit(fmt.quantize)(x)),
                                  np.asarray(fmt.quantize(x)))


@pytest.mark.parametrize("kind, i", EXAMPLES)
def test_contract_levels_by_brute_force(kind, i):
    """On a fine grid through the whole range, every element reaches exactly the code levels,
    and the values are exactly ``value_levels()`` where the format has one step."""
    fmt, shape = _example(kind, i)
    top = max(abs(fmt.code_min), abs(fmt.code_max)) + 1.5
    grid = jnp.linspace(-top, top, 1201, dtype=jnp.float32)
    step = jnp.asarray(_step(fmt, shape))
    codes = np.asarray(jax.vmap(lambda g: fmt.to_codes(g * step))(grid))
    values = np.asarray(jax.vmap(lambda g: fmt.quantize(g * step))(grid))
    expected = fmt.code_levels().tolist()
    assert expected == sorted(expected)
    for element in np.ndindex(*shape):
        assert np.unique(codes[(slice(None), *element)]).tolist() == expected, element
    value_levels = fmt.value_levels()
    if value_levels is not None:
        np.testing.assert_array_equal(np.unique(values.astype(np.float64)), value_levels)


@pytest.mark.parametrize("kind, i", EXAMPLES)
def test_hard_quantize_takes_every_kind(kind, i):
    fmt, shape = _example(kind, i)
    x = _inputs(fmt, shape, seed=2)
    params = {"layer": {"kernel": x, "bias": jnp.ones(3)}}
    hq = sj.hard_quantize(params, {"layer": {"kernel": fmt, "bias": None}})
    np.testing.assert_array_equal(np.asarray(hq.params["layer"]["kernel"]),
                                  np.asarray(fmt.quantize(x)))
    np.testing.assert_array_equal(np.asarray(hq.codes["layer"]["kernel"]),
                                  np.asarray(fmt.to_codes(x)))
    assert hq.codes["layer"]["bias"] is None and hq.params["layer"]["bias"] is params[
        "layer"]["bias"]
    (r,) = hq.report
    assert r.path == "layer/kernel" and json.loads(json.dumps(r.as_dict()))["kind"] == kind
    n = int(np.prod(shape))
    assert hq.weight_bits() == (fmt.bits * n + fmt.overhead_bits + 3 * 32, (n + 3) * 32)
    assert 0.0 <= r.near_level_fraction <= 1.0 and fmt.label() in hq.summary()


# -- hand-computed cases ---------------------------------------------------------------------

def _codes_values(fmt, x):
    x = jnp.asarray(x, jnp.float32)
    return np.asarray(fmt.to_codes(x)).tolist(), np.asarray(fmt.quantize(x)).tolist()


def test_fixed_point_by_hand():
    # step 0.5, codes -1..1: -2 -> -1 (saturated), -0.6 -> -1, 0.4 -> 0, 1.48 -> 1
    assert _codes_values(FixedPointFormat(2, 1), [-1.0, -0.3, 0.2, 0.74]) == (
        [-1, -1, 0, 1], [-0.5, -0.5, 0.0, 0.5])
    # two's complement 2 bits, step 1, codes -2..1: -3 -> -2, -1.5 -> -2 (half to even),
    # 0.5 -> 0 (half to even), 1.5 -> 2 -> 1 (saturated)
    assert _codes_values(FixedPointFormat(2, 0, symmetric=False), [-3.0, -1.5, 0.5, 1.5])[0] \
        == [-2, -2, 0, 1]
    # per channel (last axis) steps 0.5 and 0.25, 3 bits symmetric (codes -3..3):
    # 0.6 -> 1, 1.2 -> 1, -4 -> -3, 2.4 -> 2
    assert _codes_values(FixedPointFormat(3, (1, 2)), [[0.3, 0.3], [-2.0, 0.6]]) == (
        [[1, 1], [-3, 2]], [[0.5, 0.25], [-1.5, 0.5]])
    assert FixedPointFormat(3, (1, 2)).value_levels() is None
    assert FixedPointFormat(2, 1, signed=False).value_levels().tolist() == [0, 0.5, 1.0, 1.5]
    assert FixedPointFormat(3, (1, -2)).label() == "-2..1"


def test_syq_by_hand():
    ternary = SYQFormat(2, np.array([[0.5, 2.0]], np.float32), 0.25, "channel")
    # |0.25| is not above the threshold 0.25: code 0
    assert _codes_values(ternary, [[0.2, -1.0], [0.3, 0.25]]) == (
        [[0, -1], [1, 0]], [[0.0, -2.0], [0.5, 0.0]])
    binary = SYQFormat(1, np.array([[0.5, 1.0]], np.float32), 0.0, "channel")
    # binary: sign(0) = +1, also for -0.0
    assert _codes_values(binary, [[0.0, -0.3], [-0.0, -2.0]]) == (
        [[1, -1], [1, -1]], [[0.5, -1.0], [0.5, -1.0]])
    assert binary.code_levels().tolist() == [-1, 1]
    assert SYQFormat(1, np.array([[0.5]], np.float32), 0.0, "layer").value_levels().tolist() \
        == [-0.5, 0.5]
    assert binary.value_levels() is None and binary.overhead_bits == 64


def test_gdrq_by_hand():
    # 3 bits (n = 3), clips 0.75 and 3 -> steps 0.25 and 1; 1.2 -> 1, -0.5 -> 0 (half to even),
    # 2.5 -> 2 (half to even), -7 -> -3 (clipped); values with the scales 0.25, 0.25, 1, 1
    fmt = GDRQFormat(3, np.array([0.25, 0.25, 1.0, 1.0], np.float32), np.array([0, 0, 1, 1]), 2,
                     "contiguous", np.array([0.75, 3.0], np.float32))
    assert _codes_values(fmt, [[0.3, -0.125, 2.5, -7.0]]) == (
        [[1, 0, 2, -3]], [[0.25, 0.0, 2.0, -3.0]])
    # in units of the steps: |1.2 - 1|, |-0.5 - 0|, |2.5 - 2|, and -7 clipped to -3 is on -3
    near, worst = fmt.rounding_stats(jnp.array([[0.3, -0.125, 2.5, -7.0]]))
    assert near == 0.5 and worst == pytest.approx(4.0)
    assert fmt.code_levels().tolist() == [-3, -2, -1, 0, 1, 2, 3]


def test_scaled_by_hand():
    fmt = ScaledFormat(3, -3, 3, np.array([0.5, 2.0], np.float32))
    # 1.4 -> 1, -1.55 -> -2, 10 -> 3 (clipped), 0.45 -> 0
    assert _codes_values(fmt, [[0.7, -3.1], [5.0, 0.9]]) == (
        [[1, -2], [3, 0]], [[0.5, -4.0], [1.5, 0.0]])
    assert ScaledFormat(4, 0, 15, np.array(0.25, np.float32)).value_levels().tolist() == [
        0.25 * k for k in range(16)]


def test_not_idempotent_where_a_level_leaves_its_cell():
    """The stated limit of the contract: GDRQ with a learned scale far from the clip's step
    (here 2x) maps a level to another code."""
    fmt = GDRQFormat(3, np.array([2.0], np.float32), np.array([0]), 1, "contiguous",
                     np.array([3.0], np.float32))
    q = fmt.quantize(jnp.array([[1.0]]))            # code 1 -> value 2.0
    assert float(q[0, 0]) == 2.0 and int(fmt.to_codes(q)[0, 0]) == 2


# -- the training-time quantizers agree with the formats -------------------------------------

@pytest.mark.parametrize("eta", [0.0, 0.05, 0.3])
def test_syq_format_codes_equal_syq_codes(eta):
    w = jnp.asarray(np.random.default_rng(3).normal(size=(3, 3, 4, 5)), jnp.float32)
    w = w.at[0, 0, 0, 0].set(0.0)
    fmt = SYQFormat(1 if eta == 0 else 2, np.ones((3, 3, 1, 1), np.float32),
                    float(syq_threshold(w, eta)), "pixel")
    np.testing.assert_array_equal(np.asarray(fmt.to_codes(w)),
                                  np.asarray(syq_codes(w, eta, dtype=jnp.int32)))


@pytest.mark.parametrize("bits, groups, grouping, scale_clip",
                         [(2, 2, "contiguous", True), (4, 4, "norm", True),
                          (3, 1, "contiguous", False)])
def test_gdrq_format_codes_equal_gdrq_codes(bits, groups, grouping, scale_clip):
    w = jnp.asarray(np.random.default_rng(4).laplace(size=(3, 3, 4, 8)), jnp.float32)
    group_of = group_assignment(w, groups, grouping)
    clip = group_clip(w, group_of, groups, 2.0, scale_clip)
    fmt = GDRQFormat(bits, np.ones(8, np.float32), np.asarray(group_of), groups, grouping,
                     np.asarray(clip, np.float32))
    np.testing.assert_array_equal(
        np.asarray(fmt.to_codes(w)),
        np.asarray(gdrq_codes(w, bits, groups, 2.0, scale_clip, grouping)))


# -- records and the registry ----------------------------------------------------------------

def test_records_without_arrays_or_newer_keys():
    # an older report record (no channel_axis) is fixed point, channel axis -1
    assert from_record({"kind": "fixed_point", "bits": 3, "frac_bits": [1, 2], "signed": True,
                        "symmetric": True}) == FixedPointFormat(3, (1, 2))
    # SYQ: one scale is in the record; several need the step array
    one = {"kind": "syq", "bits": 2, "granularity": "layer", "threshold": 0.1,
           "num_scales": 1, "scale_min": 0.5, "scale_max": 0.5}
    assert from_record(one).value_levels().tolist() == [-0.5, 0.0, 0.5]
    with pytest.raises(RecordNeedsArrays, match="needs its 'step' array"):
        from_record({**one, "num_scales": 4})
    # GDRQ: the record alone rebuilds the format
    fmt, shape = GDRQFormat.examples()[1]
    assert from_record(json.loads(json.dumps(fmt.to_record()))) == fmt
    with pytest.raises(RecordNeedsArrays):
        from_record({"kind": "scaled", "bits": 2, "code_min": -1, "code_max": 1})


def test_unknown_kind_refused_or_read_as_scaled():
    record = {"kind": "lloyd", "bits": 2, "code_min": -1, "code_max": 1, "centroids": 3}
    with pytest.raises(ValueError, match="unknown kind of levels 'lloyd'; registered kinds: "):
        from_record(record, {"step": np.ones(2, np.float32)})
    with pytest.raises(ValueError, match="needs a 'kind' key"):
        from_record({"bits": 2})
    fmt = from_record(record, {"step": np.full(2, 0.5, np.float32)}, unknown_as="scaled")
    assert isinstance(fmt, ScaledFormat) and fmt.to_record() == record   # written back as is
    assert fmt.label() == "lloydx2"


def test_a_new_kind_is_one_class_that_registers_itself(monkeypatch):
    monkeypatch.setattr(levels, "_KINDS", dict(levels._KINDS))

    @dataclasses.dataclass(frozen=True, eq=False)
    class PowerOfTwoScale(Levels):
        kind = "test_pow2"
        exponent: int
        bits = 2
        code_min = -1
        code_max = 1
        overhead_bits = 0

        def step_for(self, x_ndim, dtype=jnp.float32):
            return jnp.asarray(2.0 ** self.exponent, dtype)

        def to_codes(self, x):
            return jnp.clip(jnp.round(jnp.asarray(x) / 2.0 ** self.exponent), -1, 1).astype(
                jnp.int32)

        def label(self):
            return f"2^{self.exponent}"

        def to_record(self):
            return {"kind": self.kind, "exponent": self.exponent}

        @classmethod
        def from_record(cls, record, arrays=None):
            return cls(int(record["exponent"]))

        @classmethod
        def examples(cls):
            return [(cls(-1), (2, 2))]

    assert kinds()["test_pow2"] is PowerOfTwoScale
    fmt = from_record({"kind": "test_pow2", "exponent": -2})
    assert fmt == PowerOfTwoScale(-2) and fmt.value_levels().tolist() == [-0.25, 0.0, 0.25]
    assert np.asarray(fmt.quantize(jnp.array([0.3, -0.1]))).tolist() == [0.25, -0.0]
    with pytest.raises(ValueError, match="'test_pow2' is already registered"):
        type("Again", (PowerOfTwoScale,), {"kind": "test_pow2"})
    with pytest.raises(TypeError, match="kind must be a non-empty string"):
        type("Bad", (PowerOfTwoScale,), {"kind": ""})
