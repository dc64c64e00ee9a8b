"""Per-layer bit allocation vs equal bit-widths on one float run: the study of
``python -m experiments.allocate_bits``.

Lin, Talathi & Annapureddy (2016): measure each layer's SQNR at every bit-width on a calibration
batch (:func:`~symog_jax.pipelines.allocation.layer_statistics`), allocate bits per layer for
weight-memory budgets and target SQNRs, and compare the test error against equal bit-widths
for every layer, without retraining and (``finetune_epochs``) after a short fine-tuning from the
float weights. :func:`run_study` writes to its output directory:

    allocation.json       every row, the SQNR table and the comparison
    allocation.md         the table in markdown
    bits/*.json           each optimized allocation, usable as --bits-per-layer FILE (with
                          activations also bits/*-act.json, usable as --act-bits-per-layer FILE)
    finetune/b*/          the fine-tuning runs, one per distinct allocation (reused)
    error_vs_memory.png   if matplotlib is installed
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from symog_jax.files import (path_in_dir, save_figure_atomic, write_json_atomic,
                             write_text_atomic)
from symog_jax.pipelines.allocation import (ACT_SUFFIX, FloatNetwork, LayerStatistics, allocate,
                                            bits_file, evaluate_bits, finetune,
                                            layer_statistics, split_bits)
from symog_jax.plots import error_vs_memory
from symog_jax.training.config import TrainConfig, load_run_config
from symog_jax.training.evaluation import evaluate
from symog_jax.training.loop import train

__all__ = ["DEFAULT_BUDGETS", "DEFAULT_EQUAL", "FLOAT_RUN_FIELDS", "StudySettings", "compare",
           "comparison_text", "evaluate_float", "markdown", "plot", "run_study",
           "train_float_run"]

#: TrainConfig fields that the float run of :func:`train_float_run` may take from the caller.
FLOAT_RUN_FIELDS = ("dataset", "model", "width", "batch_size", "optimizer", "lr", "momentum",
                    "weight_decay", "seed", "max_train_examples", "allow_bundled", "augment")
DEFAULT_BUDGETS = (2.5, 3.5, 4.5)
DEFAULT_EQUAL = (2, 3, 4, 5, 6, 8)


@dataclasses.dataclass
class StudySettings:
    """What :func:`run_study` compares (the flags of ``experiments.allocate_bits``).

    Attributes:
      budgets: weight-memory budgets in average bits per quantized weight (per unit of cost
        with ``allocate_activations``).
      targets: target output SQNRs in dB (the least memory meeting each).
      match_equal: also allocate for the predicted SQNR of every equal bit-width below
        ``max_bits``.
      equal_bits: equal bit-widths to compare with.
      min_bits, max_bits: the fewest and most bits a layer may get.
      sqnr: ``"output"`` or ``"tensor"`` (see ``layer_statistics``).
      formats: one of :data:`~symog_jax.pipelines.allocation.FORMAT_RULES`.
      calibration_size: training images for the SQNR measurement.
      finetune_epochs: fine-tune every row this many epochs (0: none); finetune_lr,
        finetune_method, finetune_max_examples: as for ``finetune``.
      tolerance: error tolerance in points for "the same error".
      allocate_activations: allocate bits to the layer inputs too, each costing its elements
        per image times ``act_cost_weight``.
    """
    budgets: Sequence[float] = DEFAULT_BUDGETS
    targets: Sequence[float] = ()
    match_equal: bool = True
    equal_bits: Sequence[int] = DEFAULT_EQUAL
    min_bits: int = 2
    max_bits: int = 8
    sqnr: str = "output"
    formats: str = "search"
    calibration_size: int = 512
    finetune_epochs: int = 0
    finetune_lr: float | None = None
    finetune_method: str = "ste"
    finetune_max_examples: int | None = None
    tolerance: float = 0.1
    allocate_activations: bool = False
    act_cost_weight: float = 1.0

    def check(self) -> None:
        """Raises ValueError (one line) for budgets below ``min_bits`` or equal bit-widths
        outside 2..24 (2..16 with activations)."""
        for b in self.budgets:
            if not self.min_bits <= b:
                raise ValueError(f"budget {b:g} bits per weight is below --min-bits "
                                 f"{self.min_bits}: no allocation fits it")
        top = 16 if self.allocate_activations else 24
        for b in self.equal_bits:
            if not 2 <= b <= top:
                raise ValueError(f"--equal-bits {b} is outside 2..{top}")


def compare(rows: list[dict], key: str, tolerance: float,
            memory: str = "weight_memory_bits") -> list[dict]:
    """For each optimized row: the smallest equal-bit row (by ``memory``) whose ``key`` error is
    at most the optimized one's plus ``tolerance`` (a fraction), and how much smaller the
    optimized one is (``weight_memory_bits`` in the result are the ``memory`` values).

    Example:
      >>> rows = [{"kind": "equal", "label": "4b", "m": 400, "e": 0.01},
      ...         {"kind": "equal", "label": "2b", "m": 200, "e": 0.05},
      ...         {"kind": "optimized", "label": "opt", "m": 300, "e": 0.01}]
      >>> [(c["equal_row"], c["smaller_by"]) for c in compare(rows, "e", 0.0, "m")]
      [('4b', 0.25)]
    """
    equal = sorted((r for r in rows if r["kind"] == "equal" and r.get(key) is not None),
                   key=lambda r: r[memory])
    out = []
    for r in rows:
        if r["kind"] != "optimized" or r.get(key) is None:
            continue
        match = next((e for e in equal if e[key] <= r[key] + tolerance + 1e-12), None)
        out.append({"row": r["label"], "error": r[key],
                    "weight_memory_bits": r[memory],
                    "equal_row": None if match is None else match["label"],
                    "equal_error": None if match is None else match[key],
                    "equal_weight_memory_bits": None if match is None else match[memory],
                    "smaller_by": None if match is None
                    else 1.0 - r[memory] / match[memory]})
    return out


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _num(v) -> str:
    return "-" if v is None or isinstance(v, str) else f"{v:.2f}"


def markdown(rows: list[dict], stats: LayerStatistics, finetuned: bool) -> str:
    """The study's rows as a markdown table (bits per layer, memory, SQNR, errors)."""
    weights, acts = stats.weight_names, stats.activation_names
    head = ["row", "bits " + "/".join(n.rsplit("/", 1)[0] for n in weights)]
    if acts:
        head += ["act. bits " + "/".join(n[:-len(ACT_SUFFIX)] for n in acts)]
    head += ["avg bits", "weights KiB"] + (["act. KiB/image", "cost KiB"] if acts else []) + \
        ["pred. SQNR dB", "meas. SQNR dB", "error %"] + \
        (["error % fine-tuned"] if finetuned else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["label"], "/".join(str(r["bits"][n]) for n in weights)]
        if acts:
            cells += ["/".join(str(r["bits"][n]) for n in acts)]
        cells += [f"{r['avg_bits']:.3f}", f"{r['weight_memory_bits'] / 8 / 1024:.1f}"]
        if acts:
            cells += [f"{r['activation_memory_bits'] / 8 / 1024:.2f}",
                      f"{r['cost_bits'] / 8 / 1024:.1f}"]
        cells += [f"{r['predicted_sqnr_db']:.2f}", _num(r.get("output_sqnr_db")),
                  _pct(r["test_error"])] + ([_pct(r.get("test_error_finetuned"))]
                                            if finetuned else [])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_text(comparisons: list[dict], what: str, tolerance: float) -> str:
    """One line per optimized row: its memory (``weight_memory_bits`` of :func:`compare`) and
    error vs the smallest equal row that is as good."""
    lines = [f"{what}: optimized vs the smallest equal bit-width with error <= its own + "
             f"{100 * tolerance:g} points"]
    for c in comparisons:
        if c["equal_row"] is None:
            lines.append(f"  {c['row']}: error {_pct(c['error'])} %, no equal bit-width as good")
        else:
            lines.append(f"  {c['row']}: {c['weight_memory_bits'] / 8 / 1024:.1f} KiB, error "
                         f"{_pct(c['error'])} % vs {c['equal_row']} "
                         f"{c['equal_weight_memory_bits'] / 8 / 1024:.1f} KiB, error "
                         f"{_pct(c['equal_error'])} %: "
                         + (f"{100 * c['smaller_by']:.1f} % smaller" if c["smaller_by"] >= 0
                            else f"{-100 * c['smaller_by']:.1f} % larger"))
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, finetuned: bool,
         memory: str = "weight_memory_bits") -> str:
    """Error vs memory (``memory`` of each row) with :func:`symog_jax.plots.error_vs_memory`:
    equal and optimized rows, without retraining and (if done) fine-tuned. Returns the line
    to print (the path, or why there is no plot)."""
    points = []
    for kind in ("equal", "optimized"):
        for r in rows:
            if r["kind"] != kind:
                continue
            # only the equal rows are labelled (2b, 3b, ...): the optimized ones crowd
            short = r["label"].replace("equal ", "").replace(" bit", "b") \
                if kind == "equal" else None
            points.append({"group": f"{kind}, no retraining", "label": short,
                           "weight_memory_bits": r[memory], "error": r["test_error"]})
            if finetuned and r.get("test_error_finetuned") is not None:
                points.append({"group": f"{kind}, fine-tuned",
                               "weight_memory_bits": r[memory],
                               "error": r["test_error_finetuned"]})
    try:   # matplotlib is optional (symog_jax.plots imports it when drawing)
        fig = error_vs_memory(points, title="per-layer allocation vs equal bit-widths")
    except ImportError:
        return "matplotlib is not installed: no plot (pip install matplotlib for one)"
    if memory == "cost_bits":
        fig.axes[0].set_xlabel("weights + activations per image (KiB)")
    save_figure_atomic(fig, path, dpi=120)
    return f"plot: {path}"


