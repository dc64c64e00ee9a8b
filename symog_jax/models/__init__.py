"""Flax linen image classifiers (NHWC float32 in, float32 logits out).

All models share the call ``model.apply(variables, x, train)`` and an ``act``
attribute for injecting (quantized) activations. Each is built from the layers and functions
of :mod:`symog_jax.models.structure`, so ``model.structure(input_shape)`` records its nodes in
call order, tensor flow and channel decisions from the very code that defines it (pruning and
the integer program read nothing else). Weight leaves keep Flax's
default names (``kernel``, ``bias``; BN ``scale``/``bias``), and models with
BatchNorm keep running statistics in the ``batch_stats`` collection.

Example:
  >>> import functools, jax, jax.numpy as jnp
  >>> from symog_jax.models import create_model, init_variables, count_params
  >>> model = create_model("vgg7", num_classes=10, width=0.25)
  >>> variables = init_variables(model, jax.random.key(0), (2, 32, 32, 3))
  >>> sorted(variables), count_params(variables["params"])
  (['batch_stats', 'params'], 814826)
  >>> x = jnp.zeros((2, 32, 32, 3), jnp.float32)
  >>> train_apply = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))
  >>> logits, updates = train_apply(variables, x)
  >>> logits.shape, sorted(updates)
  ((2, 10), ['batch_stats'])
"""

from symog_jax.models.densenet import DenseLayer, DenseNet, Transition, densenet40, densenet_bc100
from symog_jax.models.layers import scale_width
from symog_jax.models.lenet import LeNet5
from symog_jax.models.registry import MODEL_NAMES, count_params, create_model, init_variables
from symog_jax.models.resnet import BasicBlock, ResNet, resnet20, resnet32, resnet56
from symog_jax.models.resnet_imagenet import ImageNetResNet, resnet18, resnet50
from symog_jax.models.structure import Structure, describe
from symog_jax.models.vgg import VGG7, VGG11

__all__ = [
    "MODEL_NAMES",
    "BasicBlock",
    "DenseLayer",
    "DenseNet",
    "ImageNetResNet",
    "LeNet5",
    "ResNet",
    "Structure",
    "Transition",
    "VGG7",
    "VGG11",
    "count_params",
    "create_model",
    "densenet40",
    "densenet_bc100",
    "describe",
    "init_variables",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet50",
    "resnet56",
    "scale_width",
]
