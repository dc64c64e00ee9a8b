"""End-to-end training: config, train state, jit steps, checkpoints, the epoch loop."""

from symog_jax.training.checkpoint import Checkpointer
from symog_jax.training.config import METHODS, TrainConfig
from symog_jax.training.loop import evaluate, quantized_params, train
from symog_jax.training.steps import TrainState, build_optimizer, make_eval_step, make_train_step

__all__ = ["METHODS", "Checkpointer", "TrainConfig", "TrainState", "build_optimizer", "evaluate",
           "make_eval_step", "make_train_step", "quantized_params", "train"]