def train_float_run(workdir: str | Path, epochs: int | None, *,
                    defaults_for: Callable[[str], TrainConfig], fields: Mapping[str, Any],
                    progress: bool = False, data_dir: str | None = None,
                    data_source: str | None = None) -> None:
    """Trains the float run in ``workdir`` for ``epochs`` if it holds no finished one.

    An interrupted float run there is resumed as it was; otherwise the run is
    ``defaults_for(dataset)`` (the training command's defaults for that data set, ``fields``'
    ``dataset`` or ``"mnist"``) with the method ``float`` and ``fields`` (of
    :data:`FLOAT_RUN_FIELDS`) applied. ``epochs=None`` trains nothing.

    Raises:
      FileNotFoundError: no run in ``workdir`` and no ``epochs``.
      ValueError: ``workdir`` holds an unfinished run of another method.
    """
    workdir = Path(workdir)
    if epochs is None and not (workdir / "config.json").is_file():
        raise FileNotFoundError(f"{workdir} is not a run directory (no config.json): pass "
                                "--float-epochs N (and --dataset, --model, ...) to train a "
                                "float network there first")
    if (workdir / "report.json").is_file() or epochs is None:
        return             # finished (reused), or FloatNetwork.from_run says what is missing
    has_checkpoints = (workdir / "checkpoints").is_dir() and any(
        (workdir / "checkpoints").iterdir())
    if has_checkpoints and (workdir / "config.json").is_file():
        config = load_run_config(workdir)        # an interrupted float run: resume it as it was
        if config.method != "float":
            raise ValueError(f"{workdir} holds an unfinished {config.method} run, not a float "
                             "one; use another --workdir")
    else:
        config = defaults_for(fields.get("dataset", "mnist")).replace(
            method="float", method_config=None, **fields)
    config = config.replace(epochs=epochs, workdir=str(workdir), init_from=None,
                            stop_after_epochs=None, progress=progress,
                            data_dir=data_dir if data_dir is not None else config.data_dir,
                            data_source=data_source or config.data_source)
    print(f"training the float network in {workdir} ({config.dataset}, {config.model}, "
          f"{config.epochs} epochs{', resuming' if has_checkpoints else ''})")
    train(config, resume=has_checkpoints)


