"""HFP wraps any weight method as a config object: flags reach it, config.json round-trips."""

from __future__ import annotations

import json

import pytest

from experiments.cli import build_parser, config_from_args
from experiments.mnist import DEFAULTS
from symog_jax.methods.hfp import HFPConfig
from symog_jax.methods.ste import STEConfig
from symog_jax.methods.symog import SymogConfig
from symog_jax.training import TrainConfig


def _config(*flags):
    parser = build_parser("test", DEFAULTS, "")
    return config_from_args(parser.parse_args(list(flags)), DEFAULTS)


def test_bits_reach_the_inner_method_from_the_command_line():
    c = _config("--method", "hfp", "--bits", "2", "--prune-macs", "0.5", "--gate-lr", "0.1")
    assert isinstance(c.method_config, HFPConfig)
    assert isinstance(c.method_config.inner, SymogConfig) and c.method_config.inner.bits == 2
    assert (c.method_config.prune_macs, c.method_config.gate_lr) == (0.5, 0.1)
    assert c.describe().startswith("hfp-m50-symog-2bit")
    c = _config("--method", "hfp", "--inner-method", "ste", "--bits", "3", "--prune-macs", "0.4")
    assert isinstance(c.method_config.inner, STEConfig) and c.method_config.inner.bits == 3


def test_flags_of_no_method_in_play_are_refused():
    with pytest.raises(ValueError, match="--gate-lr is not a parameter of method 'ste'"):
        _config("--method", "ste", "--gate-lr", "0.1")
    with pytest.raises(ValueError, match="--groups is not a parameter of method 'hfp'"):
        _config("--method", "hfp", "--prune-macs", "0.5", "--groups", "2")


def test_the_inner_config_round_trips_through_config_json():
    hfp = HFPConfig(prune_params=0.3, inner_method="ste", inner={"bits": 3})
    c = TrainConfig(method="hfp", method_config=hfp, epochs=1, workdir="x")
    d = json.loads(c.to_json())
    assert d["method"]["inner"]["bits"] == 3 and d["method"]["inner_method"] == "ste"
    back = TrainConfig.from_dict(d)
    assert back.method_config == hfp and isinstance(back.method_config.inner, STEConfig)


def test_a_wrong_inner_config_is_a_one_line_error():
    with pytest.raises(ValueError, match="inner 'ste'.*bits must be in") as e:
        HFPConfig(prune_macs=0.5, inner_method="ste", inner={"bits": 99})
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="inner must be a STEConfig"):
        HFPConfig(prune_macs=0.5, inner_method="ste", inner=SymogConfig())
