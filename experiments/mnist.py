"""MNIST experiments: ``python -m experiments.mnist --bits 2``.

Defaults (the config below): LeNet5 (32C5-MP2-64C5-MP2-512FC), SYMOG, 2-bit weights, Adam with
cosine decay from 1e-3, batch 128, 20 epochs, 1 float warm-up epoch, then the pull toward the
nearest level ramps from 1e-5 to 0.1 per step. With no MNIST found (tfds or --data-dir) the
bundled 5k subset (4,000 train / 1,000 test) is used and the run says so.
"""

import sys

from experiments.cli import main
from symog_jax.methods.symog import SymogConfig
from symog_jax.training import TrainConfig

DEFAULTS = TrainConfig(dataset="mnist", model="lenet5", method="symog", epochs=20,
                       batch_size=128, optimizer="adam", lr=1e-3, weight_decay=0.0,
                       allow_bundled=True,
                       method_config=SymogConfig(bits=2, warmup_epochs=1.0, strength_start=1e-5,
                                                 strength_end=0.1))

EXPECTATIONS = """\
expected (measured numbers, with date and machine, are in benchmarks/RESULTS.md):
  complete MNIST on 2 CPU cores: about 1 min/epoch; 5 epochs gave 1.09 % 2-bit error
  (mean of 2 seeds; float 0.75 %)
  bundled 5k subset: about 5 s/epoch; test error a few percent (small training set)
examples:
  python -m experiments.mnist --bits 2
  python -m experiments.mnist --data-dir ../shared/data/mnist-png.tar.gz --epochs 5
"""

if __name__ == "__main__":
    sys.exit(main(__doc__.splitlines()[0], DEFAULTS, EXPECTATIONS))