def evaluate_float(net: FloatNetwork, float_activations: bool = False) -> float:
    """Test error of the float weights (with the run's activation formats, or float ones)."""
    return evaluate(net.eval_step(), net.params, net.batch_stats,
                    {} if float_activations else net.act_formats,
                    net.dataset.test_images, net.dataset.test_labels)["error"]


def run_study(net: FloatNetwork, out: str | Path, settings: StudySettings,
              record: Mapping[str, Any] | None = None) -> dict:
    """Allocates, evaluates (and fine-tunes) every row of the study; prints and writes it.

    Args:
      net: the float network (:meth:`FloatNetwork.from_run`; fine-tuning needs its run).
      out: the output directory (created).
      settings: what to compare.
      record: written as ``settings`` in ``allocation.json`` (default: ``settings``'s fields).

    Returns:
      What ``allocation.json`` holds: ``rows``, ``comparisons``, ``statistics``, ...
    """
    t0 = time.time()
    settings.check()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _describe(net, settings)
    stats = layer_statistics(net, min_bits=settings.min_bits, max_bits=settings.max_bits,
                             kind=settings.sqnr, formats=settings.formats,
                             calibration_size=settings.calibration_size,
                             activations=settings.allocate_activations,
                             act_cost_weight=settings.act_cost_weight)
    print(f"SQNR ({stats.kind}, dB) at {stats.min_bits}..{stats.max_bits} bits:")
    for name, row in zip(stats.names, stats.table_db):
        print(f"  {name:<16} " + " ".join(f"{v:6.1f}" for v in row))
    rows = _evaluate_rows(net, stats, settings, out)
    finetuned = settings.finetune_epochs > 0
    if finetuned:
        _finetune_rows(net, stats, settings, rows, out)
    return _write(net, stats, settings, rows, out, record, t0)


