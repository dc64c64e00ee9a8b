"""Names available to the docstring examples (``pytest --doctest-modules symog_jax``).

Every doctest already sees the globals of its own module; the fixture below adds the usual
imports and a few small, concrete objects that examples may use without building them (these
names take precedence over a module's own globals of the same name, so none of them should be
a module-level name in ``symog_jax``):

``params``
    ``{'dense': {'kernel': (8, 4) float32, 'bias': (4,) float32}}``: the kernel holds the 32
    evenly spaced values ``linspace(-1, 1, 32)`` (row-major), the bias is zero. These are the
    parameters of ``model`` (``model.apply({'params': params}, x)``).
``grads``
    A gradient pytree shaped like ``params`` with every entry ``0.01``.
``w``, ``b``
    ``params['dense']['kernel']`` and ``params['dense']['bias']``.
``x``
    A ``(2, 8)`` float32 input batch for ``model`` (``linspace(0, 1, 16)``, row-major).
``model``
    A ``flax.linen`` module: one ``nn.Dense(4, name='dense')`` layer.
``opt_state``
    ``symog_jax.symog(2, optax.sgd(0.1), strength=1e-2).init(params)``.

Objects are built once per session, on the first doctest, so ordinary tests pay nothing.
Everything is deterministic (no random numbers).
"""

from __future__ import annotations

import functools

import pytest


@functools.lru_cache(maxsize=None)
def _build_namespace() -> dict:
    """The doctest names, built once per session (imports are inside: nothing at collection)."""
    import flax
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import symog_jax

    class TinyModel(nn.Module):
        """One dense layer named ``dense``: ``(N, 8) -> (N, 4)``."""

        @nn.compact
        def __call__(self, x):
            return nn.Dense(4, name="dense")(x)

    kernel = jnp.linspace(-1.0, 1.0, 32, dtype=jnp.float32).reshape(8, 4)
    bias = jnp.zeros((4,), jnp.float32)
    params = {"dense": {"kernel": kernel, "bias": bias}}
    grads = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 0.01), params)
    x = jnp.linspace(0.0, 1.0, 16, dtype=jnp.float32).reshape(2, 8)
    opt_state = symog_jax.symog(2, optax.sgd(0.1), strength=1e-2).init(params)
    return {
        "jax": jax, "jnp": jnp, "np": np, "optax": optax, "flax": flax, "nn": nn,
        "symog_jax": symog_jax,
        "params": params, "grads": grads, "w": kernel, "b": bias, "x": x,
        "model": TinyModel(), "opt_state": opt_state,
    }


#: Docstring examples that build and initialise whole networks (several seconds each on a 2-core
#: CPU): they run in the end-to-end tier (``-m e2e``), the other doctests in the fast tier.
E2E_DOCTESTS = (
    "symog_jax.models.densenet.DenseNet",
    "symog_jax.models.resnet.ResNet",
    "symog_jax.models.resnet.BasicBlock",
    "symog_jax.models.vgg.VGG7",
    "symog_jax.models.vgg.VGG11",
    "symog_jax.models.lenet.LeNet5",
    "symog_jax.models",
    "symog_jax.quantizers.sqnr.measure_noise_model",
    "symog_jax.quantizers.activations.record_layer_inputs",
    "symog_jax.transforms",
)


def pytest_collection_modifyitems(config, items):
    """Marks the docstring examples named in :data:`E2E_DOCTESTS` as ``e2e``."""
    from _pytest.doctest import DoctestItem

    for item in items:
        if isinstance(item, DoctestItem) and item.name in E2E_DOCTESTS:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(autouse=True)
def _doctest_namespace(request, doctest_namespace):
    """Fills ``doctest_namespace`` for doctest items (a no-op for ordinary tests)."""
    from _pytest.doctest import DoctestItem

    if isinstance(request.node, DoctestItem):
        doctest_namespace.update(_build_namespace())
