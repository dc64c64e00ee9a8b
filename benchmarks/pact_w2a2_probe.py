"""W2A2 LeNet5 x0.25 on bundled MNIST 5k: calibrated vs learned (PACT) activation ranges, STE
2-bit weights; a measurement probe outside the trainer (which does not train PACT ranges yet).

Run from the repository root: ``python benchmarks/pact_w2a2_probe.py calibrated|learned|learned_free
EPOCHS`` (learned: power-of-two steps; learned_free: free clip). Alphas: Adam, lr 1e-2."""
import sys, time
import jax, jax.numpy as jnp, numpy as np, optax
from symog_jax.data.bundled import load_bundled_mnist5k
from symog_jax.training import TrainConfig
from symog_jax.training.run import build_run, training_split
from symog_jax.training.steps import _variables
from symog_jax.quantizers.activations import quantize_activations, learned_ranges

mode = sys.argv[1]; epochs = int(sys.argv[2])
ds = load_bundled_mnist5k()
cfg = TrainConfig(dataset="synthetic", model="lenet5", width=0.25, method="ste",
                  method_config={"bits": 2}, act_bits=2, epochs=epochs, batch_size=64,
                  progress=False, seed=0, workdir="/tmp/acts/run")
tx_, ty, spe = training_split(cfg, ds)
built = build_run(cfg, ds, tx_, spe)
state = jax.tree_util.tree_map(lambda a: a, built.state)
acts = state.act_formats
if mode.startswith("learned"):
    acts = learned_ranges(acts, power_of_two=(mode == "learned"))
model, method, prepare = built.model, built.method, built.prepare

opt = optax.adam(optax.cosine_decay_schedule(1e-3, spe * epochs))
trainable = state.trainable
opt_state_m = state.opt_state
# Reuse the run's own optimizer for weights by calling its transform; alphas get their own adam.
from symog_jax.training.steps import base_optimizer
aopt = optax.adam(1e-2); aopt_state = aopt.init(acts) if mode != "calibrated" else None

@jax.jit
def step(trainable, opt_state, acts, aopt_state, bstats, images, labels, i):
    x = prepare(jax.random.key(i), images, True)
    def loss_fn(tr, acts):
        params = method.train_params(tr, opt_state)
        with quantize_activations(acts):
            logits, upd = model.apply(_variables(params, bstats), x, train=True, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), upd
    if mode == "calibrated":
        (loss, upd), g = jax.value_and_grad(loss_fn, has_aux=True)(trainable, acts); ga = None
    else:
        (loss, upd), (g, ga) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(trainable, acts)
    return g, ga, loss, upd.get("batch_stats", {})

# weights: the run's own tx via a fresh build of make_train_step is heavier; use built tx state
from symog_jax.training.steps import base_optimizer
base = base_optimizer(cfg.optimizer, cfg.lr, spe * epochs, momentum=cfg.momentum,
                      weight_decay=cfg.weight_decay, decay_mask=method.decay_mask(trainable))
wtx = method.transform(base, method.run)
wstate = wtx.init(trainable)
bstats = state.batch_stats
rng = np.random.default_rng(0)
t0 = time.time(); a0 = {k: float(v.clip()) for k, v in acts.items() if type(v).__name__ == "PACTRange"}
for e in range(epochs):
    perm = rng.permutation(len(ty))
    for i in range(spe):
        idx = perm[i * 64:(i + 1) * 64]
        g, ga, loss, bstats = step(trainable, wstate, acts, aopt_state, bstats, tx_[idx], ty[idx], i)
        u, wstate = wtx.update(g, wstate, trainable); trainable = optax.apply_updates(trainable, u)
        if mode.startswith("learned"):
            au, aopt_state = aopt.update(ga, aopt_state, acts); acts = optax.apply_updates(acts, au)
params = method.train_params(trainable, wstate)
x = built.prepare(None, ds.test_images, False)
with quantize_activations(acts):
    logits = model.apply(_variables(params, bstats), x, train=False)
err = 100 * float(np.mean(np.argmax(logits, -1) != ds.test_labels))
a1 = {k: (round(float(v.alpha), 4), round(float(v.clip()), 4)) for k, v in acts.items() if type(v).__name__ == "PACTRange"}
print(mode, "epochs", epochs, "test error %", round(err, 2), "alpha before", a0, "after", a1,
      "fixed point", {k: str(v.to_fixed_point()) for k, v in acts.items() if getattr(v, "power_of_two", False)},
      "wall s", round(time.time() - t0, 1))