def _describe(net: FloatNetwork, settings: StudySettings) -> None:
    layers = net.quantized_layers()
    print(f"{net.workdir.absolute().name} (epoch {net.epoch}, {net.config.model}, "
          f"{net.dataset.source}): "
          f"quantized layers {', '.join(f'{k} ({v:,})' for k, v in layers.items())}")
    if settings.allocate_activations:
        print("quantized layer inputs (elements per image): " + ", ".join(
            f"{k} ({v:,})" for k, v in net.activation_layers().items())
            + f"; cost weight {settings.act_cost_weight:g}")


def _goals(stats: LayerStatistics, settings: StudySettings) -> list[tuple[str, str, dict]]:
    """``(kind, label, goal)`` of every row: equal bits, budgets, targets, matched SQNRs."""
    total = stats.total_cost
    unit = "b/e" if settings.allocate_activations else "b/w"  # bits per unit of cost / weight
    goals = [("equal", f"equal {b} bit", {"bits": b}) for b in settings.equal_bits]
    goals += [("optimized", f"budget {b:g} {unit}", {"budget_bits": b * total,
                                                     "budget_avg_bits": b})
              for b in settings.budgets]
    goals += [("optimized", f"target {t:g} dB", {"target_sqnr_db": t}) for t in settings.targets]
    if settings.match_equal:      # the least memory with the predicted SQNR of each equal row
        for b in settings.equal_bits:
            if settings.min_bits <= b < settings.max_bits:
                sqnr = stats.predicted_sqnr_db({n: b for n in stats.names})
                goals.append(("optimized", f"SQNR of {b} bit", {"target_sqnr_db": sqnr}))
    return goals


def _evaluate_rows(net: FloatNetwork, stats: LayerStatistics, settings: StudySettings,
                   out: Path) -> list[dict]:
    """One row per goal: its bits and the test error without retraining (each distinct
    allocation evaluated once); optimized rows also get their bits files."""
    with_acts = settings.allocate_activations
    calib = net.calibration_images(settings.calibration_size)
    rows, evaluated = [], {}
    for kind, label, goal in _goals(stats, settings):
        if kind == "equal":
            bits = {n: goal["bits"] for n in stats.names}
        else:
            bits = allocate(stats, target_sqnr_db=goal.get("target_sqnr_db"),
                            budget_bits=goal.get("budget_bits")).as_dict()
        key = tuple(bits[n] for n in stats.names)
        weights, acts = split_bits(bits)
        if key not in evaluated:
            evaluated[key] = evaluate_bits(net, weights, act_bits=acts if with_acts else None,
                                           formats=settings.formats, calibration_images=calib)
        row = _row(kind, label, goal, bits, stats, evaluated[key])
        if kind == "optimized":
            name = label.replace(" ", "-").replace("/", "").replace(".", "p")
            row["bits_file"] = path_in_dir(bits_file(weights, out / "bits" / f"{name}.json"),
                                           out)
            if with_acts:
                row["act_bits_file"] = path_in_dir(
                    bits_file(acts, out / "bits" / f"{name}-act.json"), out)
        rows.append(row)
        shown = "/".join(str(bits[n]) for n in stats.weight_names)
        if with_acts:
            shown += " a " + "/".join(str(bits[n]) for n in stats.activation_names)
        print(f"  {label:<18} bits {shown:<22} {row['cost_bits'] / 8 / 1024:8.1f} KiB  error "
              f"{100 * row['test_error']:.2f} %")
    return rows


