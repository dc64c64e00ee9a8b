"""MNIST experiments: ``python -m experiments.mnist --bits 2``.

Defaults (the config below), the SYMOG paper's two-stage recipe: LeNet5
(32C5-MP2-64C5-MP2-512FC), Adam with cosine decay from 1e-3, batch 128; first a float network
for 10 epochs (``--float-start-epochs 10``, in ``<workdir>/float-start``), then SYMOG with 2-bit
weights for 10 epochs from its weights, with the annealed exact mixture prior (sigma 0.4 -> 0.05
steps) pulling with a strength ramped from 1e-4 to 0.1 per step; formats chosen from the float
weights. The loss is evaluated on the rounded weights (``--forward quantized``, straight-through
gradients, the prior pulling the latent weights onto the levels; ``--forward float`` is SYMOG as
published). ``--float-start-epochs 0`` trains from random weights instead (then give
``--warmup-epochs``). With no MNIST found (tfds or --data-dir) the bundled 5k subset (4,000
train / 1,000 test) is used and the run says so.

Cost and result (benchmarks/RESULTS.md, "SYMOG recipe study"): 20 epochs in all, about 15 min
on 2 idle CPU cores; on complete MNIST **0.66 % 2-bit test error** (mean of seeds 0 and 1:
0.71 / 0.60), lossless rounding; straight-through rounding trained from scratch for the same 20
epochs (``--method ste --float-start-epochs 0 --epochs 20``) also 0.66 % (0.73 / 0.58): a tie.
On half the budget (``--float-start-epochs 5 --epochs 5``, 10 in all) the recipe gives 0.74 %
(3 seeds: 0.79 / 0.68 / 0.74) and STE 0.72 % (0.76 / 0.65 / 0.75).
"""

import sys

from experiments.cli import main
from symog_jax.methods.symog import SymogConfig
from symog_jax.training import TrainConfig

DEFAULTS = TrainConfig(dataset="mnist", model="lenet5", method="symog", epochs=10,
                       batch_size=128, optimizer="adam", lr=1e-3, weight_decay=0.0,
                       allow_bundled=True,
                       method_config=SymogConfig(bits=2, prior="mixture", warmup_epochs=0.0,
                                                 strength_start=1e-4, strength_end=0.1,
                                                 forward="quantized"))
#: Epochs of the float network the default recipe starts from (``--float-start-epochs``).
FLOAT_START_EPOCHS = 10

EXPECTATIONS = """\
expected (measured numbers, with date and machine, are in benchmarks/RESULTS.md):
  complete MNIST on 2 CPU cores: about 40 s/epoch idle; 10 float + 10 SYMOG epochs gave 0.66 %
  2-bit error (mean of 2 seeds; float start 0.69 %; straight-through with 20 epochs: 0.66 %)
  bundled 5k subset: about 5 s/epoch; test error a few percent (small training set)
examples:
  python -m experiments.mnist --bits 2
  python -m experiments.mnist --data-dir ../shared/data/mnist-png.tar.gz
  python -m experiments.mnist --float-start-epochs 0 --warmup-epochs 1 --epochs 10
"""

if __name__ == "__main__":
    sys.exit(main(__doc__.splitlines()[0], DEFAULTS, EXPECTATIONS,
                  float_start_epochs=FLOAT_START_EPOCHS))
