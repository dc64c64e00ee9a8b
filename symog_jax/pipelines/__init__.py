"""Multi-stage workflows built from the library's parts; the layer the experiment scripts call.

=======================================  ======================================================
module                                   workflow
=======================================  ======================================================
:mod:`~symog_jax.pipelines.recipes`      a training run with its figures; float start, then
                                         the quantizing method from it (``train_from_float``)
:mod:`~symog_jax.pipelines.allocation`   float run -> per-layer bits -> evaluation ->
                                         fine-tuning, and the comparison with equal bits
:mod:`~symog_jax.pipelines.export`       a run directory -> integer export, and its check
:mod:`~symog_jax.pipelines.figures`      a run directory -> PNG figures
:mod:`~symog_jax.pipelines.cli`          the training command of ``experiments/``
=======================================  ======================================================

Nothing below this package imports it: the trainer returns its report, and ``plots`` and
``export`` take data, not run directories.
"""

from symog_jax.pipelines.export import export_run
from symog_jax.pipelines.figures import load_metrics, load_report, save_run_figures
from symog_jax.pipelines.recipes import (FLOAT_STAGE_DIR, float_stage_config, train_from_float,
                                         train_run)

__all__ = ["FLOAT_STAGE_DIR", "export_run", "float_stage_config", "load_metrics", "load_report",
           "save_run_figures", "train_from_float", "train_run"]
