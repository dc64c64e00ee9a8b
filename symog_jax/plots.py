"""Figures of weights, fixed-point levels, errors and bit allocations (matplotlib, Agg canvas).

Every function takes plain data -- numpy arrays, the dicts of a run's ``report.json`` and the
records of its ``metrics.jsonl`` -- and returns a :class:`matplotlib.figure.Figure` with an Agg
canvas attached. No pyplot state is used or changed (the figures are not registered with
pyplot), so the functions work the same in scripts, tests, threads and notebooks (in Jupyter a
returned figure shows inline after ``%matplotlib inline``, or with ``display(fig)``); save with
``fig.savefig(path)``.

Nothing here reads a run directory: :mod:`symog_jax.pipelines.figures` reads one (report,
metrics, checkpoint) and writes its figures (:func:`~symog_jax.pipelines.figures.save_run_figures`).

matplotlib is imported only when a function here is called: ``import symog_jax`` does not need
it (``pip install "symog_jax[notebooks]"`` or ``matplotlib>=3.8``).

=================================  ============================================================
function                           figure
=================================  ============================================================
:func:`weight_histogram`           one tensor's histogram, its fixed-point levels as red lines
:func:`layer_histograms`           one panel per layer (a run's quantized kernels)
:func:`histogram_grid`             layers x snapshots (weights over training), levels marked
:func:`error_curves`               float and hard-quantized test error per epoch (metrics.jsonl)
:func:`schedule_curves`            schedules (pull, strength, ...) over the optimizer steps
:func:`optimal_step_vs_bits`       MSE-optimal step and SQNR vs bits for several distributions
:func:`layer_sqnr_bars`            per-layer SQNR (dB), one bar group per layer
:func:`error_vs_memory`            test error vs weight memory, one line per group of points
:func:`kept_channels_bars`         kept vs total output channels per layer (pruning reports)
:func:`run_figures`                a run's figures from its metrics, report and weights
=================================  ============================================================

Example:
  >>> w = np.random.default_rng(0).normal(0.0, 0.1, 1000)
  >>> fig = weight_histogram(w, levels=[-0.125, 0.0, 0.125], title="conv1/kernel")
  >>> ax = fig.axes[0]
  >>> ax.get_xlabel(), len(ax.lines)      # one vertical line per level
  ('weight value', 3)
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from symog_jax.numerics.levels import RecordNeedsArrays, from_record, kinds
from symog_jax.numerics.optimal_step import DB_PER_BIT, optimal_uniform_step

__all__ = [
    "LEVEL_COLOR", "error_curves", "error_vs_memory", "format_from_layer", "histogram_grid",
    "kept_channels", "kept_channels_bars", "layer_histograms", "layer_levels",
    "new_figure", "optimal_step_vs_bits", "layer_sqnr_bars", "run_figures", "schedule_curves",
    "weight_histogram",
]

#: Colour of the fixed-point level markers in every figure.
LEVEL_COLOR = "tab:red"
_HIST_COLOR = "tab:blue"
_MAX_LEVEL_LINES = 33          # more levels than this are drawn as ticks along the x axis


def _matplotlib():
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:   # pragma: no cover - depends on the environment
        raise ImportError("symog_jax.plots needs matplotlib: pip install 'matplotlib>=3.8' "
                          "(or the package's 'notebooks' or 'test' extra)") from e
    return Figure, FigureCanvasAgg


def new_figure(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] | None = None,
               squeeze: bool = False, **subplot_kw):
    """``(fig, axes)``: a Figure with an Agg canvas and an ``(nrows, ncols)`` array of axes.

    Example:
      >>> fig, axes = new_figure(2, 3)
      >>> axes.shape, len(fig.axes)
      ((2, 3), 6)
    """
    Figure, FigureCanvasAgg = _matplotlib()
    if figsize is None:
        figsize = (3.2 * ncols + 0.6, 2.6 * nrows + 0.6)
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=squeeze, **subplot_kw)
    return fig, axes


# -- formats and levels from plain data -----------------------------------------------------------

def format_from_layer(layer: Mapping[str, Any]):
    """The format (:class:`~symog_jax.numerics.levels.Levels`) of a report layer dict, or
    ``None`` where the dict alone does not determine it.

    ``layer`` is one entry of ``report.json``'s ``"layers"`` (or of ``LayerReport.as_dict()``).
    ``None`` for a kind whose record needs arrays the report does not hold (e.g. SYQ with
    several scales), for an unknown kind, and for a layer without a format; a layer without a
    ``"kind"`` (older reports) is fixed point.

    Example:
      >>> format_from_layer({"kind": "fixed_point", "bits": 2, "frac_bits": 3,
      ...                    "signed": True, "symmetric": True}).levels
      array([-0.125,  0.   ,  0.125], dtype=float32)
    """
    record = {"kind": "fixed_point", **layer}
    if record["kind"] not in kinds() or "bits" not in record:
        return None
    try:
        return from_record(record)
    except (RecordNeedsArrays, KeyError):
        return None


def layer_levels(layer: Mapping[str, Any]) -> np.ndarray | None:
    """The representable values of a report layer dict, float64 ``(K,)``, or ``None``.

    The format's :meth:`~symog_jax.numerics.levels.Levels.value_levels`: all levels where one
    step holds for the whole tensor (per-tensor fixed point; SYQ with one scale: ``{-s, 0, s}``
    ternary, ``{-s, s}`` binary); ``None`` where the steps differ per channel or group
    (:func:`weight_histogram` with ``steps=`` plots those in units of the step) or the report
    does not determine the format.

    Example:
      >>> layer_levels({"kind": "syq", "bits": 1, "num_scales": 1, "scale_min": 0.5,
      ...               "scale_max": 0.5})
      array([-0.5,  0.5])
    """
    fmt = format_from_layer(layer)
    return None if fmt is None else fmt.value_levels()


def kept_channels(report: Mapping[str, Any]) -> dict[str, tuple[int, int | None]]:
    """``{layer: (kept, total or None)}`` from a report's pruning information, or ``{}``.

    Accepted forms: ``report["layers"][i]["kept_channels"]`` (an int, total from
    ``"channels"``/``"total_channels"`` or the last entry of ``"shape"``), or a mapping
    ``{layer: kept | [kept, total] | {"kept": k, "total": t}}`` under ``report["kept_channels"]``
    or ``report["pruning"]["kept_channels"]`` (totals then from the layers' shapes if known).

    Example:
      >>> kept_channels({"layers": [{"path": "conv1/kernel", "shape": [5, 5, 1, 32],
      ...                            "kept_channels": 20}]})
      {'conv1/kernel': (20, 32)}
    """
    shapes = {str(layer.get("path")): layer.get("shape")
              for layer in report.get("layers", []) or []
              if isinstance(layer, Mapping)}

    def total_of(name: str, entry: Mapping | None = None):
        for key in ("total_channels", "channels", "total"):
            if entry is not None and entry.get(key) is not None:
                return int(entry[key])
        for candidate in (name, name + "/kernel"):
            shape = shapes.get(candidate)
            if shape:
                return int(shape[-1])
        return None

    out: dict[str, tuple[int, int | None]] = {}
    for layer in report.get("layers", []) or []:
        if isinstance(layer, Mapping) and layer.get("kept_channels") is not None:
            name = str(layer.get("path", f"layer{len(out)}"))
            out[name] = (int(layer["kept_channels"]), total_of(name, layer))
    if out:
        return out
    table = report.get("kept_channels")
    if table is None and isinstance(report.get("pruning"), Mapping):
        table = report["pruning"].get("kept_channels")
    if not isinstance(table, Mapping):
        return {}
    for name, v in table.items():
        if isinstance(v, Mapping):
            out[str(name)] = (int(v.get("kept")), total_of(str(name), v))
        elif isinstance(v, (list, tuple)):
            out[str(name)] = (int(v[0]), int(v[1]) if len(v) > 1 else total_of(str(name)))
        else:
            out[str(name)] = (int(v), total_of(str(name)))
    return out


# -- histograms -----------------------------------------------------------------------------------

def _draw_levels(ax, levels, label: bool = True) -> None:
    levels = np.asarray(levels, np.float64).ravel()
    if levels.size == 0:
        return
    name = f"levels ({levels.size})" if label else None
    if levels.size <= _MAX_LEVEL_LINES:
        for i, v in enumerate(levels):
            ax.axvline(v, color=LEVEL_COLOR, linestyle="--", linewidth=1.0, alpha=0.8,
                       label=name if i == 0 else None)
    else:   # many levels (e.g. 8 bits): ticks along the bottom instead of a wall of lines
        ax.plot(levels, np.zeros_like(levels), "|", color=LEVEL_COLOR, markersize=6,
                label=name, clip_on=False)


def _hist_range(w: np.ndarray, levels) -> tuple[float, float]:
    lo, hi = float(np.min(w)), float(np.max(w))
    if levels is not None and np.size(levels):
        lv = np.asarray(levels, np.float64)
        lo, hi = min(lo, float(lv.min())), max(hi, float(lv.max()))
    pad = 0.05 * (hi - lo) if hi > lo else 1e-3
    return lo - pad, hi + pad


def _histogram(ax, weights, levels=None, *, steps=None, bins: int = 80, title=None,
               log: bool = False, xlabel: bool = True, legend: bool = True) -> None:
    w = np.asarray(weights, np.float64)
    unit = "weight value"
    if steps is not None:          # per-channel steps: in units of each channel's step
        w = w / np.broadcast_to(np.asarray(steps, np.float64), w.shape)
        unit = "weight / step (per channel)"
    w = w.ravel()
    ax.hist(w, bins=bins, range=_hist_range(w, levels), color=_HIST_COLOR, alpha=0.75,
            label=f"weights ({w.size:,})")
    if levels is not None:
        _draw_levels(ax, levels)
    if log:
        ax.set_yscale("log")
    if xlabel:
        ax.set_xlabel(unit)
    ax.set_ylabel("count")
    if title:
        ax.set_title(title, fontsize=9)
    if legend:
        ax.legend(fontsize=7, loc="upper right")


def weight_histogram(weights, levels=None, *, steps=None, bins: int = 80,
                     title: str | None = None, log: bool = False, ax=None):
    """Histogram of one tensor with its fixed-point levels as dashed red vertical lines.

    Args:
      weights: any array (flattened).
      levels: the representable values (e.g. ``FixedPointFormat(...).levels``), or ``None``.
      steps: per-channel steps broadcastable to ``weights``: the histogram is then of
        ``weights / steps`` and ``levels`` should be the integer codes.
      bins: histogram bins over the weights' and levels' range.
      title: the panel title.
      log: logarithmic count axis (shows the tails between sharp modes).
      ax: draw into this axes instead of a new figure.

    Returns:
      The Figure (``ax.figure`` when ``ax`` is given).
    """
    if ax is None:
        fig, axes = new_figure(1, 1, figsize=(5.0, 3.2))
        ax = axes[0, 0]
    _histogram(ax, weights, levels, steps=steps, bins=bins, title=title, log=log)
    return ax.figure


def layer_histograms(weights: Mapping[str, Any], levels: Mapping[str, Any] | None = None, *,
                     steps: Mapping[str, Any] | None = None, ncols: int = 3, bins: int = 80,
                     log: bool = False, suptitle: str | None = None):
    """One histogram panel per layer, levels marked.

    Args:
      weights: ``{layer name: array}`` (e.g. the quantized kernels of a run).
      levels: ``{layer name: levels or None}`` (missing names: no levels).
      steps: ``{layer name: per-channel steps}`` for layers plotted in units of their step.
      ncols: panels per row.

    Example:
      >>> fig = layer_histograms({"a": np.arange(10.0), "b": np.ones(3)}, {"a": [0.0, 4.0]})
      >>> [ax.get_title() for ax in fig.axes if ax.has_data()]
      ['a', 'b']
    """
    names = list(weights)
    if not names:
        raise ValueError("layer_histograms: no layers given")
    levels, steps = dict(levels or {}), dict(steps or {})
    ncols = max(1, min(ncols, len(names)))
    nrows = math.ceil(len(names) / ncols)
    fig, axes = new_figure(nrows, ncols)
    for i, ax in enumerate(axes.ravel()):
        if i >= len(names):
            ax.set_axis_off()
            continue
        n = names[i]
        _histogram(ax, weights[n], levels.get(n), steps=steps.get(n), bins=bins, title=n,
                   log=log)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def histogram_grid(snapshots: Sequence[Mapping[str, Any]],
                   levels: Sequence[Mapping[str, Any]] | Mapping[str, Any] | None = None, *,
                   column_titles: Sequence[str] | None = None, layers: Sequence[str] | None = None,
                   bins: int = 60, log: bool = False, suptitle: str | None = None):
    """Weights over training: one row per layer, one column per snapshot, levels marked.

    Args:
      snapshots: per snapshot ``{layer name: array}`` (e.g. the kernels after each epoch).
      levels: one ``{layer: levels}`` per snapshot (formats may be re-chosen during training),
        or one mapping for all, or ``None``.
      column_titles: e.g. ``["init", "epoch 1", ...]``.
      layers: which layers (rows) and their order; default those of the first snapshot.
      bins: bins per panel; a row shares one x range (all snapshots and levels).

    Example:
      >>> rng = np.random.default_rng(0)
      >>> snaps = [{"fc": rng.normal(size=100)}, {"fc": rng.choice([-1.0, 0.0, 1.0], 100)}]
      >>> fig = histogram_grid(snaps, {"fc": [-1.0, 0.0, 1.0]}, column_titles=["init", "end"])
      >>> len(fig.axes), [ax.get_title() for ax in fig.axes]
      (2, ['fc: init', 'fc: end'])
    """
    if not snapshots:
        raise ValueError("histogram_grid: no snapshots given")
    names = list(layers) if layers is not None else list(snapshots[0])
    if isinstance(levels, Mapping) or levels is None:
        per_snapshot = [dict(levels or {})] * len(snapshots)
    else:
        per_snapshot = [dict(mapping or {}) for mapping in levels]
        if len(per_snapshot) != len(snapshots):
            raise ValueError(f"histogram_grid: {len(snapshots)} snapshots but "
                             f"{len(per_snapshot)} level mappings")
    titles = list(column_titles) if column_titles is not None else \
        [f"snapshot {i}" for i in range(len(snapshots))]
    fig, axes = new_figure(len(names), len(snapshots),
                           figsize=(2.3 * len(snapshots) + 0.6, 1.9 * len(names) + 0.6),
                           sharex="row")
    for r, name in enumerate(names):
        lo, hi = math.inf, -math.inf
        for snap, lv in zip(snapshots, per_snapshot):
            a, b = _hist_range(np.asarray(snap[name], np.float64), lv.get(name))
            lo, hi = min(lo, a), max(hi, b)
        for c, (snap, lv) in enumerate(zip(snapshots, per_snapshot)):
            ax = axes[r, c]
            w = np.asarray(snap[name], np.float64).ravel()
            ax.hist(w, bins=bins, range=(lo, hi), color=_HIST_COLOR, alpha=0.75,
                    label="weights")
            if lv.get(name) is not None:
                _draw_levels(ax, lv[name])
            if log:
                ax.set_yscale("log")
            ax.set_title(f"{name}: {titles[c]}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.set_yticks([])
            if r == len(names) - 1:
                ax.set_xlabel("weight value", fontsize=8)
            if c == 0:
                ax.set_ylabel("count", fontsize=8)
    axes[0, -1].legend(fontsize=7, loc="upper right")
    if suptitle:
        fig.suptitle(suptitle)
    return fig


# -- training curves ------------------------------------------------------------------------------

def error_curves(metrics: Sequence[Mapping[str, Any]], *, title: str | None = None,
                 near_level: bool = True):
    """Test error per epoch from ``metrics.jsonl`` records: float and hard-quantized weights.

    Left panel: ``test_error_float``, ``test_error_quantized`` (and ``train_error`` if present)
    in percent; right panel (if the records have it and ``near_level``): the fraction of
    quantized weights within a quarter step of a level.

    Example:
      >>> recs = [{"epoch": 1, "test_error_float": 0.1, "test_error_quantized": 0.3},
      ...         {"epoch": 2, "test_error_float": 0.05, "test_error_quantized": 0.06}]
      >>> fig = error_curves(recs)
      >>> ax = fig.axes[0]
      >>> ax.get_xlabel(), ax.get_ylabel(), [l.get_label() for l in ax.lines]
      ('epoch', 'error (%)', ['test, float weights', 'test, hard-quantized'])
    """
    records = [m for m in metrics if "epoch" in m]
    if not records:
        raise ValueError("error_curves: no per-epoch records")
    with_near = near_level and all("near_level_fraction" in m for m in records)
    fig, axes = new_figure(1, 2 if with_near else 1, figsize=(9.0 if with_near else 5.2, 3.4))
    ax = axes[0, 0]
    epochs = [m["epoch"] for m in records]
    series = (("test_error_float", "test, float weights", "o-"),
              ("test_error_quantized", "test, hard-quantized", "s-"),
              ("train_error", "train (running mean over the epoch)", ":"))
    for key, label, style in series:
        # runs with eval_every > 1 evaluate only some epochs: plot the epochs that have it
        points = [(m["epoch"], 100 * m[key]) for m in records if key in m]
        if points:
            ax.plot(*zip(*points), style, label=label, markersize=4)
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("error (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    if with_near:
        ax2 = axes[0, 1]
        ax2.plot(epochs, [100 * m["near_level_fraction"] for m in records], "d-",
                 color="tab:green", label="weights within step/4 of a level", markersize=4)
        ax2.set_xlabel("epoch")
        ax2.xaxis.get_major_locator().set_params(integer=True)
        ax2.set_ylabel("near a level (%)")
        ax2.set_ylim(0, 105)
        ax2.grid(True, alpha=0.3)
        ax2.legend(fontsize=8)
    return fig


def schedule_curves(schedules: Mapping[str, Callable | Sequence[float]], total_steps: int, *,
                    log: bool = True, steps_per_epoch: int | None = None,
                    title: str | None = None):
    """Schedules (optax-style ``f(step)`` or arrays of values) over ``range(total_steps)``.

    With ``log`` the y axis is logarithmic (zeros, e.g. a warm-up, are not drawn there);
    ``steps_per_epoch`` adds light vertical lines at epoch ends.

    Example:
      >>> fig = schedule_curves({"pull": symog_jax.default_pull(100)}, 100)
      >>> fig.axes[0].get_xlabel(), fig.axes[0].get_yscale()
      ('optimizer step', 'log')
    """
    fig, axes = new_figure(1, 1, figsize=(5.6, 3.2))
    ax = axes[0, 0]
    t = np.arange(int(total_steps))
    for name, s in schedules.items():
        values = np.asarray([float(s(i)) for i in t] if callable(s) else s, np.float64)
        shown = np.where(values > 0, values, np.nan) if log else values
        ax.plot(t[:len(shown)], shown, label=name)
    if steps_per_epoch:
        for e in range(steps_per_epoch, int(total_steps), steps_per_epoch):
            ax.axvline(e, color="0.85", linewidth=0.8, zorder=0)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("value" + (" (log; 0 not drawn)" if log else ""))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


# -- quantizer design and allocation --------------------------------------------------------------

def optimal_step_vs_bits(distributions: Sequence[str] = ("gaussian", "laplacian", "uniform"),
                         bits: Sequence[int] = tuple(range(2, 9)), *,
                         samples: Mapping[str, Any] | None = None,
                         quantizer: str = "symmetric"):
    """MSE-optimal step (in standard deviations) and SQNR vs bits, one line per distribution.

    Uses :func:`~symog_jax.numerics.optimal_step.optimal_uniform_step`. ``samples`` adds
    empirical distributions ``{name: array}`` (their step divided by their RMS, so all are in
    units of the signal's standard deviation about zero). The SQNR panel has a dotted
    ``6.02 dB/bit`` reference through the first Gaussian point.

    Example:
      >>> fig = optimal_step_vs_bits(["gaussian", "uniform"], [2, 3, 4])
      >>> [ax.get_ylabel() for ax in fig.axes]
      ['optimal step / std', 'SQNR (dB)']
      >>> [l.get_label() for l in fig.axes[1].lines]
      ['gaussian', 'uniform', '6.02 dB per bit']
    """
    bits = [int(b) for b in bits]
    fig, axes = new_figure(1, 2, figsize=(9.0, 3.4))
    ax_step, ax_sqnr = axes[0, 0], axes[0, 1]
    curves: list[tuple[str, Any]] = [(d, d) for d in distributions]
    curves += [(name, np.asarray(x, np.float64).ravel()) for name, x in (samples or {}).items()]
    for (name, dist), marker in zip(curves, "osd^v<>px*"):
        results = [optimal_uniform_step(b, dist, quantizer) for b in bits]
        rms = math.sqrt(results[0].signal_power)
        ax_step.plot(bits, [r.step / rms for r in results], marker + "-", label=name,
                     markersize=4)
        ax_sqnr.plot(bits, [r.sqnr_db for r in results], marker + "-", label=name, markersize=4)
    ref0 = optimal_uniform_step(bits[0], "gaussian", quantizer).sqnr_db
    ax_sqnr.plot(bits, [ref0 + DB_PER_BIT * (b - bits[0]) for b in bits], ":", color="0.4",
                 label="6.02 dB per bit")
    ax_step.set_yscale("log")
    for ax in (ax_step, ax_sqnr):
        ax.set_xlabel("bits")
        ax.set_xticks(bits)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    ax_step.set_ylabel("optimal step / std")
    ax_sqnr.set_ylabel("SQNR (dB)")
    ax_step.set_title(f"MSE-optimal step ({quantizer})", fontsize=10)
    ax_sqnr.set_title("SQNR at the optimal step", fontsize=10)
    return fig


def layer_sqnr_bars(names: Sequence[str], sqnr_db, bits: Sequence[int] | None = None, *,
                    title: str | None = None, ylabel: str = "SQNR (dB)"):
    """Per-layer SQNR bars: ``sqnr_db`` ``(L,)``, or ``(L, B)`` with one bar per ``bits[j]``.

    Non-finite values (an exact rounding) are drawn as missing bars.

    Example:
      >>> fig = layer_sqnr_bars(["conv1", "fc1"], [[5.0, 11.0], [6.0, 12.0]], bits=[2, 3])
      >>> ax = fig.axes[0]
      >>> len(ax.patches), [t.get_text() for t in ax.get_xticklabels()]
      (4, ['conv1', 'fc1'])
    """
    table = np.asarray(sqnr_db, np.float64)
    if table.ndim == 1:
        table = table[:, None]
    if table.shape[0] != len(names):
        raise ValueError(f"layer_sqnr_bars: {len(names)} names but {table.shape[0]} rows")
    if bits is None:
        bits = [None] * table.shape[1]
    if len(bits) != table.shape[1]:
        raise ValueError(f"layer_sqnr_bars: {table.shape[1]} columns but {len(bits)} bits")
    fig, axes = new_figure(1, 1, figsize=(min(9.0, max(4.5, 0.35 * table.size + 2.5)), 3.4))
    ax = axes[0, 0]
    x = np.arange(len(names))
    width = 0.8 / table.shape[1]
    for j, b in enumerate(bits):
        vals = np.where(np.isfinite(table[:, j]), table[:, j], np.nan)
        ax.bar(x + (j - (table.shape[1] - 1) / 2) * width, vals, width,
               label=None if b is None else f"{b} bits")
    ax.set_xticks(x, [str(n) for n in names], rotation=30 if len(names) > 6 else 0, fontsize=8)
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)
    if any(b is not None for b in bits):
        ax.legend(fontsize=8, ncols=min(4, len(bits)))
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def _plain_log_axis(ax) -> None:
    """Logarithmic x axis labelled with plain numbers (``40``, not ``4 x 10^1``); within about
    a decade the minor ticks are labelled too."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_xscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    lo, hi = (max(v, 1e-300) for v in ax.dataLim.intervalx)
    if hi / lo < 30:   # label 2, 3 and 5 times the powers of ten as well
        ax.xaxis.set_minor_formatter(FuncFormatter(
            lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "235" else ""))
        ax.tick_params(axis="x", which="both", labelsize=7)
    else:
        ax.xaxis.set_minor_formatter(NullFormatter())


def error_vs_memory(points: Sequence[Mapping[str, Any]], *, title: str | None = None,
                    annotate: bool = True, log_x: bool = True, error_key: str = "error",
                    memory_unit: str = "KiB"):
    """Test error vs weight memory; points of one ``group`` are joined by a line.

    Args:
      points: dicts with ``weight_memory_bits``, ``error`` (a fraction; or ``error_key``),
        optional ``label`` (annotated next to the point) and ``group`` (legend entry; default
        each point its own group, drawn as a marker).
      log_x: logarithmic memory axis.
      memory_unit: ``"KiB"`` or ``"bits/weight"`` (then points need ``avg_bits`` instead of
        ``weight_memory_bits``).

    Example:
      >>> pts = [{"group": "equal", "weight_memory_bits": 8192 * b, "error": e, "label": f"{b}b"}
      ...        for b, e in ((2, 0.1), (4, 0.02))] + [{"group": "SYMOG",
      ...        "weight_memory_bits": 16384, "error": 0.03}]
      >>> ax = error_vs_memory(pts).axes[0]
      >>> ax.get_xlabel(), [t.get_text() for t in ax.get_legend().get_texts()]
      ('weight memory (KiB)', ['equal', 'SYMOG'])
    """
    if not points:
        raise ValueError("error_vs_memory: no points")
    fig, axes = new_figure(1, 1, figsize=(5.8, 3.8))
    ax = axes[0, 0]
    groups: dict[str, list[Mapping]] = {}
    for i, p in enumerate(points):
        groups.setdefault(str(p.get("group", p.get("label", f"point {i}"))), []).append(p)

    def x_of(p):
        if memory_unit == "bits/weight":
            return float(p["avg_bits"])
        return float(p["weight_memory_bits"]) / 8 / 1024

    for g, ((name, pts), marker) in enumerate(zip(groups.items(), "os^dv<>px*hH")):
        pts = sorted(pts, key=x_of)
        xs, ys = [x_of(p) for p in pts], [100 * float(p[error_key]) for p in pts]
        ax.plot(xs, ys, marker + ("-" if len(pts) > 1 else ""), label=name, markersize=6)
        if annotate:   # alternate groups above / below their points: fewer collisions
            for p, x, y in zip(pts, xs, ys):
                if p.get("label") and p.get("label") != name:
                    ax.annotate(str(p["label"]), (x, y), textcoords="offset points",
                                xytext=(4, 4 if g % 2 == 0 else -11), fontsize=7)
    if log_x and memory_unit != "bits/weight":
        _plain_log_axis(ax)
    ax.set_xlabel(f"weight memory ({memory_unit})")
    ax.set_ylabel("test error (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def kept_channels_bars(report_or_table, *, title: str | None = None):
    """Kept (and, where known, total) output channels per layer.

    ``report_or_table``: a run report (see :func:`kept_channels` for the accepted forms) or
    ``{layer: (kept, total or None)}``.

    Example:
      >>> fig = kept_channels_bars({"conv1": (20, 32), "conv2": (40, 64)})
      >>> ax = fig.axes[0]
      >>> len(ax.patches), ax.get_ylabel()
      (4, 'output channels')
    """
    table = report_or_table
    if "layers" in table or "kept_channels" in table or "pruning" in table:
        table = kept_channels(table)
    if not table:
        raise ValueError("kept_channels_bars: no kept_channels in the report")
    names = list(table)
    kept = np.array([table[n][0] for n in names], np.float64)
    total = np.array([np.nan if table[n][1] is None else table[n][1] for n in names], np.float64)
    fig, axes = new_figure(1, 1, figsize=(max(4.5, 0.9 * len(names) + 2), 3.4))
    ax = axes[0, 0]
    x = np.arange(len(names))
    if np.any(np.isfinite(total)):
        ax.bar(x, total, 0.7, color="0.85", edgecolor="0.5", label="total")
    bars = ax.bar(x, kept, 0.45, color="tab:green", label="kept")
    for b, k, t in zip(bars, kept, total):
        text = f"{int(k)}" + (f"/{int(t)}" if np.isfinite(t) else "")
        ax.annotate(text, (b.get_x() + b.get_width() / 2, b.get_height()),
                    textcoords="offset points", xytext=(0, 2), ha="center", fontsize=7)
    short = [n[:-len("/kernel")] if n.endswith("/kernel") else n for n in names]
    ax.set_xticks(x, short, rotation=30 if len(names) > 6 else 0, fontsize=8)
    ax.set_xlabel("layer")
    ax.set_ylabel("output channels")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


# -- a run's figures, from its data ----------------------------------------------------------

def _report_layer_weights(report: Mapping, params: Mapping[str, np.ndarray]):
    """Weights, levels and per-channel steps of the report's quantized layers."""
    weights, levels, steps = {}, {}, {}
    for layer in report.get("layers", []):
        path = str(layer["path"])
        key = path[len("params/"):] if path.startswith("params/") else path
        if key not in params:
            continue
        weights[key] = params[key]
        fmt = format_from_layer(layer)
        if fmt is not None and fmt.value_levels() is None:   # steps per channel or group
            steps[key] = np.asarray(fmt.step_for(np.ndim(params[key])), np.float64)
            levels[key] = fmt.code_levels().astype(np.float64)
        else:
            levels[key] = layer_levels(layer)
    return weights, levels, steps


def run_figures(metrics: Sequence[Mapping[str, Any]], report: Mapping[str, Any] | None = None,
                params: Mapping[str, np.ndarray] | None = None, *, tag: str = "") -> dict:
    """The figures of a run, from its data: ``{file name: Figure}``, in this order.

    * ``error_curves.png`` -- :func:`error_curves` of ``metrics`` (the records of
      ``metrics.jsonl``), if there are any;
    * ``weight_histograms.png`` -- :func:`layer_histograms` of the report's quantized layers
      in ``params`` (``{'conv1/kernel': array, ...}``), the levels of their formats marked;
      only with ``params`` and a report with layers;
    * ``kept_channels.png`` -- :func:`kept_channels_bars`, if the report has pruning
      information.

    ``tag`` (e.g. the run directory's name) titles the figures.

    Example:
      >>> figs = run_figures([{"epoch": 1, "test_error_float": 0.1,
      ...                      "test_error_quantized": 0.2}], tag="run")
      >>> list(figs)
      ['error_curves.png']
    """
    figures = {}
    if metrics:
        figures["error_curves.png"] = error_curves(metrics, title=tag)
    if report is not None and params is not None and report.get("layers"):
        weights, levels, steps = _report_layer_weights(report, params)
        if weights:
            err = report.get("test_error_quantized")
            sub = f"{tag}: weights of the newest checkpoint, levels of the final formats" + (
                f" (quantized error {100 * err:.2f} %)" if err is not None else "")
            figures["weight_histograms.png"] = layer_histograms(weights, levels, steps=steps,
                                                                suptitle=sub)
    if report is not None and kept_channels(report):
        figures["kept_channels.png"] = kept_channels_bars(report, title=f"{tag}: kept channels")
    return figures
