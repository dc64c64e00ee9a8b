"""End-to-end training: config, run building, jit steps, checkpoints, evaluation, the epoch loop.

=====================================  ========================================================
module                                 what
=====================================  ========================================================
:mod:`~symog_jax.training.config`      :class:`TrainConfig`, reading a run's ``config.json``
:mod:`~symog_jax.training.run`         building a run (model, method, state, step), restoring
:mod:`~symog_jax.training.evaluation`  test error of float and finalized weights, ``eval.json``
:mod:`~symog_jax.training.loop`        :func:`train`: the epoch loop, metrics, checkpoints
:mod:`~symog_jax.training.variables_io`  variables files (``init_from``, ``distill_from``)
=====================================  ========================================================

Multi-stage workflows (a float start, bit allocation, export, figures) are in
:mod:`symog_jax.pipelines`.
"""

from symog_jax.training.batch_norm import recalibrate_batch_stats
from symog_jax.training.checkpoint import Checkpointer
from symog_jax.training.config import DistillConfig, TrainConfig, config_from_file, load_run_config
from symog_jax.training.distill import Teacher, distillation_loss
from symog_jax.training.evaluation import (evaluate, evaluate_float_and_quantized,
                                           evaluate_run, finalize)
from symog_jax.training.interrupt import TrainingInterrupted
from symog_jax.training.loop import TrainingDiverged, train
from symog_jax.training.run import (CALIBRATION_BATCH, BuiltRun, build_run, restore_run,
                                    training_split)
from symog_jax.training.sharding import DataParallel, initialize_distributed
from symog_jax.training.steps import TrainState, base_optimizer, make_eval_step, make_train_step
from symog_jax.training.variables_io import load_variables, save_variables

__all__ = ["CALIBRATION_BATCH", "BuiltRun", "Checkpointer", "DataParallel", "DistillConfig",
           "Teacher", "TrainConfig", "TrainState", "TrainingDiverged", "TrainingInterrupted",
           "base_optimizer", "build_run", "config_from_file", "distillation_loss", "evaluate",
           "evaluate_float_and_quantized", "evaluate_run", "finalize", "initialize_distributed",
           "load_run_config", "load_variables", "make_eval_step", "make_train_step",
           "recalibrate_batch_stats", "restore_run", "save_variables", "train", "training_split"]
