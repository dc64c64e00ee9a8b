"""Train state, the run's base optimizer, and pure jit-compiled train/eval steps.

Nothing here knows a method by name: the method's hooks (``train_params``, ``extra_loss``,
``transform``) and the activation formats in the state decide what a step does.

Given a :class:`~symog_jax.training.sharding.DataParallel`, the steps are jitted with explicit
shardings: the batch split along the mesh axis ``"data"``, the state and the metrics
replicated; the mean loss and the batch-norm statistics are then those of the global batch.

Precision (``"float32"`` or ``"bf16"``): with ``"bf16"`` the forward and backward pass run in
bfloat16 -- the normalised images and the parameters the forward pass uses
(``method.train_params``, i.e. after any fake quantization in float32) are cast to bfloat16, so
every conv/dense product and activation is bfloat16 -- while the trainable parameters, their
gradients, the optimizer state (SYMOG's prior and pull, the formats), the weight rounding, the
logits' softmax cross-entropy and the batch-norm statistics (flax reduces them in float32) stay
float32.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from symog_jax.methods import Method
from symog_jax.quantizers.activations import quantize_activations
from symog_jax.quantizers.pact import PACTRange
from symog_jax.training.distill import Teacher, distillation_loss
from symog_jax.training.sharding import DataParallel

PyTree = Any

#: ``TrainConfig.precision`` values and the dtype the forward/backward pass computes in.
PRECISIONS = {"float32": jnp.float32, "bf16": jnp.bfloat16}


def compute_dtype(precision: str):
    """The activation/compute dtype of ``precision`` (``"float32"`` or ``"bf16"``)."""
    try:
        return PRECISIONS[precision]
    except KeyError:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}"
                         ) from None


def cast_floating(tree: PyTree, dtype) -> PyTree:
    """``tree`` with its floating leaves cast to ``dtype`` (integers etc. unchanged).

    Differentiable: the gradient of a cast leaf comes back in the leaf's own dtype.
    """
    return jax.tree_util.tree_map(
        lambda a: a.astype(dtype) if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a,
        tree)


@flax.struct.dataclass
class TrainState:
    """Everything a training step reads and writes; a pytree, checkpointed as a whole.

    Attributes:
      step: int32 scalar, optimizer steps taken.
      params: model parameters (``variables['params']``).
      method_vars: the method's own trainable variables (``{}`` for most methods).
      batch_stats: batch-norm statistics (empty dict for models without BN).
      opt_state: optax state over :meth:`trainable` (holds e.g. the fixed-point formats).
      act_formats: ``{layer path: FixedPointFormat or PACTRange}`` for activation
        quantization (``{}``: off); the ``alpha`` of each learned range
        (:class:`~symog_jax.quantizers.pact.PACTRange`) trains with the network.
      rng: uint32 ``(2,)`` PRNG key for augmentation; folded with ``step`` each step.
      act_opt_state: optax state of the learned activation ranges' own optimizer (``()``
        when there are none): kept apart from ``opt_state`` so that a method's transform
        never sees a clip as a weight.
    """
    step: jax.Array
    params: PyTree
    method_vars: PyTree
    batch_stats: PyTree
    opt_state: PyTree
    act_formats: PyTree
    rng: jax.Array
    act_opt_state: PyTree = ()

    @property
    def trainable(self) -> dict:
        """The tree the optimizer updates: ``{'params': ..., 'method': ...}``."""
        return {"params": self.params, "method": self.method_vars}


#: Smallest learned activation clip: a step cannot shrink to zero (PACT's alpha is positive).
MIN_ACT_ALPHA = 1e-3


def learned_alphas(act_formats) -> dict:
    """``{path: alpha}`` of the :class:`~symog_jax.quantizers.pact.PACTRange` entries."""
    return {p: f.alpha for p, f in act_formats.items() if isinstance(f, PACTRange)}


def with_alphas(act_formats, alphas: dict) -> dict:
    """``act_formats`` with the learned ranges' ``alpha`` replaced by ``alphas``."""
    return {**act_formats, **{p: act_formats[p].replace(alpha=a) for p, a in alphas.items()}}


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


