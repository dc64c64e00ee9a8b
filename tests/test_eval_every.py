"""``eval_every``: a run evaluates on the test split only every N epochs and after its last one.

Evaluating must not touch training: the same run with ``eval_every=1`` and ``eval_every=2``
ends with the same parameters, the same train losses and the same final test errors.
"""

from __future__ import annotations

import json
import re

import jax
import numpy as np
import pytest

from symog_jax.plots import error_curves
from symog_jax.training import TrainConfig, train
from symog_jax.training.config import config_from_file
from tests.test_training import _restore, synthetic_digits, tiny_config

TEST_KEYS = {"test_loss", "test_error_float", "test_error_quantized"}


@pytest.fixture(scope="module")
def dataset():
    return synthetic_digits(n_train=128, n_test=64)


def _records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_evaluates_every_nth_epoch_and_the_last_and_trains_the_same(tmp_path, dataset):
    every = train(tiny_config(tmp_path / "every", method="ste", epochs=3), dataset=dataset)
    sparse = train(tiny_config(tmp_path / "sparse", method="ste", epochs=3, eval_every=2),
                   dataset=dataset)
    dense_recs, sparse_recs = _records(tmp_path / "every"), _records(tmp_path / "sparse")
    assert [TEST_KEYS <= set(r) for r in dense_recs] == [True, True, True]
    assert [TEST_KEYS <= set(r) for r in sparse_recs] == [False, True, True]   # epochs 2, 3
    assert not TEST_KEYS & set(sparse_recs[0])
    assert "near_level_fraction" in sparse_recs[0]
    # the evaluations change nothing that training sees
    assert [r["train_loss"] for r in sparse_recs] == [r["train_loss"] for r in dense_recs]
    for key in TEST_KEYS:
        assert sparse_recs[1][key] == dense_recs[1][key]
    assert sparse["test_error_quantized"] == every["test_error_quantized"]
    assert sparse["test_error_float"] == every["test_error_float"]
    jax.tree.map(np.testing.assert_array_equal, _restore(tmp_path / "sparse")["params"],
                 _restore(tmp_path / "every")["params"])


def test_a_stopped_invocation_evaluates_its_last_epoch_and_resume_may_change_n(tmp_path,
                                                                               dataset):
    cfg = tiny_config(tmp_path, method="ste", epochs=3, eval_every=5)
    train(cfg.replace(stop_after_epochs=1), dataset=dataset)
    assert TEST_KEYS <= set(_records(tmp_path)[0])          # the newest checkpoint's error
    report = train(cfg.replace(eval_every=1), dataset=dataset, resume=True)
    assert [TEST_KEYS <= set(r) for r in _records(tmp_path)] == [True, True, True]
    assert report["test_error_quantized"] == _records(tmp_path)[-1]["test_error_quantized"]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_eval_every_is_one_line_naming_it(tmp_path, bad):
    with pytest.raises(ValueError, match=r"eval_every must be a positive integer") as e:
        tiny_config(tmp_path, eval_every=bad)
    assert "\n" not in str(e.value)


def test_a_run_config_written_before_eval_every_reads_as_1(tmp_path):
    cfg = tiny_config(tmp_path, method="ste", epochs=3, eval_every=4)
    sections = json.loads(cfg.to_json())
    assert sections["run"]["eval_every"] == 4
    del sections["run"]["eval_every"]
    (tmp_path / "config.json").write_text(json.dumps(sections))
    old = config_from_file(tmp_path / "config.json")
    assert isinstance(old, TrainConfig) and old.eval_every == 1
    assert old.replace(eval_every=4) == cfg


def test_error_curves_plot_the_evaluated_epochs_only():
    recs = [{"epoch": 1, "train_error": 0.5},
            {"epoch": 2, "train_error": 0.4, "test_error_float": 0.3,
             "test_error_quantized": 0.35},
            {"epoch": 3, "train_error": 0.3, "test_error_float": 0.2,
             "test_error_quantized": 0.25}]
    lines = {line.get_label(): line for line in error_curves(recs, near_level=False).axes[0].lines}
    np.testing.assert_array_equal(lines["test, hard-quantized"].get_xdata(), [2, 3])
    np.testing.assert_allclose(lines["test, hard-quantized"].get_ydata(), [35.0, 25.0])
    np.testing.assert_array_equal(lines["train (running mean over the epoch)"].get_xdata(),
                                  [1, 2, 3])


def test_epoch_lines_say_the_time_left_from_measured_epochs(tmp_path, dataset, capsys):
    train(tiny_config(tmp_path, method="ste", epochs=3), dataset=dataset)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("epoch ")]
    assert len(lines) == 3
    left = [re.search(r"\(([\d.]+)s; ~(\d+) s left\)$", ln) for ln in lines[:2]]
    assert all(left), lines
    # at least the remaining epochs' training time (rounded to whole seconds in the line)
    for match, epochs_after in zip(left, (2, 1)):
        assert int(match.group(2)) >= epochs_after * float(match.group(1)) - 1
    assert re.search(r"\([\d.]+s\)$", lines[2])        # nothing is left after the last
