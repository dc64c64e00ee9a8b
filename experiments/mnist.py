"""MNIST experiments: ``python -m experiments.mnist --bits 2``.

The default is the recipe ``experiments/recipes/mnist_quickstart.py`` (read it: the config,
the command, what it costs, what to expect): LeNet5, Adam at 1e-3, a float network for 10 epochs
(``--float-start-epochs 10``, in ``<workdir>/float-start``), then SYMOG with 2-bit weights for
10 epochs (``--epochs``) from its weights. With no MNIST found (tfds or --data-dir) the bundled
5k subset (4,000 train / 1,000 test) is used and the run says so. Every flag sets a field of the
recipe; ``--config FILE`` gives another recipe or a run's ``config.json``,
``--config.SECTION.FIELD=VALUE`` sets one field.
"""

import sys
from pathlib import Path

from symog_jax.pipelines.cli import main
from symog_jax.pipelines.recipes import base_config, load_recipe

#: The recipe of ``python -m experiments.mnist`` without ``--config``.
RECIPE = Path(__file__).resolve().parent / "recipes" / "mnist_quickstart.py"
#: The recipe's run settings (without its stages), e.g. for experiments.prune.
DEFAULTS = base_config(load_recipe(RECIPE))
#: Epochs of the float network the default recipe starts from (``--float-start-epochs``).
FLOAT_START_EPOCHS = load_recipe(RECIPE).stages[0]["optim"]["epochs"]

EXPECTATIONS = """\
expected (experiments/recipes/mnist_quickstart.py says more; benchmarks/RESULTS.md has the records):
  bundled 5k subset, 2-core CPU (busy): 6.1 min, 2.80 % 2-bit error (float start 3.20 %)
  complete MNIST, 2-core CPU: 16 min per seed, 0.66 % (2 seeds; float start 0.69 %)
examples:
  python -m experiments.mnist --bits 2
  python -m experiments.mnist --data-dir ../shared/data/mnist-png.tar.gz
  python -m experiments.mnist --config.method.bits=3 --config.optim.epochs=5
  python -m experiments.mnist --float-start-epochs 0 --warmup-epochs 1 --epochs 10
"""

if __name__ == "__main__":
    sys.exit(main(__doc__.splitlines()[0], RECIPE, EXPECTATIONS,
                  prog="python -m experiments.mnist",
                  recipe_name="experiments/recipes/mnist_quickstart.py"))
