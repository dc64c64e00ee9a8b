"""Train state, the run's base optimizer, and pure jit-compiled train/eval steps.

Nothing here knows a method by name: the method's hooks (``train_params``, ``extra_loss``,
``transform``) and the activation formats in the state decide what a step does.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from symog_jax.methods import Method
from symog_jax.quantizers.activations import quantize_activations

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """Everything a training step reads and writes; a pytree, checkpointed as a whole.

    Attributes:
      step: int32 scalar, optimizer steps taken.
      params: model parameters (``variables['params']``).
      method_vars: the method's own trainable variables (``{}`` for most methods).
      batch_stats: batch-norm statistics (empty dict for models without BN).
      opt_state: optax state over :meth:`trainable` (holds e.g. the fixed-point formats).
      act_formats: ``{layer path: FixedPointFormat}`` for activation quantization (``{}``: off).
      rng: uint32 ``(2,)`` PRNG key for augmentation; folded with ``step`` each step.
    """
    step: jax.Array
    params: PyTree
    method_vars: PyTree
    batch_stats: PyTree
    opt_state: PyTree
    act_formats: PyTree
    rng: jax.Array

    @property
    def trainable(self) -> dict:
        """The tree the optimizer updates: ``{'params': ..., 'method': ...}``."""
        return {"params": self.params, "method": self.method_vars}


def base_optimizer(name: str, lr: float, total_steps: int, *, momentum: float,
                   weight_decay: float, decay_mask: PyTree) -> optax.GradientTransformation:
    """SGD (Nesterov momentum) or AdamW, cosine learning-rate decay over ``total_steps``.

    Weight decay applies where ``decay_mask`` (a bool pytree, or a callable of the params) is
    true; the method decides where that is.
    """
    schedule = optax.cosine_decay_schedule(lr, total_steps)
    if name == "sgd":
        return optax.chain(optax.add_decayed_weights(weight_decay, mask=decay_mask),
                           optax.sgd(schedule, momentum=momentum or None, nesterov=momentum > 0))
    if name == "adam":
        return optax.adamw(schedule, weight_decay=weight_decay, mask=decay_mask)
    raise ValueError(f"unknown optimizer {name!r}; use 'sgd' or 'adam'")


def _variables(params, batch_stats):
    return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


def _donate() -> tuple[int, ...]:
    # XLA:CPU cannot reuse donated buffers and warns on every compile; elsewhere donation saves
    # a copy of the whole state per step.
    return () if jax.default_backend() == "cpu" else (0,)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, method: Method,
                    prepare: Callable[[jax.Array, jax.Array, bool], jax.Array]):
    """A jit-compiled ``(state, images_uint8, labels) -> (state, metrics)``.

    ``prepare(rng, images, train)`` turns uint8 images into normalised, augmented float32 on
    the device. The forward pass uses ``method.train_params`` and the state's activation
    formats; the loss is cross-entropy plus ``method.extra_loss``. The state buffers are donated
    (off on CPU, which cannot reuse them).
    """

    def loss_fn(trainable, state: TrainState, images, labels):
        params = method.train_params(trainable, state.opt_state)
        with quantize_activations(state.act_formats):
            logits, updates = model.apply(_variables(params, state.batch_stats), images,
                                          train=True, mutable=["batch_stats"])
        task = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        loss = task + method.extra_loss(trainable, state.opt_state)
        return loss, (task, logits, updates.get("batch_stats", {}))

    def train_step(state: TrainState, images, labels):
        rng = jax.random.fold_in(state.rng, state.step)
        x = prepare(rng, images, True)
        trainable = state.trainable
        (loss, (task, logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            trainable, state, x, labels)
        updates, opt_state = tx.update(grads, state.opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        metrics = {"loss": loss, "task_loss": task,
                   "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}
        return state.replace(step=state.step + 1, params=trainable["params"],
                             method_vars=trainable["method"], batch_stats=batch_stats,
                             opt_state=opt_state), metrics

    return jax.jit(train_step, donate_argnums=_donate())


def make_eval_step(model: nn.Module, prepare):
    """A jit-compiled ``(params, batch_stats, act_formats, images, labels, valid)
    -> (loss_sum, correct)``.

    ``valid`` (bool ``(B,)``) masks padding so every test example counts exactly once.
    """
    @jax.jit
    def eval_step(params, batch_stats, act_formats, images, labels, valid):
        x = prepare(None, images, False)
        with quantize_activations(act_formats):
            logits = model.apply(_variables(params, batch_stats), x, train=False)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        correct = (jnp.argmax(logits, -1) == labels) & valid
        return jnp.sum(jnp.where(valid, loss, 0.0)), jnp.sum(correct)

    return eval_step
