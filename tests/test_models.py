"""Tests for symog_jax.models.

Parameter counts are checked against closed-form counts written out here from
the architecture definitions (conv: k*k*cin*cout [+cout], BN: 2*c trainable
scale/bias and 2*c running mean/var, dense: in*out [+out]); the literature
numbers are only a loose sanity check on top. Counting uses jax.eval_shape so
no full-width model is ever materialised.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symog_jax.models import (
    MODEL_NAMES,
    VGG7,
    VGG11,
    DenseNet,
    LeNet5,
    ResNet,
    count_params,
    create_model,
    densenet40,
    densenet_bc100,
    init_variables,
    resnet20,
    scale_width,
)
from symog_jax.models.resnet import option_a_shortcut

MNIST = (1, 28, 28, 1)
CIFAR = (1, 32, 32, 3)
EXPECTED_NAMES = {
    "lenet5", "vgg7", "vgg11", "densenet40", "densenet_bc100",
    "resnet20", "resnet32", "resnet56", "resnet18", "resnet50",
}


def _fast_key(seed: int = 0) -> jax.Array:
    # rbg keys compile several times faster than threefry on CPU; init values
    # are irrelevant to what these tests check.
    return jax.random.key(seed, impl="rbg")


def _fast_jit(fn):
    # Tests run tiny batches once, so XLA's optimisation passes cost far more
    # than they save; level 0 roughly halves DenseNet compile time on CPU.
    return jax.jit(
        fn,
        compiler_options={
            "xla_backend_optimization_level": 0,
            "xla_llvm_disable_expensive_passes": True,
        },
    )


def _synthetic_variables(model: nn.Module, input_shape, seed: int = 0) -> dict:
    """He-scaled random weights built from eval_shape, without compiling an init.

    On 2 CPU cores XLA spends far longer compiling a jitted init (one RNG per
    parameter) than the forward pass itself; the forward tests only need
    well-scaled weights, and init_variables is tested separately.
    """
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = math.prod(leaf.shape[:-1])
            return rng.normal(0.0, math.sqrt(2.0 / fan_in), leaf.shape).astype(leaf.dtype)
        # numpy, not jnp: each new jnp.ones shape would compile its own kernel.
        if name in ("scale", "var"):
            return np.ones(leaf.shape, leaf.dtype)
        return np.zeros(leaf.shape, leaf.dtype)  # bias, mean

    return jax.tree_util.tree_map_with_path(fill, _shapes(model, input_shape))


def _shapes(model: nn.Module, input_shape=CIFAR) -> dict:
    x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
    return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)


def _counts(model: nn.Module, input_shape=CIFAR) -> tuple[int, int]:
    v = _shapes(model, input_shape)
    return count_params(v["params"]), count_params(v.get("batch_stats", {}))


# ---------------------------------------------------------------------------
# Hand-derived parameter counts. Each returns (trainable params, batch_stats).
# ---------------------------------------------------------------------------


def lenet_expected(hw: int, cin: int, c1: int, c2: int, hidden: int, nc: int = 10):
    # VALID 5x5 conv shrinks by 4, pool halves (floor).
    s = ((hw - 4) // 2 - 4) // 2
    params = (
        (5 * 5 * cin * c1 + c1)      # conv1 + bias
        + (5 * 5 * c1 * c2 + c2)     # conv2 + bias
        + (s * s * c2 * hidden + hidden)  # fc1 + bias
        + (hidden * nc + nc)         # fc2 + bias
    )
    return params, 0


def vgg7_expected(chans, hidden: int, cin: int = 3, hw: int = 32, nc: int = 10):
    params = stats = 0
    prev = cin
    for c in chans:  # 3x3 conv (no bias) + BN
        params += 3 * 3 * prev * c + 2 * c
        stats += 2 * c
        prev = c
    s = hw // 8
    params += s * s * prev * hidden + 2 * hidden  # fc1 (no bias) + BN
    stats += 2 * hidden
    params += hidden * nc + nc                    # fc2 + bias
    return params, stats


def vgg11_expected(chans, cin: int = 3, nc: int = 10):
    params = stats = 0
    prev = cin
    for c in chans:
        params += 3 * 3 * prev * c + 2 * c
        stats += 2 * c
        prev = c
    params += prev * nc + nc
    return params, stats


def resnet_expected(n: int, chans, cin: int = 3, nc: int = 10):
    c0 = chans[0]
    params = 3 * 3 * cin * c0 + 2 * c0  # stem conv (no bias) + BN
    stats = 2 * c0
    prev = c0
    for c in chans:
        for _ in range(n):
            # conv1 + bn1 + conv2 + bn2; option-A shortcut has no parameters
            params += 3 * 3 * prev * c + 2 * c + 3 * 3 * c * c + 2 * c
            stats += 2 * c + 2 * c
            prev = c
    params += prev * nc + nc
    return params, stats


def densenet_expected(
    layers: int, k: int, c0: int, bottleneck: bool, compression: float,
    cin: int = 3, nc: int = 10,
):
    params = 3 * 3 * cin * c0  # first conv, no bias
    stats = 0
    c = c0
    for block in range(3):
        for _ in range(layers):
            if bottleneck:
                # BN(c) + 1x1 conv c->4k + BN(4k) + 3x3 conv 4k->k
                params += 2 * c + c * 4 * k + 2 * 4 * k + 3 * 3 * 4 * k * k
                stats += 2 * c + 2 * 4 * k
            else:
                # BN(c) + 3x3 conv c->k
                params += 2 * c + 3 * 3 * c * k
                stats += 2 * c
            c += k
        if block < 2:
            out = math.floor(compression * c)
            params += 2 * c + c * out  # BN + 1x1 conv
            stats += 2 * c
            c = out
    params += 2 * c + c * nc + nc  # final BN + dense
    stats += 2 * c
    return params, stats


# ---------------------------------------------------------------------------
# Parameter counts at width 1
# ---------------------------------------------------------------------------


def test_lenet5_mnist_param_count():
    explicit = (
        (5 * 5 * 1 * 32 + 32)
        + (5 * 5 * 32 * 64 + 64)
        + (4 * 4 * 64 * 512 + 512)   # 28->24->12->8->4
        + (512 * 10 + 10)
    )
    assert explicit == 582_026
    assert lenet_expected(28, 1, 32, 64, 512) == (explicit, 0)
    assert _counts(LeNet5(num_classes=10), MNIST) == (explicit, 0)


def test_lenet5_cifar_param_count():
    explicit = (
        (5 * 5 * 3 * 32 + 32)
        + (5 * 5 * 32 * 64 + 64)
        + (5 * 5 * 64 * 512 + 512)   # 32->28->14->10->5
        + (512 * 10 + 10)
    )
    assert lenet_expected(32, 3, 32, 64, 512) == (explicit, 0)
    assert _counts(LeNet5(num_classes=10), CIFAR) == (explicit, 0)


def test_vgg7_param_count():
    expected = vgg7_expected((128, 128, 256, 256, 512, 512), hidden=1024)
    assert _counts(VGG7(num_classes=10)) == expected
    assert 12.9e6 < expected[0] < 13.1e6


def test_vgg11_param_count():
    expected = vgg11_expected((64, 128, 256, 256, 512, 512, 512, 512))
    assert _counts(VGG11(num_classes=10)) == expected
    assert 9.1e6 < expected[0] < 9.3e6  # common CIFAR VGG11 figure: ~9.2M


@pytest.mark.parametrize(
    "name,n,paper_millions",
    [("resnet20", 3, 0.27), ("resnet32", 5, 0.46), ("resnet56", 9, 0.85)],
)
def test_resnet_param_count(name, n, paper_millions):
    expected = resnet_expected(n, (16, 32, 64))
    assert _counts(create_model(name, 10)) == expected
    assert abs(expected[0] / 1e6 - paper_millions) < 0.01


def test_densenet40_param_count():
    expected = densenet_expected(12, 12, 16, bottleneck=False, compression=1.0)
    assert _counts(densenet40(10)) == expected
    assert abs(expected[0] / 1e6 - 1.0) < 0.05  # paper: 1.0M


def test_densenet_bc100_param_count():
    expected = densenet_expected(16, 12, 24, bottleneck=True, compression=0.5)
    assert _counts(densenet_bc100(10)) == expected
    assert abs(expected[0] / 1e6 - 0.8) < 0.05  # paper: 0.8M


def test_num_classes_only_changes_classifier():
    # Only the final layer depends on the class count (in*nc + nc).
    p10, _ = _counts(resnet20(10))
    p100, _ = _counts(resnet20(100))
    assert p100 - p10 == 64 * 90 + 90


# ---------------------------------------------------------------------------
# Width multiplier
# ---------------------------------------------------------------------------


def test_scale_width_rounds_and_clamps():
    assert scale_width(64, 1.0) == 64
    assert scale_width(64, 0.25) == 16
    assert scale_width(32, 0.1) == 3    # 3.2
    assert scale_width(512, 0.1) == 51  # 51.2
    assert scale_width(12, 0.375) == 4  # 4.5 rounds half to even
    assert scale_width(3, 0.01) == 1    # never zero channels
    assert scale_width(16, 2.0) == 32
    for bad in (0, -1.0, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match="width"):
            scale_width(16, bad)


@pytest.mark.parametrize(
    "name,width,expected",
    [
        ("lenet5", 0.5, lenet_expected(28, 1, 16, 32, 256)),
        ("lenet5", 0.01, lenet_expected(28, 1, 1, 1, 5)),
        ("vgg7", 0.25, vgg7_expected((32, 32, 64, 64, 128, 128), hidden=256)),
        ("vgg11", 0.5, vgg11_expected((32, 64, 128, 128, 256, 256, 256, 256))),
        ("resnet20", 0.5, resnet_expected(3, (8, 16, 32))),
        ("resnet56", 2.0, resnet_expected(9, (32, 64, 128))),
        # k = round(12 * 0.25) = 3; first conv: 16 * 0.25 = 4 / 2k = 6
        ("densenet40", 0.25, densenet_expected(12, 3, 4, False, 1.0)),
        ("densenet_bc100", 0.25, densenet_expected(16, 3, 6, True, 0.5)),
    ],
)
def test_width_scales_counts(name, width, expected):
    shape = MNIST if name == "lenet5" else CIFAR
    assert _counts(create_model(name, 10, width=width), shape) == expected


@pytest.mark.e2e
def test_width_shrinks_every_model():
    for name in MODEL_NAMES:
        shape = MNIST if name == "lenet5" else CIFAR
        full, _ = _counts(create_model(name, 10), shape)
        half, _ = _counts(create_model(name, 10, width=0.5), shape)
        # Convs/dense are quadratic in width, so well under 1/2 remains.
        assert half < 0.4 * full, name


# ---------------------------------------------------------------------------
# Forward passes (width 0.25, tiny batch)
# ---------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_train_and_eval(name):
    shape = (2,) + (MNIST if name == "lenet5" else CIFAR)[1:]
    model = create_model(name, 10, width=0.25)
    variables = _synthetic_variables(model, shape)
    has_bn = name != "lenet5"
    assert set(variables) == ({"params", "batch_stats"} if has_bn else {"params"})

    train_fn = _fast_jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))
    eval_fn = _fast_jit(functools.partial(model.apply, train=False))

    a = jax.random.normal(jax.random.key(1), shape[1:], jnp.float32)
    b = jax.random.normal(jax.random.key(2), shape[1:], jnp.float32)
    c = jax.random.normal(jax.random.key(3), shape[1:], jnp.float32) * 3.0 + 1.0
    x_ab, x_ac = jnp.stack([a, b]), jnp.stack([a, c])

    logits, updates = train_fn(variables, x_ab)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    if has_bn:
        assert set(updates) == {"batch_stats"}
        old, new = variables["batch_stats"], updates["batch_stats"]
        assert jax.tree_util.tree_structure(old) == jax.tree_util.tree_structure(new)
        changed = jax.tree_util.tree_map(
            lambda o, n: bool(jnp.any(o != n)), old, new
        )
        assert all(jax.tree_util.tree_leaves(changed)), "every BN should update"
        # Train mode uses batch statistics, so row 0 depends on row 1.
        logits_ac, _ = train_fn(variables, x_ac)
        assert not np.allclose(logits[0], logits_ac[0])
    else:
        assert not updates

    out_ab = eval_fn(variables, x_ab)
    out_ac = eval_fn(variables, x_ac)
    assert out_ab.shape == (2, 10) and out_ab.dtype == jnp.float32
    # Eval mode uses running averages: samples are independent.
    np.testing.assert_allclose(out_ab[0], out_ac[0], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------
# Structure: leaf names, layouts, activation injection
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_leaf_names_and_layouts(name):
    shape = MNIST if name == "lenet5" else CIFAR
    v = _shapes(create_model(name, 10, width=0.25), shape)
    for path, leaf in jax.tree_util.tree_leaves_with_path(v["params"]):
        leaf_name = path[-1].key
        assert leaf_name in {"kernel", "bias", "scale"}, path
        if leaf_name == "kernel":
            assert leaf.ndim in (2, 4), path  # dense (in, out) / conv HWIO
    for path, _ in jax.tree_util.tree_leaves_with_path(v.get("batch_stats", {})):
        assert path[-1].key in {"mean", "var"}, path


def test_lenet5_kernel_layouts():
    p = _shapes(LeNet5(), MNIST)["params"]
    assert p["conv1"]["kernel"].shape == (5, 5, 1, 32)  # HWIO
    assert p["conv2"]["kernel"].shape == (5, 5, 32, 64)
    assert p["fc1"]["kernel"].shape == (1024, 512)      # (in, out)
    assert p["fc2"]["bias"].shape == (10,)


@pytest.mark.parametrize(
    "name,sites",
    [
        ("lenet5", 3),           # conv1, conv2, fc1
        ("vgg7", 7),             # 6 convs + fc1
        ("vgg11", 8),            # 8 convs
        ("resnet20", 1 + 9 * 2),  # stem + (inner, post-sum) per block
        ("resnet56", 1 + 27 * 2),
        ("densenet40", 36 + 2 + 1),       # layers + transitions + final
        ("densenet_bc100", 48 * 2 + 2 + 1),
    ],
)
def test_act_is_used_at_every_relu_site(name, sites):
    calls = []

    def counting_act(x):
        calls.append(x.shape)
        return nn.relu(x)

    shape = MNIST if name == "lenet5" else CIFAR
    model = create_model(name, 10, width=0.25, act=counting_act)
    v = _shapes(model, shape)
    calls.clear()
    jax.eval_shape(
        functools.partial(model.apply, train=False), v,
        jax.ShapeDtypeStruct(shape, jnp.float32),
    )
    assert len(calls) == sites


def test_zero_act_leaves_only_classifier_bias():
    model = LeNet5(num_classes=10, act=jnp.zeros_like)
    v = _synthetic_variables(model, MNIST)
    v["params"]["fc2"]["bias"] = np.arange(10, dtype=np.float32)
    x = np.random.default_rng(1).normal(size=MNIST).astype(np.float32)
    np.testing.assert_array_equal(model.apply(v, x, False)[0], np.arange(10))


def test_option_a_shortcut_subsamples_and_zero_pads():
    x = jax.random.normal(jax.random.key(0), (2, 7, 7, 4))
    y = option_a_shortcut(x, 8, 2)
    assert y.shape == (2, 4, 4, 8)  # ceil(7/2), like a SAME stride-2 conv
    np.testing.assert_array_equal(y[..., :4], x[:, ::2, ::2, :])
    np.testing.assert_array_equal(y[..., 4:], 0.0)
    np.testing.assert_array_equal(option_a_shortcut(x, 4, 1), x)
    with pytest.raises(ValueError):
        option_a_shortcut(x, 2, 1)


def test_resnet_has_no_shortcut_parameters():
    p = _shapes(resnet20(10), CIFAR)["params"]
    assert set(p["stage2_block1"]) == {"conv1", "bn1", "conv2", "bn2"}


# ---------------------------------------------------------------------------
# Registry and validation
# ---------------------------------------------------------------------------


def test_model_names():
    assert set(MODEL_NAMES) == EXPECTED_NAMES
    assert len(MODEL_NAMES) == len(EXPECTED_NAMES)


@pytest.mark.parametrize(
    "name,cls",
    [
        ("lenet5", LeNet5), ("vgg7", VGG7), ("vgg11", VGG11),
        ("densenet40", DenseNet), ("densenet_bc100", DenseNet),
        ("resnet20", ResNet), ("resnet32", ResNet), ("resnet56", ResNet),
    ],
)
def test_create_model_types(name, cls):
    model = create_model(name, 100, width=0.5)
    assert isinstance(model, cls)
    assert model.num_classes == 100 and model.width == 0.5
    assert model.act is nn.relu


def test_create_model_is_case_insensitive():
    assert isinstance(create_model("ResNet20", 10), ResNet)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        create_model("resnet19", 10)
    msg = str(err.value)
    assert "resnet19" in msg
    for name in MODEL_NAMES:
        assert name in msg


@pytest.mark.parametrize("width", [0, 0.0, -0.5, float("nan"), float("inf"), None, True])
def test_bad_width_raises(width):
    with pytest.raises(ValueError, match="width") as err:
        create_model("vgg7", 10, width=width)
    assert "lenet5" in str(err.value)


@pytest.mark.parametrize("num_classes", [1, 0, -3, 2.5, True, "10"])
def test_bad_num_classes_raises(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        create_model("lenet5", num_classes)


def test_bad_architecture_arguments_raise():
    with pytest.raises(ValueError, match="depth"):
        ResNet(depth=21)
    with pytest.raises(ValueError, match="depth"):
        DenseNet(depth=41, growth_rate=12, bottleneck=False, compression=1.0)
    with pytest.raises(ValueError, match="depth"):
        DenseNet(depth=43, growth_rate=12, bottleneck=True, compression=0.5)
    DenseNet(depth=43, growth_rate=12, bottleneck=False, compression=0.5)  # 3 x 13 layers
    with pytest.raises(ValueError, match="compression"):
        DenseNet(depth=40, growth_rate=12, bottleneck=False, compression=0.0)
    with pytest.raises(ValueError, match="width"):
        ResNet(depth=20, width=0.0)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="32x32"):
        _shapes(VGG11(), MNIST)
    with pytest.raises(ValueError, match="rank 4"):
        _shapes(LeNet5(), (28, 28, 1))


def test_init_variables_and_count_params():
    model = LeNet5()
    v = init_variables(model, 0, MNIST[1:])  # int seed, (H, W, C)
    assert isinstance(v, dict) and set(v) == {"params"}
    expected = _shapes(model, MNIST)
    assert jax.tree_util.tree_map(jnp.shape, v) == jax.tree_util.tree_map(jnp.shape, expected)
    assert count_params(v["params"]) == count_params(expected["params"]) == 582_026
    # He init: kernel std ~ sqrt(2 / fan_in), biases zero.
    k = np.asarray(v["params"]["fc1"]["kernel"])
    assert 0.7 < k.std() / math.sqrt(2.0 / 1024) < 1.3
    np.testing.assert_array_equal(v["params"]["fc1"]["bias"], 0.0)
    assert count_params({"a": np.zeros((2, 3)), "b": [np.zeros(4), 1.0]}) == 11
    assert count_params({}) == 0
    with pytest.raises(ValueError):
        init_variables(model, 0, (28, 28))


def test_init_variables_keeps_default_batch_stats():
    # Smallest CIFAR ResNet (n=1) keeps the compile short.
    model = ResNet(depth=8, num_classes=10, width=0.25)
    v = init_variables(model, _fast_key(), (4, 32, 32, 3))
    assert set(v) == {"params", "batch_stats"}
    for path, leaf in jax.tree_util.tree_leaves_with_path(v["batch_stats"]):
        expected = 0.0 if path[-1].key == "mean" else 1.0
        np.testing.assert_array_equal(leaf, expected)
