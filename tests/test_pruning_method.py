"""The ``hfp`` method: config/budget errors, the budget loss steering training to the target,
masks that remove channels exactly, and composition with a quantization method."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from symog_jax.methods import RunInfo, make_method
from symog_jax.models import create_model, init_variables
from symog_jax.pruning import architecture
from symog_jax.pruning.gates import apply_masks, hard_masks


@pytest.mark.parametrize("config, message", [
    ({"arch": "lenet5", "prune_macs": 1.0}, r"prune_macs must be in \(0, 1\)"),
    ({"arch": "lenet5", "prune_params": 0.0}, r"prune_params must be in \(0, 1\)"),
    ({"arch": "lenet5"}, "give prune_params and/or prune_macs"),
    ({"arch": "lenet6", "prune_macs": 0.5}, "arch must be one of"),
    ({"arch": "lenet5", "prune_macs": 0.5, "inner_method": "hfp"},
     "inner_method must be a registered"),
    ({"arch": "lenet5", "prune_macs": 0.5, "inner_method": "ste", "inner": {"bits": 99}},
     "inner 'ste'.*bits must be in"),
    ({"arch": "lenet5", "prune_macs": 0.5, "input_shape": "28x28"}, "input_shape must be HxWxC"),
])
def test_bad_configs_are_one_line_errors(config, message):
    with pytest.raises(ValueError, match=message) as info:
        make_method("hfp", config)
    assert "\n" not in str(info.value)


def test_unreachable_rate_fails_at_init_before_training():
    params = init_variables(create_model("lenet5", 10, width=0.25), 0, (28, 28, 1))["params"]
    method = make_method("hfp", {"arch": "lenet5", "input_shape": "28x28x1",
                                 "prune_params": 0.9999})
    with pytest.raises(ValueError, match="out of reach for lenet5.*largest possible rate") as e:
        method.init_variables(params)
    assert "\n" not in str(e.value)
    wrong = make_method("hfp", {"arch": "vgg7", "prune_macs": 0.5})
    with pytest.raises(ValueError, match="do not belong to a 'vgg7' model"):
        wrong.init_variables(params)


def _digits(n=256, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n).astype(np.int32)
    x = rng.integers(0, 40, (n, 28, 28, 1)).astype(np.uint8)
    for i, label in enumerate(y):      # a bright bar whose position is the class
        x[i, 2 + 2 * label:4 + 2 * label, 4:24, 0] = 255
    return x, y


@pytest.mark.e2e
@pytest.mark.parametrize("inner", ["float", "ste"])
def test_budget_loss_reaches_the_mac_target_and_finalize_masks(inner, method_setup):
    model = create_model("lenet5", 10, width=0.25)
    variables = init_variables(model, 0, (28, 28, 1))
    steps = 60
    run = RunInfo(steps_per_epoch=steps, epochs=1)
    method = make_method("hfp", {"arch": "lenet5", "input_shape": "28x28x1", "prune_macs": 0.6,
                                 "prune_params": 0.5, "gate_lr": 0.05,
                                 "inner_method": inner, "inner": {"bits": 4}}, run)
    state, step = method_setup(model, method, variables["params"], run)
    x, y = _digits()
    assert [float(v) for v in method.relative_complexity(state.trainable)] == [1.0, 1.0]
    for i in range(steps):
        lo = (i % 8) * 32
        state, metrics = step(state, x[lo:lo + 32], y[lo:lo + 32])
    rel_p, rel_m = (float(v) for v in method.relative_complexity(state.trainable))
    assert rel_m <= 0.4 + 0.05 and rel_p <= 0.5 + 0.05, (rel_p, rel_m)
    assert rel_m > 0.15                                   # not everything pruned
    gates = state.method_vars["hfp_gates"]
    assert all(bool(jnp.all((g >= 0) & (g <= 1))) for g in gates.values())
    # epoch_metrics (logged by the trainer): exact counts of the kept channels / full counts
    from symog_jax.pruning import complexity
    arch0 = method.architecture(state.params)
    kept = [int(np.sum(np.asarray(g) > 0.5)) or 1 for g in (gates[d] for d in arch0.decisions)]
    (p_full, m_full), (p_kept, m_kept) = complexity(arch0, arch0.full), complexity(arch0, kept)
    logged = method.epoch_metrics(state.trainable, state.opt_state)
    assert logged["params_kept"] == pytest.approx(p_kept / p_full, rel=1e-5)
    assert logged["macs_kept"] == pytest.approx(m_kept / m_full, rel=1e-5)
    assert logged["gates_open"] == pytest.approx(sum(kept) / sum(arch0.full))
    # finalize: the inner result with the masks; removed channels are exactly zero
    hq = method.finalize(state.trainable, state.opt_state)
    arch = method.architecture(state.params)
    masks = hard_masks(arch, gates)
    off = np.asarray(masks["conv1"]) == 0
    assert off.any()
    np.testing.assert_array_equal(np.asarray(hq.params["conv1"]["kernel"])[..., off], 0.0)
    np.testing.assert_array_equal(np.asarray(hq.params["conv1"]["bias"])[off], 0.0)
    q = jax.jit(method.quantized_params)(state.trainable, state.opt_state)
    for a, b in zip(jax.tree_util.tree_leaves(q), jax.tree_util.tree_leaves(hq.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.e2e
def test_masks_zero_a_densenet_channel_where_it_is_read():
    """A pruned growth channel is gated at its conv and at every BN that reads it."""
    arch = architecture("densenet40", 10, widths=None, width=0.125)
    shapes = jax.eval_shape(lambda: arch.model().init(jax.random.key(0),
                                                      jnp.zeros((1, 32, 32, 3)), train=False))
    params = jax.tree_util.tree_map(lambda s: jnp.ones(s.shape), shapes["params"])
    masks = {k: jnp.ones(n) for k, n in zip(arch.decisions, arch.full)}
    masks["block1_layer1_growth"] = masks["block1_layer1_growth"].at[0].set(0.0)
    out = apply_masks(arch, params, masks)
    c0 = arch.full[0]
    assert float(out["block1_layer1"]["conv1"]["kernel"][..., 0].sum()) == 0.0
    for layer in ("block1_layer2", "block1_layer12"):
        assert float(out[layer]["bn1"]["scale"][c0]) == 0.0
        assert float(out[layer]["bn1"]["bias"][c0]) == 0.0
        assert float(out[layer]["bn1"]["scale"][c0 + 1]) == 1.0
    assert float(out["transition1"]["bn"]["scale"][c0]) == 0.0


def test_gates_stop_after_gate_steps_and_the_weights_keep_training():
    from symog_jax.methods.hfp import GATES, gate_transform
    tx = gate_transform(optax.sgd(0.1), lr=0.1, gate_steps=3)
    tree = {"params": {"w": jnp.ones(2)}, "method": {GATES: {"a": jnp.full(2, 0.9)}}}
    grads = {"params": {"w": jnp.ones(2)}, "method": {GATES: {"a": jnp.array([1.0, -0.5])}}}
    state = tx.init(tree)
    update = jax.jit(tx.update)
    for i in range(5):
        u, state = update(grads, state, tree)
        gate_step = np.asarray(u["method"][GATES]["a"])
        # while moving: the most pushed gate by lr, the other in proportion (and clipped at 1)
        expected = [[-0.1, 0.05], [-0.1, 0.05], [-0.1, 0.0], [0, 0], [0, 0]][i]   # 1.0: clipped
        np.testing.assert_allclose(gate_step, expected, atol=1e-6)
        np.testing.assert_allclose(np.asarray(u["params"]["w"]), [-0.1, -0.1], atol=1e-6)
        tree = optax.apply_updates(tree, u)
    with pytest.raises(ValueError, match="gate_fraction"):
        make_method("hfp", {"prune_macs": 0.5, "gate_fraction": 0.0})


def test_two_sided_budget_pushes_back_when_pruning_overshoots():
    from symog_jax.pruning import architecture, complexity
    from symog_jax.pruning.gates import budget_loss
    arch = architecture("lenet5", 10, (28, 28, 1), width=0.25)
    few = jnp.asarray([2.0, 4.0, 32.0])                          # far below a 50 % budget
    (_, m_full), (_, m_few) = complexity(arch, arch.full), complexity(arch, (2, 4, 32))
    for two_sided, sign in ((False, 0.0), (True, -1.0)):
        loss = lambda c: budget_loss(arch, c, prune_macs=0.5, two_sided=two_sided)  # noqa: E731
        assert float(loss(few)) == pytest.approx(0.0 if not two_sided
                                                 else 0.5 - m_few / m_full, rel=1e-5)
        g = np.asarray(jax.grad(loss)(few))
        # below the target: adding channels lowers the two-sided loss; one-sided is flat
        assert np.all(np.sign(g) == sign), g
