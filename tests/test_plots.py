"""symog_jax.plots: figures from plain data have the promised axes, labels and artists; a run
directory's PNGs are written (small trained run: error curves, weight histograms with the
levels of its report, kept-channels bars when the report has pruning information)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from symog_jax import plots  # noqa: E402
from symog_jax.pipelines import figures  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _legend_texts(ax) -> list[str]:
    legend = ax.get_legend()
    return [] if legend is None else [t.get_text() for t in legend.get_texts()]


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.e2e
def test_import_does_not_need_matplotlib():
    code = ("import sys; sys.modules['matplotlib'] = None; import symog_jax, symog_jax.plots; "
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
    code = ("import sys; sys.modules['matplotlib'] = None; import symog_jax.plots as p; "
            "p.new_figure()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode != 0 and "pip install" in out.stderr


def test_weight_histogram_marks_every_level(rng):
    fig = plots.weight_histogram(rng.normal(0, 0.1, 500), levels=[-0.25, -0.125, 0, 0.125, 0.25],
                                 title="conv1/kernel")
    (ax,) = fig.axes
    assert ax.get_title() == "conv1/kernel"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("weight value", "count")
    assert len(ax.lines) == 5
    assert sorted(line.get_xdata()[0] for line in ax.lines) == [-0.25, -0.125, 0, 0.125, 0.25]
    assert len(ax.patches) == 80                             # the bins
    assert _legend_texts(ax) == ["weights (500)", "levels (5)"]
    # Many levels (8 bits) are ticks along the axis: one artist, not 255 lines.
    fig = plots.weight_histogram(rng.normal(size=100), levels=np.arange(-127, 128) / 64)
    assert len(fig.axes[0].lines) == 1


def test_levels_from_report_layers():
    fp = {"kind": "fixed_point", "bits": 3, "frac_bits": 2, "signed": True, "symmetric": True}
    np.testing.assert_allclose(plots.layer_levels(fp), np.arange(-3, 4) / 4)
    assert plots.layer_levels({**fp, "frac_bits": [2, 3]}) is None        # per channel
    assert plots.layer_levels({"kind": "syq", "bits": 2, "num_scales": 4, "scale_min": 0.1,
                               "scale_max": 0.2}) is None
    np.testing.assert_allclose(plots.layer_levels({"kind": "syq", "bits": 2, "num_scales": 1,
                                                   "scale_min": 0.1, "scale_max": 0.1}),
                               [-0.1, 0, 0.1])


def test_histogram_grid_layers_by_snapshots(rng):
    snaps = [{"conv1": rng.normal(size=200), "fc1": rng.normal(size=300)} for _ in range(4)]
    levels = [{"conv1": [-1, 0, 1], "fc1": [-0.5, 0, 0.5]}] * 4
    fig = plots.histogram_grid(snaps, levels, column_titles=["init", "e1", "e2", "e3"])
    assert len(fig.axes) == 8
    assert fig.axes[0].get_title() == "conv1: init" and fig.axes[7].get_title() == "fc1: e3"
    assert all(len(ax.lines) == 3 for ax in fig.axes)
    assert fig.axes[7].get_xlabel() == "weight value" and fig.axes[4].get_ylabel() == "count"
    assert _legend_texts(fig.axes[3]) == ["weights", "levels (3)"]
    with pytest.raises(ValueError, match="2 level mappings"):
        plots.histogram_grid(snaps, levels[:2])


def test_error_curves_from_metrics_records():
    recs = [{"epoch": e, "test_error_float": 0.1 / e, "test_error_quantized": 0.2 / e,
             "train_error": 0.15 / e, "near_level_fraction": e / 4} for e in (1, 2, 3)]
    fig = plots.error_curves(recs, title="run")
    ax, ax2 = fig.axes
    assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "error (%)"
    assert _legend_texts(ax) == ["test, float weights", "test, hard-quantized",
                                 "train (running mean over the epoch)"]
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [20, 10, 20 / 3])
    assert ax2.get_ylabel() == "near a level (%)"
    assert len(plots.error_curves([{k: v for k, v in r.items() if k != "near_level_fraction"}
                                   for r in recs]).axes) == 1
    with pytest.raises(ValueError):
        plots.error_curves([])


def test_schedule_and_design_figures():
    import symog_jax
    fig = plots.schedule_curves({"pull": symog_jax.default_pull(40), "const": [0.5] * 40}, 40,
                                steps_per_epoch=10)
    ax = fig.axes[0]
    assert _legend_texts(ax) == ["pull", "const"] and ax.get_yscale() == "log"
    assert np.isnan(ax.lines[0].get_ydata()[0])              # the float half (0) is not drawn
    fig = plots.optimal_step_vs_bits(["gaussian", "laplacian"], [2, 3, 4],
                                     samples={"weights": np.linspace(-1, 1, 501)})
    ax_step, ax_sqnr = fig.axes
    assert _legend_texts(ax_sqnr) == ["gaussian", "laplacian", "weights", "6.02 dB per bit"]
    assert ax_step.get_xlabel() == "bits" and ax_sqnr.get_ylabel() == "SQNR (dB)"
    sqnr = ax_sqnr.lines[0].get_ydata()
    assert np.all(np.diff(sqnr) > 3)                        # more bits, better SQNR
    fig = plots.layer_sqnr_bars(["conv1", "conv2", "fc1"], np.arange(6.0).reshape(3, 2),
                                bits=[2, 4])
    ax = fig.axes[0]
    assert len(ax.patches) == 6 and _legend_texts(ax) == ["2 bits", "4 bits"]
    assert ax.get_xlabel() == "layer" and ax.get_ylabel() == "SQNR (dB)"


def test_error_vs_memory_groups_and_labels():
    pts = [{"group": "equal", "label": f"{b} bit", "weight_memory_bits": 1000 * b,
            "error": 0.1 / b} for b in (2, 4, 8)]
    pts += [{"group": "optimized", "label": "b", "weight_memory_bits": 3000, "error": 0.03},
            {"label": "SYMOG", "weight_memory_bits": 2000, "error": 0.02}]
    ax = plots.error_vs_memory(pts, title="t").axes[0]
    assert _legend_texts(ax) == ["equal", "optimized", "SYMOG"]
    assert len(ax.lines) == 3 and len(ax.lines[0].get_xdata()) == 3
    assert [t.get_text() for t in ax.texts] == ["2 bit", "4 bit", "8 bit", "b"]
    assert ax.get_xlabel() == "weight memory (KiB)" and ax.get_ylabel() == "test error (%)"


@pytest.mark.parametrize("report", [
    {"layers": [{"path": "conv1/kernel", "shape": [5, 5, 1, 32], "kept_channels": 20},
                {"path": "fc2/kernel", "shape": [64, 10]}]},
    {"layers": [{"path": "conv1/kernel", "shape": [5, 5, 1, 32]}],
     "pruning": {"kept_channels": {"conv1/kernel": 20}}},
    {"kept_channels": {"conv1/kernel": [20, 32]}},
    {"kept_channels": {"conv1/kernel": {"kept": 20, "total": 32}}},
])
def test_kept_channels_forms(report):
    assert plots.kept_channels(report) == {"conv1/kernel": (20, 32)}
    ax = plots.kept_channels_bars(report).axes[0]
    assert len(ax.patches) == 2 and _legend_texts(ax) == ["total", "kept"]
    assert [t.get_text() for t in ax.texts] == ["20/32"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["conv1"]


def test_no_pruning_info():
    assert plots.kept_channels({"layers": [{"path": "a", "shape": [3]}]}) == {}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from symog_jax.data import load_bundled_mnist5k
    from symog_jax.pipelines import train_run
    from symog_jax.training import TrainConfig
    ds = load_bundled_mnist5k(test_size=200)
    workdir = tmp_path_factory.mktemp("run") / "symog"
    config = TrainConfig(dataset="mnist", model="lenet5", method="symog",
                         method_config={"bits": 2, "per_channel": True}, epochs=2, batch_size=64,
                         optimizer="adam", lr=1e-3, weight_decay=0.0, width=0.25,
                         max_train_examples=256, data_source="bundled", allow_bundled=True,
                         workdir=str(workdir), progress=False, plots=True)
    train_run(config, dataset=ds)
    return workdir, ds


@pytest.mark.e2e
def test_training_with_plots_writes_the_figures_next_to_the_report(tiny_run):
    workdir, _ = tiny_run          # trained with plots=True (--plots)
    for name in ("report.json", "error_curves.png", "weight_histograms.png"):
        assert (workdir / name).is_file(), name
    assert _is_png(workdir / "error_curves.png") and _is_png(workdir / "weight_histograms.png")


@pytest.mark.e2e
def test_save_run_figures(tiny_run):
    workdir, ds = tiny_run
    for name in ("error_curves.png", "weight_histograms.png"):
        (workdir / name).unlink()
    paths = figures.save_run_figures(workdir, ds)
    assert [p.name for p in paths] == ["error_curves.png", "weight_histograms.png"]
    assert all(p.parent == workdir and _is_png(p) for p in paths)
    # With pruning information in the report, the bar chart too.
    report = json.loads((workdir / "report.json").read_text())
    report["layers"][0]["kept_channels"] = 3
    (workdir / "report.json").write_text(json.dumps(report))
    paths = figures.save_run_figures(workdir, ds, histograms=False)
    assert [p.name for p in paths] == ["error_curves.png", "kept_channels.png"]
    assert _is_png(paths[-1])


@pytest.mark.e2e
def test_histograms_of_a_run_use_its_formats(tiny_run):
    workdir, ds = tiny_run
    report = json.loads((workdir / "report.json").read_text())
    params = figures.run_weights(workdir, ds)
    weights, levels, steps = plots._report_layer_weights(report, params)
    assert list(weights) == [layer["path"] for layer in report["layers"]]
    # per-channel formats: plotted in units of each channel's step, levels the codes -1, 0, 1
    assert set(steps) == set(weights)
    for name in weights:
        np.testing.assert_array_equal(levels[name], [-1, 0, 1])
    fig = plots.layer_histograms(weights, levels, steps=steps)
    assert fig.axes[0].get_xlabel() == "weight / step (per channel)"


@pytest.mark.e2e
def test_command_line(tiny_run, tmp_path):
    workdir, _ = tiny_run
    out = subprocess.run([sys.executable, "-m", "experiments.plots", "--workdir", str(workdir),
                          "--no-histograms"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    assert str(workdir / "error_curves.png") in out.stdout
    out = subprocess.run([sys.executable, "-m", "experiments.plots", "--workdir", str(tmp_path)],
                         capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 1 and "no metrics.jsonl or report.json" in out.stderr
