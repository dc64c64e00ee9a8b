"""Holistic filter pruning as a three-stage workflow (``python -m experiments.prune``).

A. ``<workdir>/prune``: a run of the ``hfp`` method around the weight method (or, with the L1
   selection, a plain run of it); B. ``<workdir>/thin``: channels selected for the exact rates
   and physically removed; C. ``<workdir>/finetune``: the thin registry model trained on. Each
   stage resumes; :func:`prune` writes ``prune_report.json``. The selection strategies
   (:data:`SELECTIONS`) are objects, so the workflow never branches on a method's name.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from symog_jax.data import ImageDataset
from symog_jax.files import path_in_dir, save_figure_atomic, write_json_atomic
from symog_jax.methods import get_method_class
from symog_jax.methods.hfp import GATES, HFP, HFPConfig
from symog_jax.models import count_params
from symog_jax.plots import kept_channels_bars
from symog_jax.pruning import architecture, architecture_of, complexity, traced_complexity
from symog_jax.pruning.baselines import channel_l1_norms, l1_select
from symog_jax.pruning.complexity import architecture_from_params
from symog_jax.pruning.gates import apply_masks, check_budget
from symog_jax.pruning.thin import achieved_reductions, select_channels, thin_variables
from symog_jax.training import TrainConfig, train
from symog_jax.training.evaluation import evaluate, evaluate_float_and_quantized
from symog_jax.training.loop import RESUMABLE_CHANGES
from symog_jax.training.run import build_run, restore_run, training_split
from symog_jax.training.steps import make_eval_step
from symog_jax.training.variables_io import save_variables

#: Fields of :class:`HFPConfig` given as flags of this command (the rest come from the run).
HFP_FLAGS = ("prune_params", "prune_macs", "budget_weight", "gate_lr", "gate_init",
             "gate_fraction", "budget_sides", "min_keep")
#: Weight of the L1-norm rank that breaks ties between equal gates (gates move in larger steps).
TIE_BREAK = 1e-4


def _stage(config: TrainConfig, dataset: ImageDataset) -> dict:
    """Trains ``config`` unless its run has finished (then its report); resumes checkpoints."""
    workdir = Path(config.workdir)
    report_path = workdir / "report.json"
    if report_path.is_file():
        report = json.loads(report_path.read_text())
        saved = report.get("config", {})
        now = json.loads(json.dumps(config.flat()))     # reports hold the flat form
        diffs = sorted(k for k in now
                       if k not in RESUMABLE_CHANGES and saved.get(k, now[k]) != now[k])
        if diffs:
            raise ValueError(f"{workdir} holds a finished run with another config "
                             f"({', '.join(diffs)}); use a new --workdir")
        print(f"{workdir.name}: finished run reused ({report_path})")
        return report
    ckpts = workdir / "checkpoints"
    resume = ckpts.is_dir() and any(ckpts.iterdir())
    return train(config, dataset=dataset, resume=resume)


class GateSelection:
    """``hfp``: stage A trains the gates (the :class:`HFPConfig` around the weight method);
    channels are kept by gate, ties broken by L1-norm rank."""

    def __init__(self, hfp: HFPConfig):
        self.hfp = hfp
        self.min_keep = hfp.min_keep

    def stage_a(self, base: TrainConfig, **changes) -> TrainConfig:
        return base.replace(method=HFP.name, method_config=self.hfp, **changes)

    def keep(self, arch, state, built, prune_params, prune_macs):
        """``(kept indices, gated params, whether the selection is the open gates)``."""
        norms = channel_l1_norms(arch, state.params)
        gates = built.method.masks(state.trainable)              # 0/1, this run's gates
        raw = state.method_vars[GATES]
        scores = {}
        for name in arch.decisions:
            n = len(norms[name])
            rank = np.argsort(np.argsort(norms[name], kind="stable"), kind="stable")
            scores[name] = np.asarray(raw[name], np.float64) + TIE_BREAK * rank / max(n - 1, 1)
        keep = select_channels(arch, scores, prune_params=prune_params, prune_macs=prune_macs,
                               min_keep=self.min_keep)
        same = all(np.array_equal(np.flatnonzero(np.asarray(gates[d])), keep[d])
                   for d in arch.decisions)
        return keep, apply_masks(arch, state.params, gates), same


class L1Selection:
    """``l1``: stage A is a plain run of the weight method; the same rate in every decision,
    the channels with the largest L1 norm kept."""

    min_keep = 0.0

    def __init__(self, hfp: HFPConfig):
        del hfp

    def stage_a(self, base: TrainConfig, **changes) -> TrainConfig:
        return base.replace(**changes)

    def keep(self, arch, state, built, prune_params, prune_macs):
        keep = l1_select(arch, state.params, prune_macs=prune_macs, prune_params=prune_params)
        return keep, None, None


#: ``--selection`` choices.
SELECTIONS = {"hfp": GateSelection, "l1": L1Selection}


def _errors(built, state, dataset, precision: str, params=None) -> float:
    """Float test error of ``params`` (default: the state's) with the state's statistics."""
    eval_step = make_eval_step(built.model, built.prepare, parallel=built.parallel,
                               precision=precision)
    params = state.params if params is None else params
    return evaluate(eval_step, params, state.batch_stats, state.act_formats,
                    dataset.test_images, dataset.test_labels, built.parallel)["error"]


def prune(base: TrainConfig, dataset: ImageDataset, *, prune_macs: float | None = None,
          prune_params: float | None = None, epochs: int, finetune_epochs: int,
          finetune_lr: float | None = None, selection: str = "hfp",
          hfp_fields: dict | None = None, plots: bool = True) -> dict:
    """Stages A-C (module docstring) in ``base.workdir``; returns the pruning report.

    Args:
      base: the run's settings with the weight method (``base.method``, not ``hfp``); its
        ``workdir`` holds the stages; ``epochs``/``init_from`` are set per stage.
      dataset: the data.
      prune_macs, prune_params: fractions to remove (at least one).
      epochs: stage A epochs; finetune_epochs: stage C epochs (0: no fine-tuning).
      finetune_lr: stage C's peak learning rate (default ``base.lr``).
      selection: ``hfp`` (gates) or ``l1`` (L1 norm, the same rate in every decision).
      hfp_fields: more :class:`HFPConfig` fields (``budget_weight``, ``gate_lr``, ...).

    Raises:
      ValueError: (one line, before any training) rates out of (0, 1) or out of reach,
        a ``base`` whose method is pruning already (hfp), an unknown selection.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {tuple(SELECTIONS)}, got {selection!r}")
    if isinstance(base.method_config, HFPConfig):
        raise ValueError("the method is the weight method inside the pruning (e.g. float or "
                         "symog), not hfp")
    if isinstance(finetune_epochs, bool) or not isinstance(finetune_epochs, int) \
            or finetune_epochs < 0:
        raise ValueError(f"finetune_epochs must be an integer >= 0, got {finetune_epochs!r}")
    workdir = Path(base.workdir)        # as given: the stages' configs name no machine path
    arch = architecture(base.model, dataset.num_classes, dataset.image_shape, width=base.width,
                        widths=base.widths)
    hfp = HFPConfig(prune_params=prune_params, prune_macs=prune_macs, inner_method=base.method,
                    inner=base.method_config, **(hfp_fields or {}))
    strategy = SELECTIONS[selection](hfp)
    check_budget(arch, prune_params, prune_macs, strategy.min_keep)
    stage_a = strategy.stage_a(base, epochs=epochs, workdir=str(workdir / "prune"),
                               stop_after_epochs=None, init_from=base.init_from)
    headline = "quantized" if get_method_class(base.method).trains_quantized else "float"
    print(f"stage A: {stage_a.describe()} {base.model}, {epochs} epochs, in {stage_a.workdir}")
    report_a = _stage(stage_a, dataset)
    if "stopped_at_epoch" in report_a:
        return report_a

    # -- stage B: select, remove, evaluate --------------------------------------------------
    thin_dir = workdir / "thin"
    thin_dir.mkdir(parents=True, exist_ok=True)
    _, built_a, state_a, _ = restore_run(stage_a.workdir, dataset)
    state_a = jax.device_get(built_a.parallel.local_copy(state_a))
    arch_a = architecture_from_params(built_a.model, state_a.params, dataset.image_shape)
    keep, gated_params, selection_is_gates = strategy.keep(arch_a, state_a, built_a,
                                                           prune_params, prune_macs)
    widths, thin = thin_variables(arch_a, {"params": state_a.params,
                                           "batch_stats": state_a.batch_stats}, keep)
    var_path = save_variables(thin_dir / "variables.msgpack", thin)
    errors = {"before_pruning": {"float": _errors(built_a, state_a, dataset, base.precision),
                                 "quantized": None},
              "gated": {"float": None, "quantized": None}}
    if gated_params is not None:
        errors["gated"] = {"float": _errors(built_a, state_a, dataset, base.precision,
                                            gated_params),
                           "quantized": report_a["test_error_quantized"]}
    else:
        errors["before_pruning"]["quantized"] = report_a["test_error_quantized"]

    ft = base.replace(widths=widths, init_from=str(var_path), epochs=max(finetune_epochs, 1),
                      lr=base.lr if finetune_lr is None else finetune_lr,
                      workdir=str(workdir / "finetune"), stop_after_epochs=None)
    train_x, _, steps = training_split(ft, dataset)
    built_t = build_run(ft, dataset, train_x, steps)
    eval_t = make_eval_step(built_t.model, built_t.prepare, parallel=built_t.parallel,
                            precision=ft.precision)
    f_eval, q_eval, _ = evaluate_float_and_quantized(built_t.method, built_t.state, eval_t,
                                                     dataset, built_t.parallel)
    errors["after_removal"] = {"float": f_eval["error"], "quantized": q_eval["error"]}
    thin_arch = architecture_of(arch_a.model(widths), dataset.image_shape)
    thin_params, thin_macs = complexity(thin_arch, widths)
    traced_macs = sum(m for _, m in traced_complexity(built_t.model, dataset.image_shape)
                      .values())
    full_params, full_macs = complexity(arch, arch.full)
    write_json_atomic(thin_dir / "thin.json", {
        "widths": list(widths), "keep": {k: v.tolist() for k, v in keep.items()},
        "errors_after_removal": errors["after_removal"]}, indent=1)

    # -- stage C: fine-tune the thin network ------------------------------------------------
    if finetune_epochs > 0:
        print(f"stage C: fine-tuning the thin {base.model} (widths "
              f"{','.join(map(str, widths))}), {finetune_epochs} epochs, in {ft.workdir}")
        report_c = _stage(ft, dataset)
        if "stopped_at_epoch" in report_c:
            return report_c
        errors["after_finetune"] = {"float": report_c["test_error_float"],
                                    "quantized": report_c["test_error_quantized"]}
    else:
        errors["after_finetune"] = {"float": None, "quantized": None}

    counted = count_params(thin["params"])
    rp, rm = 1.0 - thin_params / full_params, 1.0 - thin_macs / full_macs
    report = {
        "model": base.model, "dataset": base.dataset, "dataset_source": dataset.source,
        "selection": selection, "method": base.method, "headline": headline,
        "requested": {"prune_params": prune_params, "prune_macs": prune_macs},
        "achieved": {"prune_params": rp, "prune_macs": rm},
        "full": {"params": int(full_params), "macs": int(full_macs),
                 "widths": list(arch.full)},
        "thin": {"params": int(thin_params), "macs": int(thin_macs), "widths": list(widths),
                 "params_counted": int(counted), "macs_traced": int(traced_macs)},
        "kept_channels": {d: {"kept": int(w), "total": int(f)}
                          for d, w, f in zip(arch.decisions, widths, arch.full)},
        "selection_is_gates": selection_is_gates,
        "errors": errors,
        "epochs": {"prune": epochs, "finetune": finetune_epochs},
        "finetune_lr": ft.lr,
        # relative to this report's directory (resolve_in_dir reads them)
        "stages": {"prune": path_in_dir(stage_a.workdir, workdir),
                   "thin": path_in_dir(thin_dir, workdir),
                   "finetune": path_in_dir(ft.workdir, workdir) if finetune_epochs > 0
                   else None},
    }
    if arch.full != arch_a.full:   # a run started from init_from of another width: unlikely
        report["achieved_vs_stage_a"] = dict(zip(("prune_params", "prune_macs"),
                                                 achieved_reductions(arch_a, widths)))
    write_json_atomic(workdir / "prune_report.json", report)
    print(table(report))
    if plots:
        try:
            fig = kept_channels_bars(report, title=f"{base.model} {selection}: kept channels "
                                     f"(MACs -{100 * rm:.1f} %, params -{100 * rp:.1f} %)")
            save_figure_atomic(fig, workdir / "kept_channels.png", dpi=110)
            print(f"figure: {workdir / 'kept_channels.png'}")
        except ImportError as e:
            print(f"no figure ({e})")
    print(f"report: {workdir / 'prune_report.json'}")
    return report


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def table(report: dict) -> str:
    """The report as text: rates, then errors (%), then kept channels per decision."""
    req, ach = report["requested"], report["achieved"]
    lines = [f"{report['model']} on {report['dataset']} ({report['selection']}, weights "
             f"{report['method']}): thin network {report['thin']['params']:,} params, "
             f"{report['thin']['macs']:,} MACs (full {report['full']['params']:,} / "
             f"{report['full']['macs']:,})",
             "| reduction | requested | achieved |", "|---|---|---|"]
    for key, label in (("prune_params", "parameters"), ("prune_macs", "MACs")):
        lines.append(f"| {label} | {_pct(req[key])} % | {_pct(ach[key])} % |")
    lines += ["", "| test error % | float | quantized |", "|---|---|---|"]
    for key, label in (("before_pruning", "before pruning (all channels)"),
                       ("gated", "gates applied"), ("after_removal", "after removal"),
                       ("after_finetune", "after fine-tuning")):
        e = report["errors"][key]
        lines.append(f"| {label} | {_pct(e['float'])} | {_pct(e['quantized'])} |")
    lines += ["", "kept channels: " + ", ".join(
        f"{d} {v['kept']}/{v['total']}" for d, v in report["kept_channels"].items())]
    return "\n".join(lines)
