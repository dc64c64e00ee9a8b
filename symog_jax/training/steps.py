"""Train state, optimizer per method, and pure jit-compiled train/eval steps."""

from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from symog_jax.quantizers.masks import is_weight, resolve_mask
from symog_jax.quantizers.policy import find_formats
from symog_jax.transforms import annealing_schedule, fake_quantize, symog, track_formats
from symog_jax.training.config import TrainConfig

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """Everything a training step reads and writes; a pytree, checkpointed as a whole.

    Attributes:
      step: int32 scalar, optimizer steps taken.
      params: model parameters (``variables['params']``).
      batch_stats: batch-norm statistics (empty dict for models without BN).
      opt_state: optax state (holds the fixed-point formats for ``symog``/``ste``).
      rng: uint32 ``(2,)`` PRNG key for augmentation; folded with ``step`` each step.
    """
    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: PyTree
    rng: jax.Array


def _decay_mask(config: TrainConfig, params: PyTree) -> PyTree:
    """Weight decay on kernels only; under ``symog`` not on quantized kernels unless asked."""
    if config.method == "symog" and not config.decay_quantized:
        return jax.tree_util.tree_map(lambda _: False, params)
    return resolve_mask(lambda path, leaf: is_weight(path, leaf), params)


def build_optimizer(config: TrainConfig, steps_per_epoch: int,
                    params: PyTree) -> optax.GradientTransformation:
    """The optax transform for ``config.method``.

    * float/ptq: SGD (Nesterov momentum) or Adam with cosine learning-rate decay and weight decay
      on kernels;
    * symog: the same optimizer followed by ``symog(...)`` in decoupled form: after a float
      warm-up, each step removes a fraction (ramped geometrically from ``strength_start`` to
      ``strength_end``) of every quantized weight's distance to its nearest level, then clips
      to the representable range. Formats are re-chosen once at the end of the warm-up;
    * ste: the optimizer plus :func:`track_formats` (formats re-chosen every few epochs).
    """
    total = config.epochs * steps_per_epoch
    lr = optax.cosine_decay_schedule(config.lr, total)
    decay = _decay_mask(config, params)
    if config.optimizer == "sgd":
        base = optax.chain(optax.add_decayed_weights(config.weight_decay, mask=decay),
                           optax.sgd(lr, momentum=config.momentum or None, nesterov=config.momentum > 0))
    else:
        base = optax.adamw(lr, weight_decay=config.weight_decay, mask=decay)
    policy = dict(per_channel=config.per_channel)
    if config.method == "symog":
        warmup = int(round(config.warmup_epochs * steps_per_epoch))
        ramp = max(1, int(round((total - warmup) * config.anneal_fraction)))
        strength = annealing_schedule(config.strength_start, config.strength_end, ramp,
                                      warmup_steps=warmup)
        if warmup:
            policy.update(reestimate_every=warmup, reestimate_until=warmup)
        if config.prior_placement == "coupled":
            return symog(config.bits, optimizer=base, strength=strength, sigma=1.0,
                         sigma_in_steps=False, **policy)
        return optax.chain(base, symog(config.bits, strength=strength, sigma=1.0,
                                       sigma_in_steps=False, **policy))
    if config.method == "ste":
        if config.ste_reestimate_epochs:
            policy.update(reestimate_every=config.ste_reestimate_epochs * steps_per_epoch)
        return optax.chain(base, track_formats(config.bits, **policy))
    return base


def _variables(params, batch_stats):
    return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, config: TrainConfig,
                    prepare: Callable[[jax.Array, jax.Array, bool], jax.Array]):
    """A jit-compiled ``(state, images_uint8, labels) -> (state, metrics)``.

    ``prepare(rng, images, train)`` turns uint8 images into normalised, augmented float32 on
    the device. Under ``ste`` the forward pass uses straight-through fake-quantized kernels.
    """
    straight_through = config.method == "ste"

    def loss_fn(params, state: TrainState, images, labels):
        if straight_through:
            params = fake_quantize(params, find_formats(state.opt_state))
        logits, updates = model.apply(_variables(params, state.batch_stats), images, train=True,
                                      mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, (logits, updates.get("batch_stats", {}))

    @jax.jit
    def train_step(state: TrainState, images, labels):
        rng = jax.random.fold_in(state.rng, state.step)
        x = prepare(rng, images, True)
        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state, x, labels)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}
        return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                             opt_state=opt_state), metrics

    return train_step


def make_eval_step(model: nn.Module, prepare):
    """A jit-compiled ``(params, batch_stats, images, labels, valid) -> (loss_sum, correct)``.

    ``valid`` (bool ``(B,)``) masks padding so every test example counts exactly once.
    """
    @jax.jit
    def eval_step(params, batch_stats, images, labels, valid):
        x = prepare(None, images, False)
        logits = model.apply(_variables(params, batch_stats), x, train=False)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        correct = (jnp.argmax(logits, -1) == labels) & valid
        return jnp.sum(jnp.where(valid, loss, 0.0)), jnp.sum(correct)

    return eval_step
