"""Shared fixtures for the core numerical tests.

Kept minimal: nothing here changes global JAX or hypothesis settings. The numpy references
below are written independently of ``symog_jax`` (they do not call its rounding or step code)
so that the tests compare the library against ground truth, not against itself.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest


@pytest.fixture(params=[False, True], ids=["eager", "jit"])
def use_jit(request) -> bool:
    """Runs a test once without and once under ``jax.jit``."""
    return request.param


@pytest.fixture
def maybe_jit(use_jit):
    """``maybe_jit(fn, **jit_kwargs)``: ``jax.jit(fn)`` in the jit run, ``fn`` otherwise."""
    def wrap(fn, **kwargs):
        return jax.jit(fn, **kwargs) if use_jit else fn
    return wrap


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A numpy generator seeded from the test's name (stable across runs and xdist workers)."""
    seed = sum(ord(c) * (i + 1) for i, c in enumerate(request.node.nodeid)) % (2**32)
    return np.random.default_rng(seed)


def np_code_range(bits: int, kind: str) -> tuple[int, int]:
    """Hand definition of the code ranges: symmetric, two's complement, unsigned."""
    if kind == "symmetric":
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    if kind == "twos":
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if kind == "unsigned":
        return 0, 2**bits - 1
    raise ValueError(kind)


def np_step(frac_bits, ndim: int, channel_axis: int = -1) -> np.ndarray:
    """``2**-frac_bits`` in float64, shaped to broadcast against a rank-``ndim`` array."""
    fb = np.asarray(frac_bits, np.float64)
    step = 2.0 ** (-fb)
    if step.ndim == 1:
        shape = [1] * ndim
        shape[channel_axis % ndim] = step.shape[0]
        step = step.reshape(shape)
    return step


def np_nearest(x, bits: int, frac_bits, kind: str = "symmetric", channel_axis: int = -1):
    """Brute-force nearest level: ``argmin_k |x - k * step|`` over *all* codes, ties to even.

    Returns ``(values, codes)`` in float64 / int64. Distances are exact in float64 for the
    float32 inputs and power-of-two steps used in the tests, so exact ties are detected.
    """
    x = np.asarray(x, np.float64)
    lo, hi = np_code_range(bits, kind)
    codes = np.arange(lo, hi + 1, dtype=np.int64)
    step = np.broadcast_to(np_step(frac_bits, x.ndim, channel_axis), x.shape)
    levels = codes * step[..., None]                       # (..., K)
    dist = np.abs(x[..., None] - levels)
    is_min = dist == dist.min(axis=-1, keepdims=True)
    even = is_min & (codes % 2 == 0)
    idx = np.where(even.any(axis=-1), even.argmax(axis=-1), is_min.argmax(axis=-1))
    code = codes[idx]
    return code * step, code


@pytest.fixture
def nearest_np():
    """The brute-force nearest-level reference :func:`np_nearest`."""
    return np_nearest


@pytest.fixture
def code_range_np():
    """The hand-written code ranges :func:`np_code_range`."""
    return np_code_range


def fmt_kind(fmt) -> str:
    """``'symmetric'``, ``'twos'`` or ``'unsigned'`` for a ``FixedPointFormat``."""
    if not fmt.signed:
        return "unsigned"
    return "symmetric" if fmt.symmetric else "twos"


@pytest.fixture
def nearest_for_format():
    """``nearest_for_format(x, fmt)``: :func:`np_nearest` with ``fmt``'s parameters."""
    def nearest(x, fmt):
        return np_nearest(x, fmt.bits, np.asarray(fmt.frac_bits), fmt_kind(fmt),
                          fmt.channel_axis)
    return nearest


def _method_setup(model, method, params, run, prepare=None, act_formats=None):
    """``(state, step)``: a fresh TrainState for ``method`` on ``params`` with Adam 3e-3 over
    ``run``, and its jitted train step (``prepare``: default uint8 images scaled to [0, 1])."""
    import jax.numpy as jnp

    from symog_jax.training.steps import TrainState, base_optimizer, make_train_step
    if prepare is None:
        def prepare(rng, x, train):
            return x.astype(jnp.float32) / 255.0
    mvars = method.init_variables(params)
    trainable = {"params": params, "method": mvars}
    tx = method.transform(base_optimizer("adam", 3e-3, run.total_steps, momentum=0.9,
                                         weight_decay=0.0,
                                         decay_mask=method.decay_mask(trainable)), run)
    state = TrainState(step=jnp.zeros([], jnp.int32), params=params, method_vars=mvars,
                       batch_stats={}, opt_state=tx.init(trainable),
                       act_formats=act_formats or {}, rng=jax.random.PRNGKey(1))
    return state, make_train_step(model, tx, method, prepare)


@pytest.fixture
def method_setup():
    """:func:`_method_setup`: ``method_setup(model, method, params, run) -> (state, step)``."""
    return _method_setup
