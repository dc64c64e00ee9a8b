"""End-to-end training: config, train state, jit steps, checkpoints, the epoch loop."""

from symog_jax.training.batch_norm import recalibrate_batch_stats
from symog_jax.training.checkpoint import Checkpointer
from symog_jax.training.config import TrainConfig
from symog_jax.training.distill import Teacher, distillation_loss
from symog_jax.training.loop import evaluate, finalize, train
from symog_jax.training.sharding import DataParallel, initialize_distributed
from symog_jax.training.steps import TrainState, base_optimizer, make_eval_step, make_train_step

__all__ = ["Checkpointer", "DataParallel", "Teacher", "TrainConfig", "TrainState",
           "base_optimizer", "distillation_loss", "evaluate", "finalize",
           "initialize_distributed", "make_eval_step", "make_train_step",
           "recalibrate_batch_stats", "train"]
