"""Knowledge distillation from a trained float network (the teacher) into the trained one.

The quantizing stage of a two-stage recipe starts from a float network; that network (or a
better one of any architecture for the same data) can also *teach* it: the loss adds the
Kullback-Leibler divergence from the teacher's softened class probabilities to the student's
(Hinton et al., 2015). The teacher runs in inference mode (running batch-norm statistics, no
gradient) on the same augmented batch as the student; nothing of it is trained or checkpointed,
so a distilled run's state and checkpoints are those of a plain run.

Method-agnostic: the train step applies it to whatever method trains (``TrainConfig.distill_*``).
The teacher of ``TrainConfig.distill.teacher`` is loaded by the run builder
(:func:`~symog_jax.training.run.load_teacher`) and handed to the train step as a :class:`Teacher`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any


class Teacher(NamedTuple):
    """A frozen network that supplies soft targets.

    Attributes:
      model: the flax module; ``model.apply(variables, images, train=False)`` gives logits
        ``(B, num_classes)``.
      variables: ``{"params": ..., "batch_stats": ...}`` (``batch_stats`` may be absent).
      weight: ``alpha`` in ``(1 - alpha) * cross_entropy + alpha * distillation``, in (0, 1].
      temperature: the softmax temperature ``T`` > 0 of both distributions.
    """
    model: Any
    variables: PyTree
    weight: float
    temperature: float


def distillation_loss(student_logits: jax.Array, teacher_logits: jax.Array,
                      temperature: float) -> jax.Array:
    """``T**2 * mean_b KL(softmax(t_b / T) || softmax(s_b / T))``, a float32 scalar.

    The ``T**2`` factor keeps the gradient's size independent of ``T`` (Hinton et al.). No
    gradient flows into ``teacher_logits``.

    Args:
      student_logits, teacher_logits: ``(B, C)`` floats of the same shape.
      temperature: ``T`` > 0.

    Example:
      >>> s = jnp.array([[2.0, 0.0, -1.0]])
      >>> float(distillation_loss(s, s, 4.0))   # identical predictions: no divergence
      0.0
      >>> round(float(distillation_loss(jnp.zeros((1, 2)), jnp.array([[0.0, 2 * jnp.log(3.0)]]),
      ...                               2.0)), 4)   # teacher (1/4, 3/4), student uniform
      0.5232
    """
    if student_logits.shape != teacher_logits.shape or student_logits.ndim != 2:
        raise ValueError(f"distillation_loss wants two (batch, classes) arrays of one shape, got "
                         f"{student_logits.shape} and {teacher_logits.shape}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    t = jax.nn.log_softmax(jax.lax.stop_gradient(teacher_logits).astype(jnp.float32)
                           / temperature, axis=-1)
    kl = jnp.sum(jnp.exp(t) * (t - s), axis=-1)
    return temperature ** 2 * jnp.mean(kl)
