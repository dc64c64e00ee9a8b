"""symog_jax.pipelines and the layering around it: the trainer returns its report and draws
nothing (the pipeline draws ``--plots``), figures come from plain data, the allocation study
refuses impossible settings before any work (the layer rules: tests/test_layering.py)."""

from __future__ import annotations

import numpy as np
import pytest

from symog_jax.pipelines.allocation_study import StudySettings, compare


def test_study_settings_refuse_impossible_rows_before_work():
    with pytest.raises(ValueError, match="budget 1.5 bits per weight is below --min-bits 2"):
        StudySettings(budgets=(1.5,)).check()
    with pytest.raises(ValueError, match="--equal-bits 20 is outside 2..16"):
        StudySettings(equal_bits=(20,), allocate_activations=True).check()
    StudySettings(equal_bits=(20,)).check()       # weights only: up to 24 bits


def test_compare_by_hand():
    # equal rows 2..4 bits at 100 bits per bit; the optimized row (250 bits, error 2 %) is as
    # good as the 3-bit row (300 bits, 2.05 % within 0.1 points) -> 1 - 250/300 smaller
    rows = [{"kind": "equal", "label": f"{b}b", "weight_memory_bits": 100 * b, "e": e}
            for b, e in [(2, 0.08), (3, 0.0205), (4, 0.019)]]
    rows.append({"kind": "optimized", "label": "opt", "weight_memory_bits": 250, "e": 0.02})
    (c,) = compare(rows, "e", 0.001)
    assert c["equal_row"] == "3b" and c["smaller_by"] == pytest.approx(1 - 250 / 300)


def test_run_figures_from_plain_data():
    pytest.importorskip("matplotlib")
    from symog_jax import plots
    metrics = [{"epoch": e, "test_error_float": 0.1 / e, "test_error_quantized": 0.2 / e}
               for e in (1, 2)]
    report = {"layers": [{"path": "params/conv1/kernel", "shape": [3, 3, 1, 4],
                          "kept_channels": 2}]}
    figs = plots.run_figures(metrics, report, None, tag="r")
    # no weights given: no histograms; pruning information: kept channels
    assert list(figs) == ["error_curves.png", "kept_channels.png"]
    assert plots.run_figures([], None, {"conv1/kernel": np.zeros((3, 3, 1, 4))}) == {}


@pytest.mark.e2e
def test_the_trainer_draws_nothing_and_the_pipeline_draws_plots(tmp_path):
    pytest.importorskip("matplotlib")
    from symog_jax.data import load_bundled_mnist5k
    from symog_jax.pipelines import train_run
    from symog_jax.training import TrainConfig, train
    ds = load_bundled_mnist5k(test_size=100)
    config = TrainConfig(dataset="mnist", model="lenet5", method="ste",
                         method_config={"bits": 2}, epochs=1, batch_size=64, optimizer="adam",
                         lr=1e-3, weight_decay=0.0, width=0.125, max_train_examples=128,
                         data_source="bundled", allow_bundled=True, progress=False, plots=True,
                         workdir=str(tmp_path / "trainer"))
    report = train(config, dataset=ds)
    assert "test_error_quantized" in report
    assert not list((tmp_path / "trainer").glob("*.png"))
    train_run(config.replace(workdir=str(tmp_path / "pipeline")), dataset=ds)
    assert sorted(p.name for p in (tmp_path / "pipeline").glob("*.png")) == [
        "error_curves.png", "weight_histograms.png"]
