"""Figures of a run directory: read its report, metrics and newest checkpoint, draw, save PNGs.

The drawing is :func:`symog_jax.plots.run_figures` (plain data in, figures out); this module
reads the run directory for it. The trainer draws nothing: :func:`save_run_figures` is what
``--plots`` (:func:`symog_jax.pipelines.train_run`) and ``python -m experiments.plots`` call.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import jax
import numpy as np

from symog_jax import plots
from symog_jax.data import ImageDataset, load_dataset
from symog_jax.files import save_figure_atomic
from symog_jax.quantizers.masks import path_str
from symog_jax.training.config import load_run_config
from symog_jax.training.run import restore_run

__all__ = ["load_metrics", "load_report", "run_weights", "save_run_figures"]


def load_report(workdir: str | Path) -> dict | None:
    """``<workdir>/report.json`` as a dict, or ``None`` if the run has none (yet)."""
    path = Path(workdir) / "report.json"
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is damaged ({type(e).__name__}: {e})") from None
    if not isinstance(report, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return report


def load_metrics(workdir: str | Path) -> list[dict]:
    """The records of ``<workdir>/metrics.jsonl`` (``[]`` if there is none).

    Raises:
      ValueError: a line is not a JSON object (one line naming the file and line number).
    """
    path = Path(workdir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} line {number} is damaged (JSONDecodeError: {e})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path} line {number} must hold a JSON object")
        records.append(record)
    return records


def run_weights(workdir: str | Path, dataset: ImageDataset | None = None
                ) -> dict[str, np.ndarray]:
    """``{'conv1/kernel': array, ...}``: the params of the run's newest intact checkpoint.

    ``dataset`` is the run's data set (restoring calibrates on it); ``None`` loads it as the
    run's ``config.json`` says.

    Raises:
      FileNotFoundError: not a run directory, or no checkpoint.
    """
    if dataset is None:
        config = load_run_config(workdir)
        dataset = load_dataset(config.dataset, source=config.data_source,
                               data_dir=config.data_dir, allow_bundled=config.allow_bundled)
    _, _, state, _ = restore_run(workdir, dataset)
    return {path_str(p): np.asarray(leaf) for p, leaf in
            jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]}


def save_run_figures(workdir: str | Path, dataset: ImageDataset | None = None, *,
                     histograms: bool = True, dpi: int = 110) -> list[Path]:
    """Writes a run's figures as PNGs into ``workdir`` (next to ``report.json``).

    * ``error_curves.png`` -- float and hard-quantized test error per epoch (``metrics.jsonl``);
    * ``weight_histograms.png`` -- the quantized layers' weights from the newest intact
      checkpoint (:func:`run_weights`) with the levels of the formats in ``report.json``
      marked (needs the run's data set for restoring: ``dataset``, or it is loaded from the
      run's config; skipped with a warning if that fails);
    * ``kept_channels.png`` -- if the report has pruning information
      (:func:`symog_jax.plots.kept_channels`).

    Args:
      workdir: a run directory (``config.json``, ``metrics.jsonl``, ``report.json``,
        ``checkpoints/``); a run without a report (still training) gets its error curves only.
      dataset: the run's :class:`~symog_jax.data.ImageDataset`, if at hand.
      histograms: ``False`` skips restoring the checkpoint.

    Returns:
      The paths written, in the order above.

    Raises:
      FileNotFoundError: ``workdir`` has neither ``metrics.jsonl`` nor ``report.json``.
    """
    workdir = Path(workdir)
    report, metrics = load_report(workdir), load_metrics(workdir)
    if report is None and not metrics:
        raise FileNotFoundError(f"{workdir} has no metrics.jsonl or report.json: not a run "
                                "directory, or no epoch has finished")
    params = None
    if report is not None and histograms and report.get("layers"):
        try:
            params = run_weights(workdir, dataset)
        except Exception as e:  # noqa: BLE001 - a figure is not worth failing the caller
            warnings.warn(f"save_run_figures: no weight histograms for {workdir} "
                          f"({type(e).__name__}: {e})", stacklevel=2)
    written = []
    for name, fig in plots.run_figures(metrics, report, params, tag=workdir.name).items():
        save_figure_atomic(fig, workdir / name, dpi=dpi)
        written.append(workdir / name)
    return written
