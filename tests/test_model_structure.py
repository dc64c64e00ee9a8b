"""Every registry model's recorded structure matches its Flax module.

Ground truth is the module itself, read independently of the structure: the parameter shapes
of ``jax.eval_shape(model.init)`` and the Conv/Dense calls seen by a separate interceptor
(:func:`symog_jax.pruning.traced_complexity`: input/output shapes of every call).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import pytest

from symog_jax.models import MODEL_NAMES, create_model
from symog_jax.models.structure import OPS, chan_size
from symog_jax.pruning import architecture_of, complexity, traced_complexity

SHAPES = {"lenet5": (28, 28, 1)}


#: Deeper variants of architectures the fast tier already covers: end-to-end tier only.
SLOW_MODELS = ("densenet_bc100", "resnet50")


def _cases():
    for name in MODEL_NAMES:
        yield (pytest.param(name, None, marks=pytest.mark.e2e) if name in SLOW_MODELS
               else (name, None))
    # pruned widths: every decision keeps a different count
    yield "resnet20", "odd"
    yield pytest.param("densenet_bc100", "odd", marks=pytest.mark.e2e)


def _model(name, widths):
    model = create_model(name, 7, width=0.125)
    if widths == "odd":
        full = model.channel_widths()
        model = create_model(name, 7, widths=[max(1, w - 1 - i % 3) for i, w in enumerate(full)])
    return model


@pytest.mark.parametrize("name,widths", list(_cases()))
def test_structure_matches_the_flax_module(name, widths):
    model = _model(name, widths)
    shape = SHAPES.get(name, (32, 32, 3))
    s = model.structure(shape)
    x = jax.ShapeDtypeStruct((1,) + shape, jnp.float32)
    params = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(1),
                            x)["params"]
    flat = {"/".join(k.key for k in p): tuple(v.shape)
            for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    assert s.decisions and len(s.decisions) == len(s.widths) == len(model.channel_widths())
    assert s.nodes[0].op == "input" and s.nodes[0].shape == shape
    assert s.nodes[s.output].shape == (7,)
    seen = set()
    for i, node in enumerate(s.nodes):
        assert node.op in OPS
        assert all(j < i for j in node.inputs)
        if node.op not in ("flatten",):
            assert chan_size(node.chan, s.widths) == node.shape[-1], node
        src = s.nodes[node.inputs[0]] if node.inputs else None
        if node.op == "conv":
            kh, kw = node.attrs["kernel"]
            cin = chan_size(src.chan, s.widths)
            assert flat[node.path + "/kernel"] == (kh, kw, cin, node.shape[-1])
            seen.add(node.path + "/kernel")
        elif node.op == "dense":
            assert flat[node.path + "/kernel"] == (math.prod(src.shape), node.shape[-1])
            seen.add(node.path + "/kernel")
        elif node.op == "batch_norm":
            assert flat[node.path + "/scale"] == (node.shape[-1],)
            seen |= {node.path + "/scale", node.path + "/bias"}
            continue
        else:
            assert not node.path
            continue
        if node.attrs["bias"]:
            assert flat[node.path + "/bias"] == (node.shape[-1],)
            seen.add(node.path + "/bias")
    assert seen == set(flat)                         # every parameter belongs to a node
    # The counts the pruning code derives from the structure equal the traced MACs/weights.
    arch = architecture_of(model, shape)
    traced = traced_complexity(model, shape)
    params_count, macs = complexity(arch, arch.full)
    assert macs == sum(m for _, m in traced.values())
    assert params_count == sum(math.prod(v) for v in flat.values())
    assert [layer.path for layer in arch.layers] == list(traced)
