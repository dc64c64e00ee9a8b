"""Per-layer widths of the registry models and the pruning complexity model.

Ground truth: count_params of the real Flax parameter trees (from eval_shape), hand counts,
published figures, and a brute-force MAC count from the traced conv/dense shapes
(traced_complexity intercepts every Conv/Dense call; it never reads the architecture table).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symog_jax.models import count_params, create_model
from symog_jax.pruning import architecture, complexity, min_widths, traced_complexity

CASES = [  # name, num_classes, input (H, W, C), width
    ("lenet5", 10, (28, 28, 1), 1.0),
    ("vgg7", 10, (32, 32, 3), 1.0),
    ("resnet20", 10, (32, 32, 3), 1.0),
    ("resnet56", 10, (32, 32, 3), 1.0),
    ("vgg11", 10, (32, 32, 3), 0.5),
    ("densenet40", 10, (32, 32, 3), 1.0),
    ("densenet_bc100", 100, (32, 32, 3), 1.0),
    ("resnet18", 1000, (224, 224, 3), 1.0),
    ("resnet50", 1000, (224, 224, 3), 1.0),
    ("resnet32", 10, (32, 32, 3), 0.01),        # stage extras of 0 channels
]


def _shapes(model, input_shape):
    x = jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32)
    return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)


def _tree_shapes(tree):
    return jax.tree_util.tree_map(lambda a: tuple(a.shape), tree)


@pytest.mark.parametrize("name,nc,shape,width", CASES)
def test_default_widths_build_identical_trees(name, nc, shape, width):
    """widths=None and widths=the default tuple give the same parameter tree."""
    plain = create_model(name, nc, width=width)
    explicit = create_model(name, nc, widths=plain.channel_widths())
    assert _tree_shapes(_shapes(plain, shape)) == _tree_shapes(_shapes(explicit, shape))


#: The deepest variants trace slowly; the end-to-end tier counts them.
_DEEP = ("densenet_bc100", "resnet50")


@pytest.mark.parametrize("name,nc,shape,width", [
    pytest.param(*c, marks=pytest.mark.e2e) if c[0] in _DEEP else c for c in CASES])
def test_counts_equal_real_params_and_traced_macs(name, nc, shape, width):
    arch = architecture(name, nc, shape, width=width)
    model = create_model(name, nc, width=width)
    params, macs = complexity(arch, arch.full)
    assert params == count_params(_shapes(model, shape)["params"])
    traced = traced_complexity(model, shape)
    assert macs == sum(m for _, m in traced.values())
    # layer by layer, with the conv/dense weights (+ bias) of the real tree
    assert {layer.path for layer in arch.layers} == set(traced)
    for layer in arch.layers:
        alone = dataclasses.replace(arch, layers=(layer,), norms=())
        assert complexity(alone, arch.full) == traced[layer.path], layer.path


@pytest.mark.parametrize("name,nc,shape,params_m,macs_m,tol", [
    ("resnet20", 10, (32, 32, 3), 0.27, 41, 0.5),       # He et al. 2016; 40.6M MACs
    ("resnet56", 10, (32, 32, 3), 0.85, 125, 1.0),
    ("resnet18", 1000, (224, 224, 3), 11.69, 1820, 10),  # torchvision: 11.69M, 1.82G
    ("resnet50", 1000, (224, 224, 3), 25.56, 4100, 20),  # 25.56M, 4.1G
])
def test_published_counts(name, nc, shape, params_m, macs_m, tol):
    arch = architecture(name, nc, shape)
    params, macs = complexity(arch, arch.full)
    assert round(params / 1e6, 2) == params_m
    assert abs(macs / 1e6 - macs_m) < tol


def test_hand_counts_of_pruned_nets():
    # LeNet5 with (3, 5, 7) channels on 28x28: 24x24 -> 12 -> 8x8 -> 4
    arch = architecture("lenet5", 10, (28, 28, 1))
    p = (25 * 1 * 3 + 3) + (25 * 3 * 5 + 5) + (16 * 5 * 7 + 7) + (7 * 10 + 10)
    m = 25 * 3 * 24 * 24 + 25 * 3 * 5 * 8 * 8 + 16 * 5 * 7 + 7 * 10
    assert complexity(arch, (3, 5, 7)) == (p, m)
    # ResNet-8 (n=1): streams (2, 1, 3) -> stage channels 2, 3, 6; inner 4, 5, 7
    from symog_jax.models import ResNet
    arch = architecture("resnet20", 10)
    widths = (2, 1, 3, 4, 5, 7)
    model = ResNet(depth=8, widths=widths)
    p = (27 * 2 + 4)                                   # stem + BN
    p += 9 * 2 * 4 + 8 + 9 * 4 * 2 + 4                 # stage 1: 2 -> 4 -> 2
    p += 9 * 2 * 5 + 10 + 9 * 5 * 3 + 6                # stage 2: 2 -> 5 -> 3
    p += 9 * 3 * 7 + 14 + 9 * 7 * 6 + 12               # stage 3: 3 -> 7 -> 6
    p += 6 * 10 + 10
    assert count_params(_shapes(model, (32, 32, 3))["params"]) == p
    assert arch.decisions[:3] == ("stream1", "stream2", "stream3")


@pytest.mark.e2e
def test_soft_counts_are_differentiable_and_match_ints():
    arch = architecture("densenet40", 10, width=0.25)
    n = np.asarray(arch.full) // 2 + 1
    exact = complexity(arch, tuple(int(v) for v in n))
    soft = complexity(arch, jnp.asarray(n, jnp.float32))
    np.testing.assert_allclose([float(v) for v in soft], exact, rtol=1e-6)
    grads = jax.grad(lambda v: complexity(arch, v)[1])(jnp.asarray(n, jnp.float32))
    assert grads.shape == (len(arch.decisions),) and bool(jnp.all(grads > 0))
    assert min_widths(arch) == (1,) * len(arch.decisions)


@pytest.mark.parametrize("bad,message", [
    ((8, 16), "must have 3 entries"),
    ((8, 0, 4), r"widths\[1\] must be an integer >= 1"),
    ((8, 2.5, 4), r"widths\[1\] must be an integer"),
])
def test_bad_widths_are_one_line_errors(bad, message):
    with pytest.raises(ValueError, match=message) as info:
        create_model("lenet5", 10, widths=bad).channel_widths()
    assert "\n" not in str(info.value)


def test_bad_architecture_arguments():
    with pytest.raises(ValueError, match="unknown model name"):
        architecture("resnet19")
    with pytest.raises(ValueError, match="input_shape"):
        architecture("lenet5", 10, (28, 28))
    with pytest.raises(ValueError, match="must have 12 entries"):
        architecture("resnet20", 10, widths=(1, 2))