def _donate(donate: bool | None) -> tuple[int, ...]:
    # Default: donate except on CPU, so that callers stepping a state by hand on CPU may keep
    # looking at the state they passed in. The trainer owns its state and always donates.
    if donate is None:
        donate = jax.default_backend() != "cpu"
    return (0,) if donate else ()


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, method: Method,
                    prepare: Callable[[jax.Array, jax.Array, bool], jax.Array], *,
                    parallel: DataParallel | None = None, precision: str = "float32",
                    donate: bool | None = None, teacher: Teacher | None = None,
                    act_tx: optax.GradientTransformation | None = None):
    """A jit-compiled ``(state, images_uint8, labels) -> (state, metrics)``.

    ``prepare(rng, images, train)`` turns uint8 images ``(B, H, W, C)`` into normalised,
    augmented float32 on the device; ``labels`` are int32 ``(B,)``. The forward pass uses
    ``method.train_params`` and the state's activation formats, in the dtype of ``precision``
    (see the module docstring); the loss is cross-entropy plus ``method.extra_loss``, float32.
    ``metrics`` holds float32 scalars ``loss``, ``task_loss``, ``accuracy`` over the batch.

    Args:
      parallel: shard the batch over its mesh and replicate the state (explicit
        ``in_shardings``/``out_shardings``); ``None``: plain ``jax.jit`` (one device).
      precision: ``"float32"`` or ``"bf16"``.
      donate: donate the state's buffers to the step (the input state is deleted);
        ``None``: everywhere but on CPU.
      teacher: knowledge distillation (:mod:`~symog_jax.training.distill`): the teacher's
        inference-mode logits on the same prepared batch (its variables are an argument of the
        compiled step, replicated, not a constant baked into it); the loss becomes
        ``(1 - w) * cross_entropy + w * distillation_loss + extra_loss`` and ``metrics`` gains
        ``distill_loss``. ``task_loss`` stays the cross-entropy with the labels.
      act_tx: the optimizer of the learned activation ranges (the ``alpha`` of each
        :class:`~symog_jax.quantizers.pact.PACTRange` in ``state.act_formats``, with PACT's
        gradient), its state ``state.act_opt_state``; after each update ``alpha`` is kept
        ``>= MIN_ACT_ALPHA``. ``None``: the ranges stay as they are.
    """
    dtype = compute_dtype(precision)

    def teacher_logits(teacher_vars, images):
        if dtype != jnp.float32:
            teacher_vars = cast_floating(teacher_vars, dtype)
        logits = teacher.model.apply(teacher_vars, images, train=False)
        return jax.lax.stop_gradient(logits.astype(jnp.float32))

    def loss_fn(trainable, alphas, state: TrainState, images, labels, soft_targets):
        params = method.train_params(trainable, state.opt_state)
        if dtype != jnp.float32:
            params, images = cast_floating(params, dtype), images.astype(dtype)
        with quantize_activations(with_alphas(state.act_formats, alphas)):
            logits, updates = model.apply(_variables(params, state.batch_stats), images,
                                          train=True, mutable=["batch_stats"])
        logits = logits.astype(jnp.float32)
        task = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        aux = {"task_loss": task}
        loss = task
        if soft_targets is not None:
            aux["distill_loss"] = distillation_loss(logits, soft_targets, teacher.temperature)
            loss = (1 - teacher.weight) * task + teacher.weight * aux["distill_loss"]
        loss = loss + method.extra_loss(trainable, state.opt_state)
        return loss, (aux, logits, updates.get("batch_stats", {}))

    def train_step(state: TrainState, images, labels, teacher_vars=None):
        rng = jax.random.fold_in(state.rng, state.step)
        x = prepare(rng, images, True)
        soft_targets = None if teacher is None else teacher_logits(
            teacher_vars, x if dtype == jnp.float32 else x.astype(dtype))
        trainable, alphas = state.trainable, learned_alphas(state.act_formats)
        (loss, (aux, logits, batch_stats)), (grads, alpha_grads) = jax.value_and_grad(
            loss_fn, argnums=(0, 1), has_aux=True)(trainable, alphas, state, x, labels,
                                                   soft_targets)
        updates, opt_state = tx.update(grads, state.opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        act_formats, act_opt_state = state.act_formats, state.act_opt_state
        if act_tx is not None and alphas:
            alpha_updates, act_opt_state = act_tx.update(alpha_grads, act_opt_state, alphas)
            alphas = jax.tree.map(lambda a: jnp.maximum(a, MIN_ACT_ALPHA),
                                  optax.apply_updates(alphas, alpha_updates))
            act_formats = with_alphas(act_formats, alphas)
        metrics = {"loss": loss, **aux,
                   "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}
        return state.replace(step=state.step + 1, params=trainable["params"],
                             method_vars=trainable["method"], batch_stats=batch_stats,
                             opt_state=opt_state, act_formats=act_formats,
                             act_opt_state=act_opt_state), metrics

    if parallel is None:
        step = jax.jit(train_step, donate_argnums=_donate(donate))
        teacher_vars = None if teacher is None else jax.device_put(teacher.variables)
    else:
        rep, batch = parallel.replicated, parallel.batch
        step = jax.jit(train_step, in_shardings=(rep, batch, batch) + ((rep,) if teacher else ()),
                       out_shardings=(rep, rep), donate_argnums=_donate(donate))
        teacher_vars = None if teacher is None else parallel.replicate(teacher.variables)
    if teacher is None:
        return step
    return functools.wraps(train_step)(
        lambda state, images, labels: step(state, images, labels, teacher_vars))


def make_eval_step(model: nn.Module, prepare, *, parallel: DataParallel | None = None,
                   precision: str = "float32"):
    """A jit-compiled ``(params, batch_stats, act_formats, images, labels, valid)
    -> (loss_sum, correct)``.

    ``images`` uint8 ``(B, H, W, C)``, ``labels`` int32 ``(B,)``; ``valid`` (bool ``(B,)``)
    masks padding so every test example counts exactly once. ``loss_sum`` (float32) and
    ``correct`` (int32) are sums over the valid examples. The forward pass computes in the
    dtype of ``precision``, as in training; ``parallel`` shards the batch over its mesh.
    """
    dtype = compute_dtype(precision)

    def eval_step(params, batch_stats, act_formats, images, labels, valid):
        x = prepare(None, images, False)
        if dtype != jnp.float32:
            params, x = cast_floating(params, dtype), x.astype(dtype)
        with quantize_activations(act_formats):
            logits = model.apply(_variables(params, batch_stats), x, train=False)
        logits = logits.astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        correct = (jnp.argmax(logits, -1) == labels) & valid
        return jnp.sum(jnp.where(valid, loss, 0.0)), jnp.sum(correct)

    if parallel is None:
        return jax.jit(eval_step)
    rep, batch = parallel.replicated, parallel.batch
    return jax.jit(eval_step, in_shardings=(rep, rep, rep, batch, batch, batch),
                   out_shardings=(rep, rep))
