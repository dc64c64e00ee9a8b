"""``symog``'s arguments are never silently assumed or ignored (issue 32).

Before: ``symog(bits, opt)`` without ``total_steps`` assumed a 1000-step run (a 200-step run
ended with most weights off the levels), and ``optax.inject_hyperparams(symog)`` listed ``bits``
as a hyperparameter whose change did nothing.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax
import pytest

import symog_jax as sj

PARAMS = {"dense": {"kernel": jnp.linspace(-1.0, 1.0, 32).reshape(8, 4), "bias": jnp.zeros(4)}}


@pytest.mark.parametrize("make", [lambda: sj.symog(2, optax.adam(1e-3)),
                                  lambda: sj.symog(2),
                                  lambda: sj.symog(bits=4, optimizer=optax.sgd(0.1))],
                         ids=["symog(bits, adam)", "symog(bits)", "symog(bits=4, sgd)"])
def test_default_pull_without_total_steps_is_a_one_line_error(make):
    with pytest.raises(ValueError, match=r"symog: total_steps is required for the default "
                                         r"pull") as e:
        make()
    assert "\n" not in str(e.value)


def test_total_steps_or_an_explicit_pull_or_strength_is_accepted():
    for tx in (sj.symog(2, optax.adam(1e-3), total_steps=200),
               sj.symog(2, optax.adam(1e-3), pull=0.1),
               sj.symog(2, optax.adam(1e-3), strength=1e-2)):
        assert sj.find_formats(tx.init(PARAMS))["dense"]["kernel"].bits == 2


def test_injected_bits_is_refused_and_static_bits_is_not_a_hyperparameter():
    with pytest.raises(TypeError, match=r"symog: bits must be an int .*static_args=\('bits',\)"):
        optax.inject_hyperparams(sj.symog)(bits=2, optimizer=optax.sgd(0.1),
                                           pull=0.5).init(PARAMS)
    with pytest.raises(TypeError, match="bits must be an int"):
        sj.symog(jnp.asarray(2), optax.sgd(0.1), pull=0.5)
    tx = optax.inject_hyperparams(sj.symog, static_args=("bits",))(
        bits=3, optimizer=optax.sgd(0.1), pull=0.5)
    state = tx.init(PARAMS)
    assert "bits" not in state.hyperparams and "pull" in state.hyperparams
    assert sj.find_formats(state)["dense"]["kernel"].bits == 3