def _row(kind: str, label: str, goal: dict, bits: dict, stats: LayerStatistics,
         ev: dict) -> dict:
    in_range = all(stats.min_bits <= b <= stats.max_bits for b in bits.values())
    return {"kind": kind, "label": label, "goal": goal, "bits": bits,
            "avg_bits": stats.cost_bits(bits) / stats.total_cost,
            "weight_memory_bits": ev["weight_memory_bits"],
            "activation_memory_bits": ev.get("activation_memory_bits", 0),
            "cost_bits": stats.cost_bits(bits),
            "model_memory_bits": ev["model_memory_bits"],
            "predicted_sqnr_db": stats.predicted_sqnr_db(bits) if in_range else math.nan,
            "output_sqnr_db": ev.get("output_sqnr_db"), "test_error": ev["test_error"]}


def _finetune_rows(net: FloatNetwork, stats: LayerStatistics, settings: StudySettings,
                   rows: list[dict], out: Path) -> None:
    """Fine-tunes every row (one run per distinct allocation, reused when finished)."""
    with_acts = settings.allocate_activations
    for row in rows:
        print(f"fine-tuning {row['label']} ({settings.finetune_method}, "
              f"{settings.finetune_epochs} epoch(s))")
        key = "b" + "-".join(str(row["bits"][n]) for n in stats.weight_names)
        weights, acts = split_bits(row["bits"])
        if with_acts:
            key += "-a" + "-".join(str(row["bits"][n]) for n in stats.activation_names)
        report = finetune(net, weights, out / "finetune" / key,
                          act_bits=acts if with_acts else None,
                          epochs=settings.finetune_epochs, lr=settings.finetune_lr,
                          method=settings.finetune_method,
                          max_train_examples=settings.finetune_max_examples)
        row["test_error_finetuned"] = report["test_error_quantized"]
        row["finetune_workdir"] = path_in_dir(out / "finetune" / key, out)


def _write(net: FloatNetwork, stats: LayerStatistics, settings: StudySettings, rows: list[dict],
           out: Path, record, t0: float) -> dict:
    """Compares, prints and writes ``allocation.json``, ``allocation.md`` and the plot."""
    with_acts, finetuned = settings.allocate_activations, settings.finetune_epochs > 0
    tol = settings.tolerance / 100
    memory = "cost_bits" if with_acts else "weight_memory_bits"
    comparisons = {"no_retraining": compare(rows, "test_error", tol, memory)}
    if finetuned:
        comparisons["finetuned"] = compare(rows, "test_error_finetuned", tol, memory)
    md = markdown(rows, stats, finetuned)
    what = " (memory: weights + activations per image)" if with_acts else ""
    texts = [comparison_text(comparisons["no_retraining"], "without retraining" + what, tol)]
    if finetuned:
        texts.append(comparison_text(comparisons["finetuned"], "after fine-tuning" + what, tol))
    print("\n" + md + "\n\n" + "\n".join(texts))
    result = {"workdir": path_in_dir(net.workdir, out), "epoch": net.epoch,
              "dataset_source": net.dataset.source, "model": net.config.model,
              "float_test_error": evaluate_float(net, with_acts),
              "quantized_params": stats.total_params, "total_cost": stats.total_cost,
              "statistics": stats.as_dict(), "rows": rows, "comparisons": comparisons,
              "settings": dict(record) if record is not None
              else dataclasses.asdict(settings),
              "seconds": time.time() - t0}
    write_json_atomic(out / "allocation.json", _json_safe(result))
    write_text_atomic(out / "allocation.md", md + "\n\n" + "\n".join(texts) + "\n")
    print(plot(rows, out / "error_vs_memory.png", finetuned, memory))
    print(f"float error {100 * result['float_test_error']:.2f} %; written to "
          f"{out / 'allocation.json'} and {out / 'allocation.md'}")
    return result


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x
